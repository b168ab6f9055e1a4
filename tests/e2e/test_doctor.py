"""`zfsrepl doctor` on the manual's two broken chains (7.1 and 7.2): it names the
situation, --fix repairs it, and the next cycle succeeds, contents checked."""

from __future__ import annotations

import json
import time

import pytest
from test_failover import (
    NAME,
    fail_over,
    remounted,
    replicate_twice,
    snapshots,
    start,
    text,
)

from lab import Area, Lab, ZfsreplCli, snapshot_prefix, tree_checksums, write_tree

# zfs-fuse only: the doctor reads listings both ZFSs give alike; its OpenZFS specifics
# (holds, bookmarks) are in the unit tests, and the emulated VM's time goes to failover.
pytestmark = pytest.mark.backends("fuse")



def seq(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def test_7_1_maintenance_with_the_source_ahead(lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    from zfsrepl import state

    s = replicate_twice(start(lab, area, repl))
    try:
        # Cycles that snapshotted but could not send: the source is three snapshots ahead,
        # and the service stopped in maintenance.
        top = seq(snapshots(lab.src, s.src_fs)[-1])
        for n in range(top + 1, top + 4):
            write_tree(lab.src.mountpoint(s.src_fs), seed=n)
            lab.src.zfs("snapshot", f"{s.src_fs}@{snapshot_prefix(lab)}{n}")
        reason = "could not replicate testrepl after 1 attempt(s): cannot receive"
        st = state.enter_maintenance(state.ServiceState(), time.time(), reason)
        repl.put(repl.state_dir / "services" / NAME / "state.json",
                 json.dumps(state.to_json(st)).encode())

        proc = repl.run("doctor", NAME, check=False)
        out = text(proc)
        assert proc.returncode == 1, out
        assert "SERVICE IN MAINTENANCE" in out and reason in out, out
        assert "SENDING SIDE AHEAD" in out and f"@{snapshot_prefix(lab)}{top + 3}" in out, out
        assert f"newest common snapshot: @{snapshot_prefix(lab)}{top}" in out, out

        out = text(repl.run("doctor", NAME, "--fix", "--yes"))
        assert "cleared the maintenance state" in out, out
        assert repl.run("doctor", NAME, check=False).returncode == 0
        repl.run("runonce", NAME)
        s.assert_same_at_newest(s.src_tree())
    finally:
        s.close()


def test_7_2_fallback_blocked_by_snapshots_the_sender_lacks(lab: Lab, area: Area,
                                                             repl: ZfsreplCli) -> None:
    s = replicate_twice(start(lab, area, repl))
    try:
        mnt = fail_over(s)
        write_tree(mnt, seed=90)
        s.back.run("runonce", NAME, "--yes")
        common = s.assert_same_at_newest(tree_checksums(mnt))

        # The source took a snapshot of its own meanwhile: it is not on the destination.
        write_tree(remounted(lab.src, s.src_fs), seed=91)
        stray = f"{snapshot_prefix(lab)}{seq(common) + 1}"
        lab.src.zfs("snapshot", f"{s.src_fs}@{stray}")
        write_tree(mnt, seed=92)
        proc = s.back.run("runonce", NAME, "--yes", check=False)
        assert proc.returncode != 0 and "has snapshots newer" in text(proc), text(proc)

        proc = s.back.run("doctor", NAME, check=False)
        out = text(proc)
        assert proc.returncode == 1, out
        assert "RECEIVING SIDE HOLDS SNAPSHOTS THE SENDING SIDE LACKS" in out, out
        assert f"@{stray}" in out and f"@{common}" in out, out

        # the destructive repair is asked for, and confirmed, or nothing happens
        proc = s.back.run("doctor", NAME, "--fix", "--destroy", check=False)
        assert proc.returncode == 2, text(proc)
        assert "What was written on the diverged replicas is lost: not confirmed" in text(proc)
        assert snapshots(lab.src, s.src_fs)[-1] == stray
        out = text(s.back.run("doctor", NAME, "--fix", "--destroy", "--yes"))
        assert f"destroyed {s.src_fs}@{stray}" in out, out
        assert f"rolled {s.src_fs} back to @{common}" in out, out
        assert snapshots(lab.src, s.src_fs)[-1] == common

        s.back.run("runonce", NAME, "--yes")
        final = tree_checksums(mnt)
        s.assert_same_at_newest(final)
        assert tree_checksums(remounted(lab.src, s.src_fs)) == final
    finally:
        s.close()
