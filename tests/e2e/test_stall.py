"""A stalled transfer never hangs a cycle (`stall_timeout`).

Each test stalls an incremental stream in the middle: the destination's `zfs receive`
stopped (SIGSTOP), the source's `zfs send` stopped, or every packet between the hosts
silently dropped in the destination's network namespace (ssh keep-alives would take a
minute to notice). The watchdog cuts the stream with a WARNING naming the filesystem;
the test then lets the fault go (SIGCONT, the rule removed) and `runonce` ends, on its
retry or with an ALARM, never hanging. No process of the cut pipeline is left behind,
and the next `runonce` replicates, with equal contents on both sides.

fuse only: the tests find and signal the hosts' processes on this machine."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from lab import Area, Lab, ZfsreplCli, own_snapshots, snapshot_checksums, wait_for, write_tree

STALL = 5
# bounds against hanging, not timings: a loaded machine may be slow
RUNONCE_BOUND = 600.0


def lab_netns(lab: Lab) -> set[str]:
    """The network namespaces of the lab's hosts, as ps shows them (inode numbers)."""
    return {host.root(["readlink", "/proc/self/ns/net"]).stdout.decode().strip()
            .removeprefix("net:[").removesuffix("]") for host in lab.hosts}


def pipeline_processes(lab: Lab, src_fs: str, dst_fs: str) -> dict[int, tuple[int, str]]:
    """pid -> (ppid, args) of the processes of a stream from src_fs to dst_fs, on both
    hosts (the lab's hosts share this machine's processes): the zfs send chain, the ssh
    client, the zfs receive chain. Only the lab hosts' network namespaces: another lab
    on this machine may name the same datasets, and its processes are not ours."""
    netns = lab_netns(lab)
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,netns=,args="], capture_output=True,
                         text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[2] not in netns:
            continue
        pid, ppid, args = parts[0], parts[1], parts[3]
        words = f" {args} "
        if (" send " in words and src_fs in args) or \
                ((" receive " in words or " recv " in words) and dst_fs in args):
            found[int(pid)] = (int(ppid), args)
    return found


def innermost(procs: dict[int, tuple[int, str]], word: str) -> list[int]:
    """The processes doing `word` ("send", "receive") themselves: the ends of their
    chains (wrapper, sudo, zfs), not the ssh client that carries the command."""
    parents = {ppid for ppid, _ in procs.values()}
    return [pid for pid, (_, args) in procs.items()
            if pid not in parents and f" {word} " in f" {args} "
            and not args.startswith("ssh ")]


def running(pid: int, args: str) -> bool:
    """`pid` still runs the same command (not a zombie, not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z" and cmdline.strip() == args.strip()


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


Pipeline = dict[int, tuple[int, str]]


@contextlib.contextmanager
def stopping(word: str) -> Iterator[tuple[Callable[[Pipeline], None], Callable[[], None]]]:
    """(stop, cont): SIGSTOP the process doing `word` ("send", "receive") of a pipeline,
    and SIGCONT it and every other process of the pipeline (sudo stops itself when its
    command is stopped, and waits for a SIGCONT of its own); continued in any case at
    the end."""
    pipeline: Pipeline = {}

    def stop(procs: Pipeline) -> None:
        pipeline.update(procs)
        signal_all(innermost(procs, word), signal.SIGSTOP)

    def cont() -> None:
        signal_all([p for p, (_, args) in pipeline.items() if running(p, args)],
                   signal.SIGCONT)

    try:
        yield stop, cont
    finally:
        cont()


@pytest.fixture
def stalled_setup(lab: Lab, area: Area, repl: ZfsreplCli) -> Iterator[tuple[str, str]]:
    """A filesystem replicated once, then ~18 MiB more data to send at 1 MiB/s: an
    incremental that lasts long enough to stall in the middle. Afterwards, a stream
    process of this area that zfs-fuse kept going after its stop (a sender run through
    sudo, stopped and continued) is ended by pid, so that no later test finds it."""
    if "local-processes" not in lab.features:
        pytest.skip("the test signals the hosts' processes on this machine")
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    lab.src.zfs("create", src)
    write_tree(lab.src.mountpoint(src), seed=1)
    repl.write_service(filesystems=[(src, dst)], retries=3)
    repl.run("runonce", "testrepl")
    write_tree(lab.src.mountpoint(src), seed=2, n_files=24, size=1 << 20)
    repl.write_service(filesystems=[(src, dst)], retries=2, retry_delay=5,
                       bandwidth_limit="1M", stall_timeout=STALL)
    yield src, dst
    left = list(pipeline_processes(lab, src, dst))
    signal_all(left, signal.SIGCONT)
    signal_all(left, signal.SIGKILL)
    wait_for("this test's stream processes to end",
             lambda: not pipeline_processes(lab, src, dst), timeout=60)


def stall_and_recover(lab: Lab, repl: ZfsreplCli, tmp_path: Path, src: str, dst: str,
                      fault: Callable[[Pipeline], None],
                      release: Callable[[], None]) -> str:
    """Run `runonce`; once the stream runs, `fault(pipeline)`; once the WARNING is
    there, `release()` (also in any case at the end); check that runonce ended and
    left no process of the pipeline behind. Its output."""
    out = tmp_path / "runonce.out"

    def text() -> str:
        return out.read_text(errors="replace")

    with open(out, "wb") as sink:
        proc = lab.src.popen(repl.argv("runonce", "testrepl"), stdout=sink.fileno(),
                             stderr=subprocess.STDOUT)
    recorded: Pipeline = {}
    try:
        wait_for("the stream to start", lambda: "starting " in text() or proc.poll() is not None)
        assert proc.poll() is None, text()

        def both_ends() -> Pipeline:
            procs = pipeline_processes(lab, src, dst)
            return procs if innermost(procs, "send") and innermost(procs, "receive") else {}

        recorded = wait_for("the stream's processes", both_ends)
        time.sleep(1.0)  # into the stream
        fault(recorded)
        try:
            wait_for("the watchdog's WARNING",
                     lambda: (" WARNING " in text() and "cut the transfer" in text())
                     or proc.poll() is not None, timeout=300)
        finally:
            release()
        try:
            code = proc.wait(timeout=RUNONCE_BOUND)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"runonce hangs:\n{text()}") from None
    finally:
        release()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = text()
    assert "Traceback" not in log, log
    cut = [ln for ln in log.splitlines() if " WARNING " in ln and "cut the transfer" in ln]
    assert cut, log
    # names the filesystem and what stalled
    assert re.search(rf"WARNING (no data moved for {STALL} s sending .* of {src} to "
                     rf".*:{dst}|zfs (send|receive) on \S+ did not exit {STALL} s after its "
                     rf"stream ended \(.* of {src} to .*:{dst}\)): cut the transfer$", cut[0]), log
    if code != 0:  # the retry may find the cut stream's leftovers busy
        assert code == 1 and " ALARM " in log, log
    try:
        wait_for("the cut pipeline's processes to end",
                 lambda: not [p for p, (_, args) in recorded.items() if running(p, args)],
                 timeout=120)
    except AssertionError:
        left = {p: a for p, (_, a) in recorded.items() if running(p, a)}
        raise AssertionError(f"left running: {left}\n{log}") from None
    print(log)  # what happened, for -rP
    return log


def replicated_equal(lab: Lab, repl: ZfsreplCli, src: str, dst: str) -> None:
    """The next runonce replicates; both sides' newest snapshots are equal."""
    repl.write_service(filesystems=[(src, dst)], retries=3, stall_timeout=60)
    repl.run("runonce", "testrepl")
    newest = own_snapshots(lab, lab.src, src)[-1]
    assert own_snapshots(lab, lab.dst, dst)[-1] == newest
    assert snapshot_checksums(lab.dst, f"{dst}@{newest}") == \
        snapshot_checksums(lab.src, f"{src}@{newest}")


