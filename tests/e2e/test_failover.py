"""Failover, failback, lockoutkey and fallback (manual section 6) between the lab's hosts.

The source runs zfsrepl as user src from its definition; the destination runs it as
user dst from the copy kept there (role = "destination"). Contents are checked on
both sides after every step.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab import (
    Area,
    Lab,
    LabHost,
    ZfsreplCli,
    destroy,
    exists,
    release_holds,
    retry_busy,
    service_definition,
    snapshot_checksums,
    tree_checksums,
    write_tree,
)

pytestmark = pytest.mark.backends("fuse", "openzfs")

NAME = "testrepl"


def snapshots(host: LabHost, fs: str) -> list[str]:
    out = host.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-d", "1", fs)
    return [line.split("@", 1)[1] for line in out.splitlines() if "@" in line]


def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


def prop(host: LabHost, fs: str, name: str) -> str:
    return host.zfs("get", "-H", "-o", "value", name, fs).strip()


class Setup:
    """One filesystem replicated src -> dst, with zfsrepl on both hosts."""

    def __init__(self, lab: Lab, area: Area, repl: ZfsreplCli, name: str = NAME,
                 **settings: Any) -> None:
        self.lab, self.area, self.repl, self.name = lab, area, repl, name
        self.src_fs = f"{area.src}/fs1"
        self.dst_fs = f"{area.dst}/fs1"
        self.definition = service_definition(lab, [(self.src_fs, self.dst_fs)], name=name,
                                              retries=1, retry_delay=0.0, keep=3, **settings)
        repl.write_service(self.definition)
        self.back = ZfsreplCli(lab, f"{area.name}-dst", host=lab.dst)
        self.back.create()
        self.back.write_service({**self.definition, "role": "destination"})

    def close(self) -> None:
        self.back.destroy()

    def src_tree(self) -> dict[str, str]:
        return tree_checksums(self.lab.src.mountpoint(self.src_fs))

    def newest(self, host: LabHost, fs: str) -> str:
        return snapshots(host, fs)[-1]

    def assert_same_at_newest(self, expected: dict[str, str]) -> str:
        """Both sides' newest snapshot is the same one and holds `expected`."""
        snap = self.newest(self.lab.src, self.src_fs)
        assert self.newest(self.lab.dst, self.dst_fs) == snap
        assert snapshot_checksums(self.lab.src, f"{self.src_fs}@{snap}") == expected
        assert snapshot_checksums(self.lab.dst, f"{self.dst_fs}@{snap}") == expected
        return snap


def start(lab: Lab, area: Area, repl: ZfsreplCli, **settings: Any) -> Setup:
    s = Setup(lab, area, repl, **settings)
    lab.src.zfs("create", s.src_fs)
    write_tree(lab.src.mountpoint(s.src_fs), seed=1)
    return s


def replicate_twice(s: Setup) -> Setup:
    s.repl.run("runonce", s.name)
    write_tree(s.lab.src.mountpoint(s.src_fs), seed=2)
    s.repl.run("runonce", s.name)  # the last cycle before the failover
    s.assert_same_at_newest(s.src_tree())
    return s


