"""`parallel`: several filesystems sent at once between the lab's hosts, over one ssh
connection, and stopped in the middle of several transfers.

Replicas are checked by content, as in test_runonce. Waits are bounded (a hang fails
the test); no test asserts how long anything took."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import TypeVar

import pytest

from lab import (
    Area,
    Lab,
    ZfsreplCli,
    own_snapshots,
    snapshot_checksums,
    snapshot_prefix,
    tree_checksums,
    wait_for,
    write_tree,
)

T = TypeVar("T")

# zfs-fuse only for now: the threads and processes are the same on OpenZFS, and the
# large throttled transfers would cost the emulated VM minutes per test.
pytestmark = pytest.mark.backends("fuse")

SERVICE = "testrepl"





def pairs_of(area: Area, n: int) -> list[tuple[str, str]]:
    return [(f"{area.src}/fs{i}", f"{area.dst}/fs{i}") for i in range(n)]


def most_in_flight(out: str, kind: str) -> int:
    """The most streams the log shows between their `starting` and `finished` lines."""
    running: set[str] = set()
    most = 0
    for line in out.splitlines():
        m = re.search(rf" (starting|finished) {kind} .* of (\S+) to ", line)
        if not m:
            continue
        if m.group(1) == "starting":
            running.add(m.group(2))
            most = max(most, len(running))
        else:
            running.discard(m.group(2))
    return most


# on OpenZFS too: there the new bases' bookmarks are made side by side as well
@pytest.mark.backends("fuse", "openzfs")
def test_six_filesystems_three_at_a_time_full_then_incremental(
        lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    pairs = pairs_of(area, 6)
    for i, (src, _) in enumerate(pairs):
        lab.src.zfs("create", src)
        write_tree(lab.src.mountpoint(src), seed=10 + i)
    repl.write_service(filesystems=pairs, keep=2, retries=1, parallel=3)

    seen: list[str] = []
    for cycle in range(3):
        if cycle:
            for i, (src, _) in enumerate(pairs):
                write_tree(lab.src.mountpoint(src), seed=100 * cycle + i)
        expected = {src: tree_checksums(lab.src.mountpoint(src)) for src, _ in pairs}
        proc = repl.run("runonce", SERVICE)
        out = proc.stdout.decode() + proc.stderr.decode()
        kind = "full send" if cycle == 0 else "incremental"
        for src, _ in pairs:  # every line of a transfer names its filesystem
            assert len(re.findall(rf"(starting|finished) {kind} .* of {re.escape(src)} to ",
                                  out)) == 2, out
        assert 2 <= most_in_flight(out, kind) <= 3, out
        assert "\r" not in out  # no redrawn progress line in between

        snap = own_snapshots(lab, lab.src, pairs[0][0])[-1]
        assert snap == f"{snapshot_prefix(lab)}{cycle + 1}"
        seen.append(snap)
        for src, dst in pairs:
            assert snapshot_checksums(lab.src, f"{src}@{snap}") == expected[src]
            assert snapshot_checksums(lab.dst, f"{dst}@{snap}") == expected[src]
            # keep = 2, pruned on both sides
            assert own_snapshots(lab, lab.src, src) == seen[-2:]
            assert own_snapshots(lab, lab.dst, dst) == seen[-2:]


# ---------------------------------------------------------------------------- stopping


def leftovers(lab: Lab, area: Area, repl: ZfsreplCli, masters_before: set[str]) -> list[str]:
    """zfs, ssh and zfsrepl processes of this test still running, on either host: those
    naming its filesystems or its config folder, and ssh processes on a zfsrepl control
    socket that was not there before."""
    found = []
    for host in lab.hosts:
        for line in host.processes():
            ours = (f"{area.src}/" in line or f"{area.dst}/" in line or str(repl.base) in line
                    or any(path in line for path in control_paths([line]) - masters_before))
            if ours:
                found.append(f"{host.name}: {line.strip()}")
    return found


def control_paths(lines: list[str]) -> set[str]:
    return {m.group(1) for line in lines if re.search(r"\bssh\b", line)
            for m in [re.search(r"-S (\S*zfsrepl-ssh-\S*)", line)] if m}


def ssh_lines(lab: Lab) -> list[str]:
    return lab.src.processes()


@pytest.mark.parametrize("command", ["runonce", "run"])
def test_sigterm_cuts_every_transfer_in_flight_and_the_next_runonce_completes(
        lab: Lab, area: Area, repl: ZfsreplCli, tmp_path: Path, command: str) -> None:
    pairs = pairs_of(area, 5)
    for i, (src, _) in enumerate(pairs):
        lab.src.zfs("create", src)
        # ~4 MiB of incompressible data at 256 KiB/s: each send lasts ~15 s
        write_tree(lab.src.mountpoint(src), seed=40 + i, n_files=4, size=1024 * 1024)
    repl.write_service(filesystems=pairs, retries=1, keep=3, parallel=3,
                       bandwidth_limit="256K")
    masters_before = control_paths(ssh_lines(lab))

    out = tmp_path / f"{command}.out"
    argv = (repl.argv("runonce", SERVICE) if command == "runonce" else
            repl.argv("run", "--log-dir", str(repl.base / "log"), SERVICE))
    with open(out, "wb") as sink:  # the child keeps its own copy of the descriptor
        proc = lab.src.popen(argv, stdout=sink.fileno(), stderr=subprocess.STDOUT)
    try:
        wait_for("three transfers to start",
                 lambda: out.read_text(errors="replace").count("starting full send") >= 3)
        time.sleep(1.0)  # inside the streams
        text = out.read_text(errors="replace")
        assert proc.poll() is None, text
        assert "finished full send" not in text, "the streams were not throttled"
        assert text.count("starting full send") == 3, text  # no more than parallel
        during = leftovers(lab, area, repl, masters_before)  # what must go, as it runs
        for step in (" send ", " receive "):
            assert len({ln.split(": ", 1)[1] for ln in during if step in ln}) >= 3, during
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text(errors="replace")
    if command == "runonce":
        assert code == 143, text
        assert "zfsrepl: terminated" in text
    else:
        assert code == 0, text
        assert "stopped by SIGTERM" in text
    assert "ALARM" not in text
    # no stream was started after the stop
    assert text.count("starting full send") == 3, text
    try:
        wait_for("the processes of the stopped cycle to go",
                 lambda: not leftovers(lab, area, repl, masters_before), timeout=30)
    except AssertionError:
        raise AssertionError(
            f"left running: {leftovers(lab, area, repl, masters_before)}") from None

    # The next runonce (full speed) completes every filesystem, the cut ones included.
    repl.write_service(filesystems=pairs, retries=1, keep=3, parallel=3)
    repl.run("runonce", SERVICE, timeout=300)
    for src, dst in pairs:
        snap = own_snapshots(lab, lab.src, src)[-1]
        assert own_snapshots(lab, lab.dst, dst)[-1] == snap
        assert snapshot_checksums(lab.dst, f"{dst}@{snap}") == \
            tree_checksums(lab.src.mountpoint(src))
    assert not leftovers(lab, area, repl, masters_before)