def test_a_stopped_receiver_is_cut_and_the_cycle_ends(
        lab: Lab, repl: ZfsreplCli, stalled_setup: tuple[str, str], tmp_path: Path) -> None:
    src, dst = stalled_setup
    with stopping("receive") as (stop, cont):
        stall_and_recover(lab, repl, tmp_path, src, dst, stop, cont)
    replicated_equal(lab, repl, src, dst)


def test_a_stopped_sender_is_cut_and_the_cycle_ends(
        lab: Lab, repl: ZfsreplCli, stalled_setup: tuple[str, str], tmp_path: Path) -> None:
    src, dst = stalled_setup
    with stopping("send") as (stop, cont):
        stall_and_recover(lab, repl, tmp_path, src, dst, stop, cont)
    replicated_equal(lab, repl, src, dst)


@contextlib.contextmanager
def dropping(lab: Lab, table: str) -> Iterator[tuple[Callable[[], None], Callable[[], None]]]:
    """(drop, restore): every packet from and to the source host silently dropped in
    the destination's network namespace, and that undone; undone in any case at the
    end. Its own nftables table, so nothing else there is touched."""
    rules = (f"table inet {table} {{\n"
             f" chain input {{ type filter hook input priority -10; "
             f"ip saddr {lab.src.address} drop; }}\n"
             f" chain output {{ type filter hook output priority -10; "
             f"ip daddr {lab.src.address} drop; }}\n"
             "}\n")
    active = [False]

    def drop() -> None:
        lab.dst.root(["nft", "-f", "-"], input=rules.encode())
        active[0] = True

    def restore() -> None:
        if active[0]:
            lab.dst.root(["nft", "delete", "table", "inet", table])
            active[0] = False

    try:
        yield drop, restore
    finally:
        if active[0]:
            lab.dst.root(["nft", "delete", "table", "inet", table], check=False)


def test_packets_dropped_on_the_way_are_cut_and_the_cycle_ends(
        lab: Lab, area: Area, repl: ZfsreplCli, stalled_setup: tuple[str, str],
        tmp_path: Path) -> None:
    src, dst = stalled_setup
    if lab.dst.root(["nft", "--version"], check=False).returncode != 0:
        pytest.fail("nft is missing in the lab: tests/lab/fuse/common.sh installs nftables")
    with dropping(lab, f"zfsrepl_stall_{area.name}") as (drop, restore):
        stall_and_recover(lab, repl, tmp_path, src, dst, lambda procs: drop(), restore)
    replicated_equal(lab, repl, src, dst)
