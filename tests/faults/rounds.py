"""One round of the campaign: data, cycles, a fault, recovery, checks.

Everything random in a round comes from one ``random.Random`` seeded with the round's
seed (printed with each outcome), so a failing round can be played again exactly as far
as the lab lets it: ``ZFSREPL_FAULTS_SEED`` / ``--seed``. Waits are on states (a log
line, a process, a file); the only timed pauses are part of a fault itself (how long a
link stays down, how far into a stream a fault lands).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import random
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, Optional

from lab import (
    Area,
    Lab,
    ZfsreplCli,
    claim_area,
    destroy,
    own_snapshots,
    release_holds,
    retry_busy,
    snapshot_checksums,
    tree_checksums,
    wait_for,
    write_tree,
)

SERVICE = "testrepl"
# How long a faulted process may take to end once its fault is over, and a recovery
# cycle at most: bounds against hanging (a cycle that hangs fails its round).
HANG_BOUND = 240.0
# How long processes of the round may take to go after the round's last cycle (zfs-fuse
# may still be finishing an orphaned transfer).
LEFTOVER_BOUND = 30.0
# How long the round's datasets may stay busy after it (see Round.cleanup).
BUSY_BOUND = 300.0
# Recovery: this many cycles at most (each with the definition's retries).
RECOVERY_CYCLES = 3
# Not recovered by then: a cycle this often, for at most this long, to learn whether and
# when it does (a round that recovers this late still counts as not recovered).
LATE_EVERY = 20.0
LATE_BOUND = 300.0

# The moments a fault can land at, in the order a cycle passes them.
LISTING = "listing"  # the connection is opening, both sides are being listed
SNAPSHOT = "snapshot"  # in the pre-snapshot hook: the snapshot is about to be taken
STREAM_EARLY = "stream-early"
STREAM_MIDDLE = "stream-middle"
STREAM_LATE = "stream-late"
RETENTION = "retention"  # the stream finished: holds, bookmarks, destroys
CYCLE_MOMENTS = (LISTING, SNAPSHOT, STREAM_EARLY, STREAM_MIDDLE, STREAM_LATE, RETENTION)
STREAM_MOMENTS = (STREAM_EARLY, STREAM_MIDDLE, STREAM_LATE)
BETWEEN = "between-cycles"
# Where in the stream (share of its expected length) each stream moment lands.
_STREAM_SHARE = {STREAM_EARLY: (0.05, 0.25), STREAM_MIDDLE: (0.4, 0.6),
                 STREAM_LATE: (0.75, 0.95)}

# The pre-snapshot hook: a gate that holds the cycle in its snapshot phase while the
# round has armed it, so that a fault lands there exactly.
_GATE_HOOK = """#!/bin/sh
d=$(dirname "$0")
if [ -e "$d/gate.armed" ]; then
    rm -f "$d/gate.armed"
    : > "$d/gate.reached"
    i=0
    while [ ! -e "$d/gate.open" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
    rm -f "$d/gate.open" "$d/gate.reached"
fi
exit 0
"""


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Data of a round on a backend: the big file's size range, the stream's limit."""

    big: tuple[int, int]
    limit: str
    limit_bytes: int


SIZES = {
    "fuse": Sizes((3 << 20, 8 << 20), "2M", 2 << 20),
    # the VM is emulated: everything is ~10 times slower there
    "openzfs": Sizes((384 << 10, 1 << 20), "256K", 256 << 10),
}


@dataclasses.dataclass
class Outcome:
    """What a round found. ``ok`` when it recovered with nothing wrong."""

    kind: str
    variant: str
    backend: str
    seed: str
    moment: str = ""
    phase: str = ""  # where the cycle really was when the fault landed
    recovered: bool = False
    recovery_cycles: int = 0  # cycles run after the fault until one succeeded
    late_recovery: float = 0.0  # seconds after the first RECOVERY_CYCLES until one did
    chain_broken: bool = False
    mismatches: int = 0
    tracebacks: int = 0
    unclear: int = 0  # errors that do not say clearly what went wrong
    leftovers: list[str] = dataclasses.field(default_factory=list)
    harness_error: Optional[str] = None  # the round itself failed (not zfsrepl)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (self.recovered and not self.chain_broken and not self.mismatches
                and not self.tracebacks and not self.unclear and not self.leftovers
                and not self.harness_error)

    def describe(self) -> str:
        head = (f"{self.kind}/{self.variant} at {self.moment or '-'}"
                f" (phase {self.phase or '-'}) seed {self.seed}: ")
        if self.ok:
            return head + f"recovered in {self.seconds:.0f}s"
        what = []
        if self.harness_error:
            what.append(f"round failed: {self.harness_error}")
        if not self.recovered:
            what.append("NOT recovered")
        if self.chain_broken:
            what.append("chain broken")
        if self.mismatches:
            what.append(f"{self.mismatches} content mismatch(es)")
        if self.tracebacks:
            what.append(f"{self.tracebacks} traceback(s)")
        if self.unclear:
            what.append(f"{self.unclear} unclear error(s)")
        if self.leftovers:
            what.append(f"left running: {self.leftovers}")
        return head + "; ".join(what) + "".join(f"\n    {n}" for n in self.notes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


class Running:
    """A zfsrepl process of the round, its output going to a file."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, verb: str) -> None:
        self.proc = proc
        self.out = out
        self.verb = verb

    def text(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def ended(self) -> bool:
        return self.proc.poll() is not None


class RoundFailed(AssertionError):
    """zfsrepl did not do what the round expects of it."""


class Round:
    """One round's area, service, data and processes, and the steps kinds are made of."""

    def __init__(self, lab: Lab, area: Area, rng: random.Random, workdir: Path,
                 outcome: Outcome) -> None:
        self.lab = lab
        self.area = area
        self.rng = rng
        self.workdir = workdir
        self.outcome = outcome
        self.sizes = SIZES[lab.backend]
        self.repl = ZfsreplCli(lab, area.name)
        self.repl.create()
        n_fs = rng.choice((1, 1, 2))
        self.pairs = [(f"{area.src}/fs{i}", f"{area.dst}/fs{i}") for i in range(n_fs)]
        for src, _ in self.pairs:
            lab.src.zfs("create", src)
        self.hook = self.repl.base / "pre-snapshot"
        self.repl.put(self.hook, _GATE_HOOK.encode())
        lab.src.run(["chmod", "0755", str(self.hook)])
        self.settings: dict[str, Any] = {"keep": 2, "retries": 2, "retry_delay": 1,
                                         "interval": 3600}
        self.runs: list[Running] = []
        # what a fault set up that must go before the round's files
        self.cleanups: list[Callable[[], object]] = []
        self.expected: dict[str, dict[str, str]] = {}
        self.stream_bytes = 0
        self.patterns = [f"{area.src}/", f"{area.dst}/", f"{self.repl.base}/"]
        # The lab hosts' network namespaces: another lab on this machine (a benchmark's
        # own VM, say) runs commands that name the same pools and areas, and its
        # processes are neither the round's to count nor to kill.
        self.netns = {lab_host.root(["readlink", "/proc/self/ns/net"]).stdout.decode()
                      .strip().removeprefix("net:[").removesuffix("]")
                      for lab_host in lab.hosts}
        self.before = set(self.processes())
        self.define()

    # -- the service and its data -----------------------------------------------------

    def define(self, *, limit: bool = False, **extra: Any) -> None:
        """(Re)write the definition: the round's settings, `extra`, and with `limit` a
        bandwidth limit that makes the stream last a few seconds. runonce reads it at
        each start; run when it starts."""
        settings = {**self.settings, **extra}
        if limit:
            settings["bandwidth_limit"] = self.sizes.limit
        self.repl.write_service(filesystems=self.pairs, pre_snapshot=str(self.hook),
                                **settings)

    def write_data(self) -> None:
        """New random contents in every source filesystem: a tree (new seed) and a big
        random file whose size is drawn anew (the first filesystem's is the big one)."""
        total = 0
        for i, (src, _) in enumerate(self.pairs):
            mnt = self.lab.src.mountpoint(src)
            write_tree(mnt, seed=self.rng.randrange(1 << 30))
            lo, hi = self.sizes.big
            n = self.rng.randint(lo, hi) if i == 0 else self.rng.randint(lo // 8, lo // 4)
            (mnt / "big.bin").write_bytes(self.rng.randbytes(n))
            total += n
            self.expected[src] = tree_checksums(mnt)
        self.stream_bytes = total

    # -- processes ------------------------------------------------------------------------

    def start(self, *args: str, env: Optional[Mapping[str, str]] = None) -> Running:
        """`zfsrepl ARGS` as the source user in the background, output to a file."""
        out = self.workdir / f"{len(self.runs):02d}-{args[0]}.out"
        with open(out, "wb") as sink:
            proc = self.lab.src.popen(self.repl.argv(*args), env=env, stdout=sink.fileno(),
                                      stderr=subprocess.STDOUT)
        run = Running(proc, out, args[0])
        self.runs.append(run)
        return run

    def finish(self, run: Running, bound: float = HANG_BOUND) -> int:
        """Wait for `run` to end; one that does not within `bound` is a hang: killed,
        noted, and the round fails."""
        try:
            return run.proc.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            self.outcome.notes.append(f"`zfsrepl {run.verb}` still running after {bound:.0f}s:"
                                      " killed")
            pid = self.pid_of(run.verb)
            if pid is not None:
                self.kill(pid, "KILL")
            run.proc.kill()
            run.proc.wait()
            raise RoundFailed(f"zfsrepl {run.verb} hung") from None

    def command(self, *args: str, env: Optional[Mapping[str, str]] = None) -> tuple[int, str]:
        """`zfsrepl ARGS` to its end: exit status and output (kept for the checks)."""
        run = self.start(*args, env=env)
        code = self.finish(run)
        return code, run.text()

    def runonce(self, *extra: str, env: Optional[Mapping[str, str]] = None) -> tuple[int, str]:
        return self.command("runonce", *extra, SERVICE, env=env)

    def processes(self) -> dict[int, tuple[int, str]]:
        """pid -> (ppid, "user args") of every process of the lab's users, and of every
        process naming this round's datasets or folders (sudo zfs runs as root), in
        the lab hosts' network namespaces."""
        out = self.lab.src.root(["ps", "-e", "-o", "pid=,ppid=,user=,netns=,args="]
                                ).stdout.decode()
        users = {self.lab.src.user, self.lab.dst.user}
        found: dict[int, tuple[int, str]] = {}
        for line in out.splitlines():
            parts = line.split(None, 4)
            if len(parts) < 5 or parts[3] not in self.netns:
                continue
            pid, ppid, user, args = int(parts[0]), int(parts[1]), parts[2], parts[4]
            if user in users or any(p in args for p in self.patterns):
                found[pid] = (ppid, f"{user} {args}")
        return found

    def pid_of(self, verb: str) -> Optional[int]:
        """The pid of this round's `zfsrepl VERB`, on its host (None: not running)."""
        needle = f"--state-dir {self.repl.state_dir} {verb}"
        pids = [pid for pid, (_, args) in self.processes().items()
                if needle in args and "python" in args]
        return min(pids) if pids else None

    def ssh_of(self, pid: int, master: bool) -> list[int]:
        """The ssh processes `pid` started: its ControlMaster, or the others (streams,
        commands over the master)."""
        return [p for p, (ppid, args) in self.processes().items()
                if ppid == pid and " ssh " in f" {args.split(' ', 1)[1]} "
                and (" -M " in args) == master]

    def kill(self, pid: int, signal: str) -> None:
        self.lab.src.root(["kill", f"-{signal}", str(pid)], check=False)

    # -- moments --------------------------------------------------------------------------

    def prepare(self, moment: str) -> None:
        """What must be in place before the cycle starts for `moment` to be caught."""
        if moment == SNAPSHOT:
            self.lab.src.run(["touch", str(self.repl.base / "gate.armed")])

    def open_gate(self) -> None:
        base = self.repl.base
        self.lab.src.run(["sh", "-c", 'rm -f "$1/gate.armed"; [ ! -e "$1/gate.reached" ] || '
                          ': > "$1/gate.open"', "sh", str(base)])

    def reach(self, moment: str, run: Running) -> None:
        """Wait until `run` is at `moment` (or has ended: then the fault lands after it)."""
        self.outcome.moment = moment
        if moment == LISTING:
            def master() -> bool:
                if run.ended():
                    return True
                pid = self.pid_of(run.verb)
                return pid is not None and bool(self.ssh_of(pid, master=True))
            wait_for("the cycle's ssh connection", master)
            time.sleep(self.rng.uniform(0.0, 0.3))
        elif moment == SNAPSHOT:
            gate = str(self.repl.base / "gate.reached")
            wait_for("the pre-snapshot hook", lambda: run.ended() or self.lab.src.run(
                ["test", "-e", gate], check=False).returncode == 0)
        elif moment in _STREAM_SHARE:
            wait_for("the stream to start", lambda: run.ended() or "starting " in run.text(),
                     timeout=HANG_BOUND)
            lo, hi = _STREAM_SHARE[moment]
            time.sleep(self.rng.uniform(lo, hi) * self.stream_bytes / self.sizes.limit_bytes)
        elif moment == RETENTION:
            wait_for("the stream to finish", lambda: run.ended() or "finished " in run.text(),
                     timeout=HANG_BOUND)
        else:
            raise ValueError(f"unknown moment {moment}")
        self.outcome.phase = self.phase(run)

    @staticmethod
    def phase(run: Running) -> str:
        text = run.text()
        if run.ended():
            return "after the cycle"
        if "cycle of " in text and " finished" in text:
            return "after the cycle"
        if "finished " in text:
            return "after the stream"
        if "starting " in text:
            return "in the stream"
        if " taken" in text:
            return "after the snapshot"
        if "pre_snapshot hook" in text:
            return "in the snapshot phase"
        return "connecting and listing"

    # -- steps ----------------------------------------------------------------------------

    def baseline(self, cycles: int = 1) -> None:
        """Replicate fresh data `cycles` times with no fault (no bandwidth limit)."""
        self.define()
        for _ in range(cycles):
            self.write_data()
            code, text = self.runonce()
            if code != 0:
                raise RoundFailed(f"a cycle before the fault failed ({code}):\n{text[-2000:]}")

    def fault_in_cycle(self, moments: tuple[str, ...], begin: Callable[[Running], None], *,
                       end: Callable[[], None] = lambda: None,
                       pause: tuple[float, float] = (0.0, 0.0), end_at_exit: bool = False,
                       until: Optional[Callable[[Running], None]] = None,
                       verb: str = "runonce") -> Running:
        """Start a cycle (`verb`) with the bandwidth limit, reach a moment drawn from
        `moments`, `begin` the fault there, let the cycle go on (the gate opens), wait
        `pause` (drawn) or `until(run)` returns, `end` the fault (or after the cycle
        ended: `end_at_exit`), and wait for the cycle to end. `end` runs whatever
        happens."""
        moment = self.rng.choice(moments)
        self.define(limit=True)
        self.prepare(moment)
        run = self.start(*((verb, "--log-dir", str(self.repl.base / "log"), SERVICE)
                           if verb == "run" else (verb, SERVICE)))
        ended = False
        try:
            self.reach(moment, run)
            begin(run)
            self.open_gate()
            if until is None:
                time.sleep(self.rng.uniform(*pause))
            else:
                until(run)
            if not end_at_exit:
                ended = True
                end()
            if verb == "runonce":
                self.finish(run)
        finally:
            self.open_gate()
            if not ended:
                if verb == "runonce" and not run.ended():
                    with contextlib.suppress(RoundFailed):
                        self.finish(run)
                end()
        self.define()
        return run

    def recover(self) -> str:
        """Run cycles (no manual step) until one succeeds; the last one's output."""
        self.define()
        existed = self._existing_destinations()
        text = ""
        for _ in range(RECOVERY_CYCLES):
            code, text = self.runonce()
            self.outcome.recovery_cycles += 1
            self._no_full_resend(existed, text)
            if code == 0:
                self.outcome.recovered = True
                return text
        self.outcome.notes.append(f"last recovery cycle:\n{_tail(text)}")
        started = time.monotonic()
        while time.monotonic() - started < LATE_BOUND:
            time.sleep(LATE_EVERY)  # as a service's interval would
            code, text = self.runonce()
            self.outcome.recovery_cycles += 1
            self._no_full_resend(existed, text)
            if code == 0:
                self.outcome.late_recovery = time.monotonic() - started
                self.outcome.notes.append(
                    f"recovered only {self.outcome.late_recovery:.0f}s after the first "
                    f"{RECOVERY_CYCLES} cycles, at cycle {self.outcome.recovery_cycles}")
                return text
        raise RoundFailed(f"no cycle succeeded in {RECOVERY_CYCLES} after the fault, nor in "
                          f"{LATE_BOUND:.0f}s more")

    # -- checks ---------------------------------------------------------------------------

    def verify(self) -> None:
        """One more cycle with new data, then every check of the round."""
        existed = self._existing_destinations()
        self.write_data()
        code, text = self.runonce()
        if code != 0:
            self.outcome.recovered = False
            self.outcome.notes.append(f"the cycle after recovery failed:\n{_tail(text)}")
        self._no_full_resend(existed, text)
        self._check_snapshots()
        self._check_tracebacks()
        self._check_leftovers()

    def _no_full_resend(self, existed: set[str], text: str) -> None:
        """A destination that held the chain must never be sent whole again."""
        for src, dst in self.pairs:
            if dst in existed and "full send of @" in _line_of(text, src):
                self.outcome.chain_broken = True
                self.outcome.notes.append(f"{src}: sent whole again although {dst} held "
                                          "the chain")

    def _existing_destinations(self) -> set[str]:
        return {dst for _, dst in self.pairs if own_snapshots(self.lab, self.lab.dst, dst)}

    def _check_snapshots(self) -> None:
        lab = self.lab
        for src, dst in self.pairs:
            s_snaps, d_snaps = own_snapshots(lab, lab.src, src), own_snapshots(lab, lab.dst, dst)
            if not s_snaps or not d_snaps or s_snaps[-1] != d_snaps[-1]:
                self.outcome.chain_broken = True
                self.outcome.notes.append(f"{src}: newest differ: {s_snaps} / {d_snaps}")
                continue
            newest = s_snaps[-1]
            keep = int(self.settings["keep"])
            if len(s_snaps) > keep or len(d_snaps) > keep:
                # after a clean cycle, retention leaves `keep` on each side
                self.outcome.notes.append(f"{src}: retention left {len(s_snaps)} / "
                                          f"{len(d_snaps)} snapshots (keep = {keep})")
            for name in d_snaps:
                if name not in s_snaps:
                    continue  # the source's retention went first (a cut cycle): not a mismatch
                src_sums = snapshot_checksums(lab.src, f"{src}@{name}")
                if src_sums != snapshot_checksums(lab.dst, f"{dst}@{name}"):
                    self.outcome.mismatches += 1
                    self.outcome.notes.append(f"{dst}@{name} differs from the source's")
                if name == newest and src_sums != self.expected[src]:
                    self.outcome.mismatches += 1
                    self.outcome.notes.append(f"{src}@{name} does not hold the data written")

    def _check_tracebacks(self) -> None:
        for run in self.runs:
            if "Traceback" in run.text():
                self.outcome.tracebacks += 1
                self.outcome.notes.append(f"traceback in {run.out.name}:\n{_tail(run.text())}")

    def _check_leftovers(self) -> None:
        def left() -> dict[int, tuple[int, str]]:
            return {p: v for p, v in self.processes().items() if p not in self.before}
        try:
            wait_for("the round's processes to end", lambda: not left(),
                     timeout=LEFTOVER_BOUND)
        except AssertionError:
            found = left()
            self.outcome.leftovers = [args for _, args in found.values()]
            for pid in found:  # the round's own processes: end them for the next round
                self.kill(pid, "KILL")

    # -- helpers for kinds ----------------------------------------------------------------

    def unclear(self, what: str, text: str) -> None:
        """zfsrepl failed as it should, but its message does not say clearly why."""
        self.outcome.unclear += 1
        self.outcome.notes.append(f"{what}:\n{_tail(text)}")

    def destroy_snapshot(self, host_name: str, fs: str, name: str) -> None:
        """Destroy a snapshot by hand, as an administrator would (releasing holds first
        where the lab's ZFS has them)."""
        host = self.lab.src if host_name == "src" else self.lab.dst
        release_holds(self.lab, host, f"{fs}@{name}")
        destroy(host, f"{fs}@{name}")

    def cleanup(self) -> None:
        for run in self.runs:
            if not run.ended():
                pid = self.pid_of(run.verb)
                if pid is not None:
                    self.kill(pid, "KILL")
                run.proc.kill()
                run.proc.wait()
        for undo in self.cleanups:
            undo()
        self.repl.destroy()
        # zfs-fuse finishes a cut transfer in its daemon, where no process shows it, and
        # keeps its snapshots busy meanwhile: give it time before the area goes.
        for host, fs in ((self.lab.src, self.area.src), (self.lab.dst, self.area.dst)):
            started = time.monotonic()
            release_holds(self.lab, host, fs)
            retry_busy(functools.partial(host.zfs, "destroy", "-R", fs), timeout=BUSY_BOUND)
            waited = time.monotonic() - started
            if waited > 5:
                self.outcome.notes.append(f"{fs} stayed busy for {waited:.0f}s after the round")


def _tail(text: str, n: int = 2000) -> str:
    return text[-n:].rstrip()


def _line_of(text: str, src: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if f" of {src} to " in ln)


def round_seed(seed: str, kind: str, index: int) -> str:
    return f"{seed}:{kind}:{index}"


@contextlib.contextmanager
def _round(lab: Lab, outcome: Outcome, workdir: Path) -> Iterator[Round]:
    workdir.mkdir(parents=True, exist_ok=True)
    with claim_area(lab) as area:
        r = Round(lab, area, random.Random(outcome.seed), workdir, outcome)
        try:
            yield r
        finally:
            r.cleanup()
            lab.stop_children()


def play_round(lab: Lab, kind: Any, variant: str, seed: str, workdir: Path) -> Outcome:
    """Play one round of `kind` (a faults.kinds.Kind) and check it; never raises for
    what zfsrepl did: the outcome says it."""
    outcome = Outcome(kind=kind.name, variant=variant, backend=lab.backend, seed=seed)
    started = time.monotonic()
    try:
        with _round(lab, outcome, workdir) as r:
            try:
                kind.play(r, variant)
                r.verify()
            except RoundFailed as exc:
                outcome.notes.insert(0, str(exc))
                outcome.recovered = False
                r._check_tracebacks()
                r._check_leftovers()
    except Exception as exc:  # the lab or the round itself
        outcome.harness_error = f"{type(exc).__name__}: {exc}"[:2000]
    outcome.seconds = time.monotonic() - started
    (workdir / "outcome.json").write_text(outcome.to_json() + "\n")
    return outcome
