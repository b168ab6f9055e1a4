"""skip_unchanged between the lab's hosts.

Where ZFS has the `written` property (OpenZFS), an unchanged filesystem gets no new
snapshot and stays in sync in `check`; on zfs-fuse (pool v23, no `written`) the key is
accepted, every filesystem still gets its snapshot, and a WARNING says so once.
Each test says why it is skipped on the other lab.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from lab import (
    Area,
    Lab,
    ZfsreplCli,
    own_snapshots,
    snapshot_checksums,
    tree_checksums,
    wait_for,
    write_tree,
)

SERVICE = "testrepl"
NO_EFFECT = "skip_unchanged has no effect"
pytestmark = pytest.mark.backends("fuse", "openzfs")


def has_written(lab: Lab) -> bool:
    return "openzfs" in getattr(lab, "features", frozenset())


def two_filesystems(lab: Lab, area: Area) -> list[tuple[str, str]]:
    pairs = []
    for i, name in enumerate(("a", "b"), start=1):
        lab.src.zfs("create", f"{area.src}/{name}")
        write_tree(lab.src.mountpoint(f"{area.src}/{name}"), seed=i)
        pairs.append((f"{area.src}/{name}", f"{area.dst}/{name}"))
    return pairs


def runonce(repl: ZfsreplCli) -> str:
    proc = repl.run("runonce", SERVICE, timeout=600)
    return proc.stdout.decode() + proc.stderr.decode()


def lag_of(repl: ZfsreplCli, src: str) -> int:
    out = repl.run("check", SERVICE, check=False).stdout.decode()
    m = re.search(rf"'lag {re.escape(src)}'=(\d+)s", out)
    assert m, out
    return int(m.group(1))


def test_an_unchanged_filesystem_gets_no_snapshot_and_stays_in_sync(
        lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    if not has_written(lab):
        pytest.skip("zfs-fuse has no `written` property (run with ZFSREPL_LAB_BACKEND=openzfs)")
    (a_src, a_dst), (b_src, b_dst) = pairs = two_filesystems(lab, area)
    repl.write_service(filesystems=pairs, retries=1, keep=3, skip_unchanged=True)
    runonce(repl)
    first = own_snapshots(lab, lab.src, a_src)
    assert len(first) == 1 and own_snapshots(lab, lab.dst, b_dst) == first

    write_tree(lab.src.mountpoint(a_src), seed=7)
    changed = tree_checksums(lab.src.mountpoint(a_src))
    out = runonce(repl)
    assert "skip_unchanged: 1 of 2 filesystem(s) unchanged" in out, out
    a_snaps = own_snapshots(lab, lab.dst, a_dst)
    assert len(a_snaps) == 2 and own_snapshots(lab, lab.src, a_src) == a_snaps
    assert snapshot_checksums(lab.dst, f"{a_dst}@{a_snaps[-1]}") == changed
    assert own_snapshots(lab, lab.src, b_src) == own_snapshots(lab, lab.dst, b_dst) == first

    # Nothing written anywhere: no snapshot, send or destroy, on either side.
    created = int(lab.dst.zfs("get", "-H", "-p", "-o", "value", "creation",
                              f"{b_dst}@{first[0]}").strip())
    # the clock must pass the snapshot's second for the lags below to differ
    wait_for("a later second than the snapshot's", lambda: time.time() >= created + 5)
    out = runonce(repl)
    assert "skip_unchanged: 2 of 2 filesystem(s) unchanged" in out, out
    assert own_snapshots(lab, lab.dst, a_dst) == a_snaps
    assert own_snapshots(lab, lab.dst, b_dst) == first
    # b's lag counts from the cycle that found it unchanged, not from its old snapshot
    age = time.time() - created
    assert lag_of(repl, b_src) < age - 2


def test_without_written_the_key_has_no_effect_and_says_so_once(
        lab: Lab, area: Area, repl: ZfsreplCli, tmp_path: Path) -> None:
    if has_written(lab):
        pytest.skip("this ZFS has `written`: skip_unchanged takes effect here")
    pairs = two_filesystems(lab, area)
    repl.write_service(filesystems=pairs, retries=2, retry_delay=1, keep=3, interval=1,
                       skip_unchanged=True)
    runonce(repl)
    out = runonce(repl)  # nothing changed: still a snapshot of each
    assert out.count(NO_EFFECT) == 1, out
    assert "has no 'written' property" in out
    for src, dst in pairs:
        assert len(own_snapshots(lab, lab.dst, dst)) == 2
        assert own_snapshots(lab, lab.src, src) == own_snapshots(lab, lab.dst, dst)

    # the daemon says it once for its whole life, cycle after cycle
    log = tmp_path / "run.out"
    with open(log, "wb") as sink:
        proc = lab.src.popen(repl.argv("run", SERVICE), stdout=sink.fileno(),
                             stderr=subprocess.STDOUT)
    try:
        wait_for("three cycles of the daemon",
                 lambda: log.read_text(errors="replace").count(f"cycle of {SERVICE} finished")
                 >= 3)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    text = log.read_text(errors="replace")
    assert text.count(NO_EFFECT) == 1, text
    for _, dst in pairs:
        # a new snapshot each cycle though nothing changed (keep = 3; a cycle cut by
        # the stop may have left one more)
        assert len(own_snapshots(lab, lab.dst, dst)) >= 3
