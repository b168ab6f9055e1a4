"""`zfsrepl doctor --fix` on a replica that diverged on the destination (manual 7.2):
by default it renames the replica aside and brings the common snapshot back under its
name; replication then goes on incrementally (same GUIDs, no full resend), and what was
written on the destination is still readable in the renamed dataset. Contents are
checked by checksums. Once with the lab's plain keys, once through the agent that
setup installs."""

from __future__ import annotations

import re

import pytest
from test_failover import NAME, remounted, replicate_twice, snapshots, start, text
from test_setup_support import SetupCase, cleaned_up, replay, setup_zfs_command

from lab import (
    Area,
    Lab,
    LabHost,
    ZfsreplCli,
    claim_area,
    exists,
    retry_busy,
    snapshot_checksums,
    tree_checksums,
    write_tree,
)

# zfs-fuse only: the OpenZFS lab's users get their rights by `zfs allow`, and setup does
# not grant rename, clone and promote there (the repair then names the missing rights).
pytestmark = pytest.mark.backends("fuse")


def guids(host: LabHost, fs: str) -> dict[str, str]:
    out = host.zfs("get", "-Hp", "-r", "-d", "1", "-o", "name,value", "guid", fs)
    return {ln.split("\t")[0].split("@", 1)[1]: ln.split("\t")[1]
            for ln in out.splitlines() if "@" in ln.split("\t")[0]}


def diverge(host: LabHost, fs: str, seed: int) -> dict[str, str]:
    """Write on the replica and snapshot it by hand, as an administrator on the
    destination would; it is left unmounted (zfs-fuse renames no mounted filesystem).
    The checksums of what was written."""
    mnt = remounted(host, fs)
    write_tree(mnt, seed=seed)
    written = tree_checksums(mnt)
    host.zfs("snapshot", f"{fs}@by-hand")
    retry_busy(lambda: host.zfs("unmount", fs))
    return written


def check_repaired(host: LabHost, fs: str, out: str, before: dict[str, str],
                   written: dict[str, str]) -> str:
    """The replica was set aside and the common point brought back; the renamed one."""
    found = re.search(rf"renamed {re.escape(fs)} to ({re.escape(fs)}\.diverged-\d{{8}}-\d{{6}})",
                      out)
    assert found, out
    aside = found.group(1)
    assert f"promoted {fs}" in out, out
    # the replica holds its snapshots again, the very same ones (GUIDs)
    assert guids(host, fs) == before
    # what was written on the destination is there, under the new name
    assert "by-hand" in guids(host, aside)
    assert snapshot_checksums(host, f"{aside}@by-hand") == written
    return aside


def test_doctor_sets_a_diverged_replica_aside_and_replication_goes_on(
        lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    s = replicate_twice(start(lab, area, repl))
    try:
        common = snapshots(lab.dst, s.dst_fs)[-1]
        before = guids(lab.dst, s.dst_fs)
        written = diverge(lab.dst, s.dst_fs, seed=70)
        write_tree(lab.src.mountpoint(s.src_fs), seed=3)

        proc = repl.run("doctor", NAME, check=False)
        out = text(proc)
        assert proc.returncode == 1, out
        assert "RECEIVING SIDE HOLDS SNAPSHOTS THE SENDING SIDE LACKS" in out, out
        assert "keeps what was written there (the default of `zfsrepl doctor --fix`)" in out
        assert f"zfs rename {s.dst_fs} {s.dst_fs}.diverged-" in out, out

        out = text(repl.run("doctor", NAME, "--fix", "--yes"))
        aside = check_repaired(lab.dst, s.dst_fs, out, before, written)
        assert not [ln for ln in out.splitlines() if ln.startswith(("destroyed", "rolled"))]
        assert repl.run("doctor", NAME, check=False).returncode == 0

        out = text(repl.run("runonce", NAME))
        assert re.search(rf"starting incremental -[iI] @{re.escape(common)} -> @", out), out
        assert "full send" not in out, out
        s.assert_same_at_newest(s.src_tree())
        # the older snapshots are still the ones received first
        now = guids(lab.dst, s.dst_fs)
        assert {k: now[k] for k in before} == before
        assert snapshot_checksums(lab.dst, f"{aside}@by-hand") == written

        # Retention on the destination keeps the renamed dataset's origin (keep = 3),
        # and prunes the others as before; the cycles succeed.
        kept = ""
        for seed in (4, 5, 6):
            write_tree(lab.src.mountpoint(s.src_fs), seed=seed)
            kept += text(repl.run("runonce", NAME))
        assert f"kept {s.dst_fs}@{common} on" in kept, kept
        left = snapshots(lab.dst, s.dst_fs)
        oldest = min(before, key=lambda name: int(name.rsplit("-", 1)[1]))
        assert common in left and oldest not in left, left
        s.assert_same_at_newest(s.src_tree())
    finally:
        s.close()


def test_through_the_agent(lab: Lab) -> None:
    with claim_area(lab) as area:
        repl = ZfsreplCli(lab, area.name)
        repl.create()
        case = SetupCase(lab, area, repl, name=f"aside-{area.name}")
        try:
            with cleaned_up(case):
                _through_the_agent(case)
        finally:
            lab.stop_children()
            repl.destroy()


def _through_the_agent(case: SetupCase) -> None:
    lab, repl = case.lab, case.repl
    zfs = setup_zfs_command(lab)
    src, dst = case.pairs[0]
    lines = [f'name = "{case.name}"', "keep = 3",
             "[source]", f'host = "{lab.src.address}"', f'user = "{lab.src.user}"',
             f'zfs_command = "{zfs}"',
             "[destination]", f'host = "{lab.dst.address}"', f'user = "{lab.dst.user}"',
             f'zfs_command = "{zfs}"',
             "[[filesystem]]", f'source = "{src}"', f'destination = "{dst}"']
    lab.src.zfs("create", src)
    write_tree(lab.src.mountpoint(src), seed=1)
    repl.put(case.response, ("\n".join(lines) + "\n").encode())
    code, out, _ = replay(case)
    assert code == 0, out
    repl.run("runonce", case.name)
    write_tree(lab.src.mountpoint(src), seed=2)
    repl.run("runonce", case.name)
    common = snapshots(lab.dst, dst)[-1]
    before = guids(lab.dst, dst)
    written = diverge(lab.dst, dst, seed=71)
    write_tree(lab.src.mountpoint(src), seed=3)

    out = text(repl.run("doctor", case.name, "--fix", "--yes"))
    aside = check_repaired(lab.dst, dst, out, before, written)
    assert exists(lab.dst, aside)

    out = text(repl.run("runonce", case.name))
    assert re.search(rf"starting incremental -[iI] @{re.escape(common)} -> @", out), out
    newest = snapshots(lab.src, src)[-1]
    assert snapshots(lab.dst, dst)[-1] == newest
    expected = tree_checksums(lab.src.mountpoint(src))
    assert snapshot_checksums(lab.dst, f"{dst}@{newest}") == expected
    assert snapshot_checksums(lab.dst, f"{aside}@by-hand") == written
