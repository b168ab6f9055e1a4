"""Wire compression and a receive-side buffer between the lab's hosts: the stream goes
`zfs send | zstd -c | ssh` and `zstd -dc | mbuffer | zfs receive` on the destination,
over plain ssh and through the agent of an installed service key.

Every replica is checked by content, as in test_runonce; a stopped transfer must leave
none of the extra programs running on either host.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TypeVar

import pytest
from test_setup_support import SetupCase, agent_log, cleaned_up, replay, setup_zfs_command

from lab import (
    Area,
    Lab,
    LabHost,
    ZfsreplCli,
    claim_area,
    snapshot_checksums,
    snapshot_prefix,
    tree_checksums,
    wait_for,
    write_tree,
)

pytestmark = pytest.mark.backends("fuse", "openzfs")

T = TypeVar("T")
WIRE = "(wire: zstd, buffer 16M)"
# "finished ... in 1.2s, 1234 bytes on the wire (56789 before zstd)"
FINISHED_RE = re.compile(r"finished .* (\d+) bytes on the wire \((\d+) before zstd\)")


def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


def snapshots(host: LabHost, fs: str) -> list[str]:
    out = host.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-d", "1", fs)
    return [line.split("@", 1)[1] for line in out.splitlines() if "@" in line]


def write_compressible(path: Path, seed: int) -> None:
    """A file that shrinks on the wire (the lab's pools store it uncompressed)."""
    line = f"line of seed {seed}: the quick brown fox jumps over the lazy dog\n".encode()
    (path / "compressible.txt").write_bytes(line * ((2 << 20) // len(line)))


def replicate_and_check(lab: Lab, run: Callable[[], str],
                        pairs: list[tuple[str, str]]) -> list[str]:
    """Two cycles (full, then incremental after changes); each replica checked by content
    and each stream by its log line. The log of each cycle."""
    logs = []
    for cycle in range(2):
        expected = {}
        for i, (src, _) in enumerate(pairs):
            mnt = lab.src.mountpoint(src)
            write_tree(mnt, seed=10 * cycle + i)
            write_compressible(mnt, seed=10 * cycle + i)
            expected[src] = tree_checksums(mnt)
        out = run()
        logs.append(out)
        kind = "full send" if cycle == 0 else "incremental"
        starts = [ln for ln in out.splitlines() if f"starting {kind}" in ln]
        assert len(starts) == len(pairs), out
        assert all(ln.endswith(WIRE) for ln in starts), out
        sizes = [(int(w), int(s)) for w, s in FINISHED_RE.findall(out)]
        assert len(sizes) == len(pairs), out
        # the stream shrank on the wire: its text went compressed
        assert all(wire < stream for wire, stream in sizes), sizes
        for src, dst in pairs:
            snap = snapshots(lab.src, src)[-1]
            assert snapshots(lab.dst, dst)[-1] == snap
            assert snapshot_checksums(lab.src, f"{src}@{snap}") == expected[src]
            assert snapshot_checksums(lab.dst, f"{dst}@{snap}") == expected[src]
    return logs


# ---------------------------------------------------------------------------- plain ssh


def test_full_then_incremental_compressed_and_buffered(lab: Lab, area: Area,
                                                       repl: ZfsreplCli) -> None:
    # a space in a name: it must survive the pipeline's quoting too
    pairs = [(f"{area.src}/fs1", f"{area.dst}/fs1"), (f"{area.src}/fs 2", f"{area.dst}/fs 2")]
    for src, _ in pairs:
        lab.src.zfs("create", src)
    repl.write_service(filesystems=pairs, keep=2, retries=1, wire_compression="zstd",
                       buffer="16M")

    dry = text(repl.run("runonce", "testrepl", "--dry-run"))
    assert 'wire: zstd, buffer 16M (raw streams of encrypted filesystems uncompressed); ' \
           'asked: wire_compression = "zstd", buffer = "16M"' in dry, dry

    logs = replicate_and_check(lab, lambda: text(repl.run("runonce", "testrepl")), pairs)
    assert not [ln for log in logs for ln in log.splitlines() if " WARNING " in ln], logs


def test_auto_takes_zstd_where_both_hosts_have_it(lab: Lab, area: Area,
                                                  repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    lab.src.zfs("create", src)
    write_compressible(lab.src.mountpoint(src), seed=1)
    repl.write_service(filesystems=[(src, dst)], retries=1, wire_compression="auto")
    out = text(repl.run("runonce", "testrepl"))
    assert "(wire: zstd, no buffer)" in out, out
    snap = snapshots(lab.src, src)[-1]
    assert snapshot_checksums(lab.dst, f"{dst}@{snap}") == \
        snapshot_checksums(lab.src, f"{src}@{snap}")


# ---------------------------------------------------------------------------- stopped mid-way



def pipeline_processes(lab: Lab, area: Area) -> list[str]:
    """`user pid args` of the processes of a transfer in `area`: zfsrepl itself, zfs
    send, the compressor and ssh on the source; the agent, the decompressor, mbuffer
    and zfs receive on the destination. The lab's users run them, but zfs under sudo;
    another lab on this machine (same pool names) runs its commands through root's
    wrappers, which are not counted."""
    marks = (f"{area.src}/", f"{area.dst}/", f"{lab.work_dir}/{area.name}/")
    found = []
    for host in lab.hosts:
        out = host.run(["ps", "-eo", "user=,pid=,args="]).stdout.decode()
        for line in out.splitlines():
            words = line.split(None, 2)
            if len(words) < 3:
                continue
            user, args = words[0], words[2]
            program = Path(args.split()[0]).name
            if user in (lab.src.user, lab.dst.user):
                if program in ("zstd", "mbuffer") or any(m in args for m in marks):
                    found.append(line.strip())
            elif user == "root" and program in ("sudo", "zfs") \
                    and any(m in args for m in marks):
                found.append(line.strip())
    return sorted(set(found))


def all_running(lines: list[str]) -> list[str] | None:
    """`lines` if they hold the programs themselves (not just a command line naming them,
    as ssh's or a shell's does): the decompressor, mbuffer and zfs receive."""
    programs = set()
    for line in lines:
        args = line.split(None, 2)[2].split()
        name = Path(args[0]).name
        if name == "sudo":
            args = args[2:] if args[1:2] == ["-n"] else args[1:]
            name = Path(args[0]).name
        programs.add(f"{name} {args[1] if len(args) > 1 else ''}")
    return lines if {"zstd -dc", "mbuffer -q", "zfs receive"} <= programs else None


def stop_mid_transfer(lab: Lab, repl: ZfsreplCli, name: str, area: Area,
                      tmp_path: Path) -> None:
    """Start `runonce NAME`, wait until its stream runs through the decompressor and
    mbuffer, SIGTERM it; then nothing of the pipeline may be left on either host."""
    assert not pipeline_processes(lab, area)
    out = tmp_path / "runonce.out"
    with open(out, "wb") as sink:
        proc = lab.src.popen(repl.argv("runonce", name), stdout=sink.fileno(),
                             stderr=subprocess.STDOUT)
    try:
        wait_for("the transfer to start", lambda: WIRE in out.read_text(errors="replace"))
        running = wait_for("zstd -dc, mbuffer and zfs receive on the destination",
                           lambda: all_running(pipeline_processes(lab, area)))
        time.sleep(1.0)  # in the stream
        assert proc.poll() is None, out.read_text(errors="replace")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = out.read_text(errors="replace")
    assert code == 143, log
    assert "zfsrepl: terminated" in log
    try:
        wait_for("the pipeline's processes to go",
                 lambda: not pipeline_processes(lab, area), timeout=30)
    except AssertionError:
        raise AssertionError(f"left running: {pipeline_processes(lab, area)} "
                             f"(running before: {running})") from None


def test_a_stopped_transfer_leaves_no_process(lab: Lab, area: Area, repl: ZfsreplCli,
                                              tmp_path: Path) -> None:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    lab.src.zfs("create", src)
    # ~6 MiB of incompressible data at 256 KiB/s on the wire: the send lasts ~25 s
    write_tree(lab.src.mountpoint(src), seed=7, n_files=6, size=1024 * 1024)
    repl.write_service(filesystems=[(src, dst)], retries=1, bandwidth_limit="256K",
                       wire_compression="zstd", buffer="16M")
    stop_mid_transfer(lab, repl, "testrepl", area, tmp_path)


# ---------------------------------------------------------------------------- through the agent


@dataclass
class Installed:
    case: SetupCase

    @property
    def lab(self) -> Lab:
        return self.case.lab


@pytest.fixture(scope="module")
def installed(lab: Lab) -> Iterator[Installed]:
    """A service set up with `setup -r` (its key's forced command: the agent), asking
    for zstd and a 16M buffer; its streams held to 256 KiB/s on the wire, so that one can
    be stopped in the middle (the tests' streams compress to far less)."""
    with claim_area(lab) as area:
        repl = ZfsreplCli(lab, area.name)
        repl.create()
        case = SetupCase(lab, area, repl, name=f"wire-{area.name}")
        try:
            with cleaned_up(case):
                zfs = setup_zfs_command(lab)
                lines = [f'name = "{case.name}"', "keep = 2", 'wire_compression = "zstd"',
                         'buffer = "16M"', 'bandwidth_limit = "256K"',
                         "[source]", f'host = "{lab.src.address}"',
                         f'user = "{lab.src.user}"', f'zfs_command = "{zfs}"',
                         "[destination]", f'host = "{lab.dst.address}"',
                         f'user = "{lab.dst.user}"', f'zfs_command = "{zfs}"']
                for src, dst in case.pairs:
                    lab.src.zfs("create", src)
                    lines += ["[[filesystem]]", f'source = "{src}"', f'destination = "{dst}"']
                repl.put(case.response, ("\n".join(lines) + "\n").encode())
                code, out, _ = replay(case)
                assert code == 0, out
                yield Installed(case)
        finally:
            lab.stop_children()
            repl.destroy()


def test_through_the_agent(installed: Installed) -> None:
    case = installed.case
    definition = case.repl.config_dir / "services" / f"{case.name}.toml"
    written = case.lab.src.run(["cat", str(definition)]).stdout.decode()
    assert 'wire_compression = "zstd"' in written and 'buffer = "16M"' in written

    logs = replicate_and_check(case.lab, lambda: text(case.repl.run("runonce", case.name)),
                               case.pairs)
    assert not [ln for log in logs for ln in log.splitlines() if " WARNING " in ln], logs
    # the agent ran the pipeline itself, as found on its PATH
    log = agent_log(case)
    runs = [ln for ln in log.splitlines() if "running: " in ln and " receive " in ln]
    assert len(runs) == 4, log
    assert all(re.search(r"running: \S*/zstd -dc \| \S*/mbuffer -q -m 16M \| .*zfs receive -u",
                         ln) for ln in runs), runs
    assert " refused: " not in log, log
    assert "hello" in log  # the tool lookup


def test_a_stopped_transfer_through_the_agent_leaves_no_process(
        installed: Installed, tmp_path: Path) -> None:
    case = installed.case
    src, _ = case.pairs[0]
    # ~6 MiB that do not compress, at 256 KiB/s: the stream lasts ~25 s
    write_tree(case.lab.src.mountpoint(src), seed=77, n_files=6, size=1024 * 1024)
    stop_mid_transfer(case.lab, case.repl, case.name, case.area, tmp_path)
    # the agent says it was cut short, not refused
    assert " refused: " not in agent_log(case)


def test_missed_cycles_catch_up_through_the_agent_in_one_stream(installed: Installed) -> None:
    """Snapshots that a cycle took but never sent (the link was down) go in one `send -I`
    stream, which the agent lets through (on OpenZFS a compound stream)."""
    case, lab = installed.case, installed.lab
    src, dst = case.pairs[0]
    prefix = snapshot_prefix(lab)
    highest = max(int(name[len(prefix):]) for name in snapshots(lab.src, src)
                  if name.startswith(prefix) and name[len(prefix):].isdigit())
    base = snapshots(lab.dst, dst)[-1]  # a stopped transfer may have left one unsent
    missed = {}
    for seq in (highest + 1, highest + 2):
        write_tree(lab.src.mountpoint(src), seed=seq, n_files=2, size=4096)
        lab.src.zfs("snapshot", f"{src}@{prefix}{seq}")
        missed[f"{prefix}{seq}"] = tree_checksums(lab.src.mountpoint(src))
    out = text(case.repl.run("runonce", case.name))
    assert f"incremental -I @{base} -> @{prefix}{highest + 3}" in out, out
    assert " refused: " not in agent_log(case)
    names = snapshots(lab.dst, dst)  # keep = 2: the newest missed one and the cycle's
    newest_missed = f"{prefix}{highest + 2}"
    assert names[-2:] == [newest_missed, f"{prefix}{highest + 3}"], names
    assert snapshot_checksums(lab.dst, f"{dst}@{newest_missed}") == missed[newest_missed]