def run_failover(s: Setup, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """`zfsrepl failover ARGS` on the destination, as an operator runs it: as the
    service's user where that user can mount (zfs-fuse, through its sudo rule), as root
    where only root mounts filesystems (Linux, whatever `zfs allow` grants)."""
    if "sudo" in s.lab.features:
        return s.back.run("failover", *args, check=check)
    return s.lab.dst.root(s.back.argv("failover", *args), check=check)


def fail_over(s: Setup, *extra: str, interlocked: bool = False) -> Path:
    """`failover` on the destination. For tests it sets no interlock; a disaster's
    (lockoutkey before, or --takeover) keeps or sets it."""
    if "sudo" not in s.lab.features:
        # the user gets as far as its rights go, and is told what is left to do
        proc = s.back.run("failover", s.name, *extra, check=False)
        assert proc.returncode == 1, text(proc)
        assert "only root mounts filesystems on this system" in text(proc), text(proc)
        assert f"`zfsrepl failover {s.name}` as root" in text(proc), text(proc)
        assert "Traceback" not in text(proc)
    out = text(run_failover(s, s.name, *extra))
    assert f"{s.dst_fs}: mounted at" in out, out
    role = prop(s.lab.dst, s.dst_fs, "zfsrepl:role")
    if interlocked:
        assert role == "source", out
        assert f"zfsrepl failover --end {s.name}" in out, out
    else:
        assert role != "source", out
        assert "overwrites" in out and f"enable the service on {s.lab.src.address}" in out, out
    assert f"`zfsrepl runonce {s.name}` on this host" in out, out
    assert prop(s.lab.dst, s.dst_fs, "readonly") == "off"
    return s.lab.dst.mountpoint(s.dst_fs)


def remounted(host: LabHost, fs: str) -> Path:
    """The mountpoint of `fs` after a fresh mount: a zfs-fuse mount can show stale
    entries after a receive into it (the snapshots are checked regardless)."""
    if prop(host, fs, "mounted") == "yes":
        retry_busy(lambda: host.zfs("unmount", fs))
    host.zfs("mount", fs)
    return host.mountpoint(fs)


# Not on the OpenZFS VM: backend-neutral, and minutes of emulated time (the e2e run
# there is kept to what OpenZFS changes).
@pytest.mark.backends("fuse")
def assert_standby_status(s: Setup) -> None:
    """`status` from the copy on the destination shows the replicas as read there,
    without asking the source."""
    proc = s.back.run("status", "--json", s.name, check=False)
    (svc,) = json.loads(proc.stdout)["services"]
    assert (svc["state"], svc["role"]) == ("replica", "destination"), svc
    assert svc["problems"] == [] and svc["unreachable"] == [], svc
    (fs,) = svc["filesystems"]
    assert fs["newest_snapshot"] == s.newest(s.lab.dst, s.dst_fs) and not fs["cached"], svc
    # in sync unless the machine was so slow that the lag passed 2 x interval
    assert proc.returncode == (0 if fs["lag_seconds"] <= 2 * svc["interval"] else 1), svc
    out = text(s.back.run("status", s.name, check=False))
    assert f"{s.name}: replica" in out and "replicates back" in out, out


def test_failover_for_tests_then_overwrite_the_destination(lab: Lab, area: Area,
                                                           repl: ZfsreplCli) -> None:
    s = replicate_twice(start(lab, area, repl))
    try:
        assert_standby_status(s)
        before = s.src_tree()
        mnt = fail_over(s)
        assert tree_checksums(mnt) == before  # the replica's data, mounted
        write_tree(mnt, seed=50)
        changed = tree_checksums(mnt)
        assert changed != before

        # Ending 1: the source replicates again (the service enabled, here its cycle
        # run once): no extra step on the destination, its changes are overwritten.
        write_tree(lab.src.mountpoint(s.src_fs), seed=3)
        out = text(repl.run("runonce", NAME))
        assert "starting incremental" in out and "Traceback" not in out, out
        forward = s.src_tree()
        assert forward not in (before, changed)
        s.assert_same_at_newest(forward)
        assert tree_checksums(remounted(lab.dst, s.dst_fs)) == forward
        assert prop(lab.dst, s.dst_fs, "zfsrepl:role") != "source"
    finally:
        s.close()


def test_failover_for_tests_then_replicate_back(lab: Lab, area: Area,
                                                repl: ZfsreplCli) -> None:
    s = replicate_twice(start(lab, area, repl))
    try:
        parent_mnt = lab.dst.mountpoint(area.dst)
        mnt = fail_over(s, "--mountpoint", f"{s.dst_fs}={parent_mnt}/live")
        assert mnt == parent_mnt / "live"
        write_tree(mnt, seed=60)
        changed = tree_checksums(mnt)

        # Ending 2: runonce on the destination as dst replicates back, after a warning.
        proc = s.back.run("runonce", NAME, check=False)
        assert proc.returncode == 2, text(proc)
        assert "You possibly destroy data on the source system" in text(proc)
        out = text(s.back.run("runonce", NAME, "--yes"))
        assert "incremental" in out, out
        snap = s.assert_same_at_newest(changed)
        assert tree_checksums(remounted(lab.src, s.src_fs)) == changed
        assert snap.startswith(f"zfsrepl-{lab.src.user}-{lab.dst.user}-{lab.dst.address}-")

        # Back to normal: the source replicates again, the chain goes on forward by GUID.
        write_tree(lab.src.mountpoint(s.src_fs), seed=4)
        out = text(repl.run("runonce", NAME))
        assert "starting incremental" in out, out
        s.assert_same_at_newest(s.src_tree())
    finally:
        s.close()


def test_fallback_to_a_recreated_source(lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    """6.2.2: the source filesystem is lost; the destination replicates it back whole,
    then again incrementally; finally the service replicates forward again from the
    definition copied back from the destination."""
    s = replicate_twice(start(lab, area, repl))
    try:
        # The source is gone for good: take over without a key to lock out.
        mnt = fail_over(s, "--takeover", interlocked=True)
        write_tree(mnt, seed=80)
        # the disaster: the source is rebuilt empty (zfsrepl's holds go with the old pool)
        release_holds(lab, lab.src, s.src_fs)
        destroy(lab.src, s.src_fs, "-r")
        assert not exists(lab.src, s.src_fs)

        # The interlock protects the destination; replicating back is not stopped by it.
        s.back.run("runonce", NAME, "--yes")  # full stream into the re-created source
        s.assert_same_at_newest(tree_checksums(mnt))
        write_tree(mnt, seed=81)
        s.back.run("runonce", NAME, "--yes")  # as often as needed: incremental
        final = tree_checksums(mnt)
        s.assert_same_at_newest(final)
        assert tree_checksums(remounted(lab.src, s.src_fs)) == final

        # The service is set up again on the source from the copy on the destination.
        run_failover(s, NAME, "--end", "--yes")
        assert prop(lab.dst, s.dst_fs, "zfsrepl:role") == "destination"
        copy = lab.dst.run(["cat", str(s.back.config_dir / "services" / f"{NAME}.toml")]).stdout
        repl.put(repl.config_dir / "services" / f"{NAME}.toml",
                 copy.replace(b'role = "destination"\n', b""))
        write_tree(lab.src.mountpoint(s.src_fs), seed=5)
        out = text(repl.run("runonce", NAME))
        assert "starting incremental" in out, out
        s.assert_same_at_newest(s.src_tree())
    finally:
        s.close()


_EDIT_KEYS = r"""
import sys
from zfsrepl.setup import authorized_keys as ak
action, marker = sys.argv[1], sys.argv[2]
if action == "add":
    ak.update(ak.default_path(), lambda c: ak.with_line(c, sys.argv[3], marker))
else:
    ak.update(ak.default_path(), lambda c: ak.without_marker(c, marker))
"""


def edit_keys(lab: Lab, *args: str) -> None:
    """Edit dst's authorized_keys with zfsrepl's own helper (under its lock)."""
    py = str(lab.bin_dir.parent / "py")
    lab.dst.run(["env", f"PYTHONPATH={py}", "python3", "-c", _EDIT_KEYS, *args])


def other_lines(lab: Lab) -> list[bytes]:
    """authorized_keys less every zfsrepl service line (other tests add theirs)."""
    content = lab.dst.run(["sh", "-c", 'cat "$HOME/.ssh/authorized_keys"']).stdout
    return [ln for ln in content.splitlines()
            if not (ln.split() and ln.split()[-1].startswith(b"zfsrepl:"))]


def install_service_key(s: Setup, key: Path) -> str:
    """A key of the service's own at `key` on the source, its line (pinned to the agent
    by a forced command, marked as setup marks it) in dst's authorized_keys; the marker."""
    from zfsrepl.config import parse_service
    from zfsrepl.setup.apply import forced_argv
    from zfsrepl.setup.authorized_keys import key_line, service_marker

    lab = s.lab
    marker = service_marker(s.name, lab.src.user, lab.src.address)
    lab.src.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    public = lab.src.run(["cat", f"{key}.pub"]).stdout.decode()
    svc = parse_service(s.definition)
    line = key_line(public, forced_argv(svc, str(lab.bin_dir / "zfsrepl"),
                                        str(s.back.base / "agent.log")), marker)
    edit_keys(lab, "add", marker, line)
    return marker


def test_lockoutkey_then_the_source_cannot_replicate(lab: Lab, area: Area,
                                                     repl: ZfsreplCli) -> None:
    """6.2.1 with the service's own key, pinned to the agent by a forced command."""
    from zfsrepl.setup.authorized_keys import service_marker

    name = f"lock-{area.name}"
    key = repl.base / "service-key"
    s = start(lab, area, repl, name=name, destination={"identity": str(key)})
    marker = service_marker(name, lab.src.user, lab.src.address)
    try:
        before = other_lines(lab)
        assert install_service_key(s, key) == marker
        replicate_twice(s)  # through the agent

        out = text(s.back.run("lockoutkey", name))
        assert marker in out, out
        assert f"{s.dst_fs}: interlock set" in out, out
        assert prop(lab.dst, s.dst_fs, "zfsrepl:role") == "source"
        assert other_lines(lab) == before  # every other line untouched
        assert marker.encode() not in lab.dst.run(
            ["sh", "-c", 'cat "$HOME/.ssh/authorized_keys"']).stdout

        dst_snaps = snapshots(lab.dst, s.dst_fs)
        replica = snapshot_checksums(lab.dst, f"{s.dst_fs}@{dst_snaps[-1]}")
        write_tree(lab.src.mountpoint(s.src_fs), seed=9)
        proc = repl.run("runonce", name, check=False)
        out = text(proc)
        assert proc.returncode != 0
        assert "Permission denied" in out and "Traceback" not in out, out
        assert snapshots(lab.dst, s.dst_fs) == dst_snaps  # nothing changed there
        assert snapshot_checksums(lab.dst, f"{s.dst_fs}@{dst_snaps[-1]}") == replica
        proc = repl.run("doctor", name, check=False)
        assert "KEY LOCKED OUT OR REJECTED" in text(proc), text(proc)

        # A second lockout says there is nothing left to remove.
        proc = s.back.run("lockoutkey", name, check=False)
        assert proc.returncode == 1 and "is not there" in text(proc)
        assert f"{s.dst_fs}: interlock already set" in text(proc), text(proc)
        mnt = fail_over(s, interlocked=True)  # the disaster's interlock is kept
        assert tree_checksums(mnt) == replica
    finally:
        edit_keys(lab, "remove", marker)
        s.close()


# Not on the OpenZFS VM: backend-neutral, and minutes of emulated time (the e2e run
# there is kept to what OpenZFS changes).
@pytest.mark.backends("fuse")
def test_interlock_stops_a_returning_source_and_doctor_names_it(lab: Lab, area: Area,
                                                                repl: ZfsreplCli) -> None:
    """6.2.1 then a source that comes back still able to log in (here with src's own
    default key, as a rebuilt source's `setup -r` would reinstall one): the interlock
    that lockoutkey left in ZFS refuses its cycles until the failover is ended."""
    from zfsrepl.setup.authorized_keys import service_marker

    name = f"interlock-{area.name}"
    s = replicate_twice(start(lab, area, repl, name=name))
    marker = service_marker(name, lab.src.user, lab.src.address)
    try:
        assert install_service_key(s, repl.base / "service-key") == marker
        out = text(s.back.run("lockoutkey", name))
        assert marker in out and f"{s.dst_fs}: interlock set" in out, out
        mnt = fail_over(s, interlocked=True)
        write_tree(mnt, seed=70)
        changed = tree_checksums(mnt)
        dst_snaps = snapshots(lab.dst, s.dst_fs)
        replica = snapshot_checksums(lab.dst, f"{s.dst_fs}@{dst_snaps[-1]}")

        # The returning source's next cycles refuse and say what to do.
        write_tree(lab.src.mountpoint(s.src_fs), seed=3)
        for _ in range(2):
            proc = repl.run("runonce", name, check=False)
            assert proc.returncode != 0
            out = text(proc)
            assert "took over by `zfsrepl failover`" in out, out
            assert f"zfsrepl failover --end {name}" in out and f"zfsrepl runonce {name}" in out
            assert "Traceback" not in out
        assert snapshots(lab.dst, s.dst_fs) == dst_snaps  # nothing changed there
        assert snapshot_checksums(lab.dst, f"{s.dst_fs}@{dst_snaps[-1]}") == replica
        assert tree_checksums(mnt) == changed
        assert prop(lab.dst, s.dst_fs, "zfsrepl:role") == "source"
        proc = repl.run("doctor", name, check=False)
        assert proc.returncode == 1
        assert "RECEIVING SIDE TOOK OVER (FAILOVER)" in text(proc), text(proc)

        # The operator decides: end the failover, replicate forward: overwritten.
        proc = run_failover(s, name, "--end", check=False)
        assert proc.returncode == 2 and "--yes" in text(proc)  # no terminal: not confirmed
        assert prop(lab.dst, s.dst_fs, "zfsrepl:role") == "source"
        run_failover(s, name, "--end", "--yes")
        assert prop(lab.dst, s.dst_fs, "zfsrepl:role") == "destination"
        repl.run("runonce", name)
        s.assert_same_at_newest(s.src_tree())
    finally:
        edit_keys(lab, "remove", marker)
        s.close()
