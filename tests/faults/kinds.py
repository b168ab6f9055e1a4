"""The fault kinds of the campaign, numbered as in the reliability issue.

Each kind has variants; a round plays one variant (rounds go through them in turn) at a
moment drawn at random. ``play`` leaves the service replicated again or raises
RoundFailed; the round's checks come after it (rounds.Round.verify).

Where zfsrepl is expected to stop and say so instead of recovering on its own (a chain
that cannot continue), the kind checks the message and then applies the repair that
message and the README document, as an operator would; that counts as recovered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from lab import Lab, LabHost, own_snapshots, wait_for
from zfsrepl.config import MIN_STALL_TIMEOUT
from zfsrepl.cycle import MIN_COMMAND_TIMEOUT

from .rounds import (
    BETWEEN,
    CYCLE_MOMENTS,
    LISTING,
    RETENTION,
    SERVICE,
    SNAPSHOT,
    STREAM_EARLY,
    STREAM_LATE,
    STREAM_MIDDLE,
    STREAM_MOMENTS,
    Round,
    RoundFailed,
    Running,
    _tail,
)

# The keep-alive kind 3 gives ssh (through the definition's ssh_options, which come
# first and win): 2 s x 2, so that a link down "longer than the keep-alive" takes
# seconds, not the minute of zfsrepl's own 15 s x 4.
KEEPALIVE_OPTIONS = ["ServerAliveInterval=2", "ServerAliveCountMax=2"]
KEEPALIVE_SECONDS = 4.0


@dataclasses.dataclass(frozen=True)
class Kind:
    number: int
    name: str
    title: str
    variants: tuple[str, ...]
    play: Callable[[Round, str], None]
    needs: frozenset[str] = frozenset()  # lab features
    skip: str = ""  # why the kind is not played at all
    # why the kind cannot be played in this lab ("" when it can)
    unplayable: Callable[[Lab], str] = lambda lab: ""
    # variant -> the bug it finds, not fixed yet: the short campaign leaves these
    # variants to their regression tests (test_regressions.py, strict xfail)
    known_bugs: tuple[tuple[str, str], ...] = ()

    def variant(self, index: int, *, known_bugs: bool = True) -> str:
        bugs = dict(self.known_bugs)
        variants = [v for v in self.variants if known_bugs or v not in bugs]
        return variants[index % len(variants)]


# ------------------------------------------------------------------------ 1: kill -9


def _play_kill(r: Round, variant: str) -> None:
    full = r.rng.random() < 1 / 3  # the fault hits the first, full, stream
    if not full:
        r.baseline()
    r.write_data()
    verb = "run" if variant == "run" else "runonce"

    def kill(run: Running) -> None:
        pid = r.pid_of(verb)
        if pid is None:
            r.outcome.notes.append(f"`zfsrepl {verb}` had ended before the kill")
            return
        r.kill(pid, "KILL")
        wait_for("the killed process to end", run.ended)

    r.fault_in_cycle(CYCLE_MOMENTS, kill, verb=verb)
    # The next start, at once: the killed one's `zfs send | ssh` may still be running.
    if verb == "run":
        daemon = r.start("run", "--log-dir", str(r.repl.base / "log"), SERVICE)
        try:
            wait_for("a cycle of the restarted service", lambda: daemon.ended() or (
                "cycle of testrepl finished" in daemon.text()), timeout=240)
        finally:
            _stop_daemon(r, daemon)
        if "cycle of testrepl finished" not in daemon.text():
            r.outcome.notes.append(f"restarted run:\n{_tail(daemon.text())}")
            raise RoundFailed("the restarted service did not finish a cycle")
        r.outcome.recovered = True
    else:
        r.recover()


def _stop_daemon(r: Round, daemon: Running) -> None:
    if daemon.ended():
        return
    pid = r.pid_of("run")
    if pid is not None:
        r.kill(pid, "TERM")
    code = r.finish(daemon, bound=60)
    if code not in (0, -signal.SIGTERM):
        r.outcome.notes.append(f"run exited with {code} after SIGTERM")


# ------------------------------------------------------------------------ 2: ssh cut


def _play_ssh(r: Round, variant: str) -> None:
    r.baseline()
    r.write_data()
    if variant == "sshd":
        r.fault_in_cycle(CYCLE_MOMENTS, lambda run: r.lab.dst.stop_sshd(),
                         end=r.lab.dst.start_sshd, pause=(0.5, 3.0))
    else:
        def cut(run: Running) -> None:
            pid = r.pid_of("runonce")
            if pid is None:
                r.outcome.notes.append("runonce had ended before the cut")
                return
            # the stream's own ssh where one runs, else the connection's master
            streams = [] if variant == "master" else r.ssh_of(pid, master=False)
            victims = streams or r.ssh_of(pid, master=True)
            r.outcome.notes.append(f"killed {'stream' if streams else 'master'} ssh")
            for victim in victims:
                r.kill(victim, "KILL")
        r.fault_in_cycle(CYCLE_MOMENTS, cut)
    r.recover()


# ------------------------------------------------------------------------ 3: network gone


def _play_link(r: Round, variant: str) -> None:
    r.settings["destination"] = {"ssh_options": KEEPALIVE_OPTIONS}
    r.baseline()
    r.write_data()
    pause = (1.0, 3.0) if variant == "short" else (KEEPALIVE_SECONDS + 2, KEEPALIVE_SECONDS + 5)
    r.fault_in_cycle(CYCLE_MOMENTS, lambda run: r.lab.set_link(False),
                     end=lambda: r.lab.set_link(True), pause=pause)
    r.recover()


# ------------------------------------------------------------------------ 4: stall

# The round's watchdog: the shortest `stall_timeout` a definition may give. A command
# that is not a stream (a listing, a destroy) is cut by the cycle's command timeout,
# which is never shorter than MIN_COMMAND_TIMEOUT.
STALL_TIMEOUT = MIN_STALL_TIMEOUT
COMMAND_TIMEOUT = max(STALL_TIMEOUT, MIN_COMMAND_TIMEOUT)
# How long the cycle may still run once a stall began: three times the timeout of what
# stalled (the cut, the retry, its end) and room for a loaded machine. A bound against
# hanging, not a measure of speed.
STALL_MARGIN = 60.0
# The WARNINGs that say something was cut because it stalled: the watchdog's (a
# stream), the command timeout's, ssh's keep-alive giving up, a connection that timed out.
_CUT_WORDS = ("cut the transfer", "did not finish within", "lost the connection",
              "cannot connect")


def _stream_processes(r: Round) -> dict[int, tuple[int, str]]:
    """pid -> (ppid, args) of the processes of the round's streams on both hosts: the
    `zfs send` chain (sudo, zfs), the ssh client that carries the stream, and the
    `zfs receive` chain that the destination's sshd runs (shell, sudo, zfs)."""
    found = {}
    for pid, (ppid, text) in r.processes().items():
        args = text.split(" ", 1)[1] if " " in text else ""
        words = f" {args} "
        if (" send " in words and any(src in args for src, _ in r.pairs)) or (
                (" receive " in words or " recv " in words)
                and any(dst in args for _, dst in r.pairs)):
            found[pid] = (ppid, args)
    return found


def _innermost(procs: dict[int, tuple[int, str]], word: str) -> list[int]:
    """The processes doing `word` ("send", "receive") themselves: the ends of their
    chains, not the wrappers that wait for them nor the ssh client that carries them."""
    parents = {ppid for ppid, _ in procs.values()}
    return [pid for pid, (_, args) in procs.items()
            if pid not in parents and f" {word} " in f" {args} " and not args.startswith("ssh ")]


def _still_stopped(r: Round, pids: list[int]) -> list[int]:
    """Those of `pids` that are stopped (ps state T)."""
    if not pids:
        return []
    out = r.lab.src.root(["ps", "-o", "pid=,stat=", "-p", ",".join(map(str, pids))],
                         check=False).stdout.decode()
    return [int(pid) for pid, stat in (ln.split() for ln in out.splitlines() if ln.strip())
            if stat.startswith("T")]


def _cuts(text: str) -> list[str]:
    return [ln for ln in text.splitlines()
            if " WARNING " in ln and any(w in ln for w in _CUT_WORDS)]


def _names_stream(line: str, src: str, dst: str) -> bool:
    """The watchdog's WARNING names the filesystem and what stalled."""
    t = f"{STALL_TIMEOUT:g}"
    return re.search(
        rf"WARNING (no data moved for {t} s sending .* of {re.escape(src)} to "
        rf".*:{re.escape(dst)}|zfs (send|receive) on \S+ did not exit {t} s after its "
        rf"stream ended \(.* of {re.escape(src)} to .*:{re.escape(dst)}\)): cut the "
        r"transfer$", line) is not None


class _Stall:
    """One stall of a round: its start (a process stopped, packets dropped), the wait
    for the cut, its release (SIGCONT, the rule removed) and the checks of the cut."""

    def __init__(self, r: Round, variant: str) -> None:
        self.r = r
        self.variant = variant
        self.stopped: dict[int, str] = {}  # pid -> args: the stopped stream's processes
        self.dropping = ""  # how packets are dropped now ("" while they are not)
        self.began: Optional[float] = None
        self.bound = 0.0
        self.late = ""
        self.table = f"zfsrepl_stall_{r.area.name}"

    def begin(self, run: Running) -> None:
        r = self.r
        if run.ended():
            r.outcome.notes.append("the cycle had ended before the stall")
            return
        if self.variant == "packets-dropped":
            self._drop()
        else:
            word = "receive" if self.variant == "receiver-stopped" else "send"
            procs = _stream_processes(r)
            targets = _innermost(procs, word)
            if not targets:
                r.outcome.notes.append(f"no zfs {word} ran any more: the stream had ended")
                return
            if r.rng.random() < 0.5:
                # the whole chain (shell, sudo, zfs), not only the zfs at its end
                targets = [pid for pid, (_, args) in procs.items()
                           if f" {word} " in f" {args} " and not args.startswith("ssh ")]
            # every process of the stream, to be continued: sudo stops itself when its
            # command is stopped, and waits for a SIGCONT of its own
            self.stopped = {pid: args for pid, (_, args) in procs.items()}
            for pid in targets:
                r.kill(pid, "STOP")
            r.outcome.notes.append("stopped " + "; ".join(procs[p][1][:120] for p in targets))
        self.began = time.monotonic()
        stream = r.outcome.phase == "in the stream"
        self.bound = 3 * (STALL_TIMEOUT if stream else COMMAND_TIMEOUT) + STALL_MARGIN

    def until_cut(self, run: Running) -> None:
        """Wait for the cut (or the cycle's end), release the stall, and wait for the
        cycle to end, all within the bound."""
        if self.began is None:
            return
        deadline = self.began + self.bound
        # not cut by the deadline: found below, the cycle is still running then
        with contextlib.suppress(AssertionError):
            wait_for("the stall to be cut", lambda: run.ended() or bool(_cuts(run.text())),
                     timeout=max(0.0, deadline - time.monotonic()))
        self.release()
        try:
            wait_for("the cycle to end", run.ended,
                     timeout=max(0.0, deadline - time.monotonic()))
        except AssertionError:
            self.late = (f"the cycle still ran {time.monotonic() - self.began:.0f}s after the "
                         f"stall began (bound {self.bound:.0f}s)")

    def release(self) -> None:
        r = self.r
        if self.dropping == "nft":
            r.lab.dst.root(["nft", "delete", "table", "inet", self.table], check=False)
        elif self.dropping == "route":
            r.lab.dst.root(["ip", "route", "del", "blackhole", f"{r.lab.src.address}/32"],
                           check=False)
        self.dropping = ""
        if self.stopped:
            now = {pid: text.split(" ", 1)[1] if " " in text else ""
                   for pid, (_, text) in r.processes().items()}
            # the same processes, not pids used again
            alive = [pid for pid, args in self.stopped.items() if now.get(pid) == args]
            self.stopped = {}
            for pid in alive:
                r.kill(pid, "CONT")
            # sudo, stopped together with its command, learns only once continued that
            # its command had stopped, and then stops itself: continue it again, until
            # none has stopped for a while
            calm = 0
            for _ in range(50):
                time.sleep(0.2)
                again = _still_stopped(r, alive)
                calm = 0 if again else calm + 1
                if calm == 3:
                    break
                for pid in again:
                    r.kill(pid, "CONT")
            else:
                r.outcome.notes.append(f"still stopped after SIGCONT: {again}")

    def _drop(self) -> None:
        """Every packet from and to the source host silently dropped in the destination's
        network namespace: by nftables (a table of its own), or where the host has no
        nft by a blackhole route to the source (its replies go nowhere)."""
        lab = self.r.lab
        if lab.dst.root(["nft", "--version"], check=False).returncode == 0:
            rules = (f"table inet {self.table} {{\n"
                     f" chain input {{ type filter hook input priority -10; "
                     f"ip saddr {lab.src.address} drop; }}\n"
                     f" chain output {{ type filter hook output priority -10; "
                     f"ip daddr {lab.src.address} drop; }}\n"
                     "}\n")
            lab.dst.root(["nft", "-f", "-"], input=rules.encode())
            self.dropping = "nft"
        else:
            lab.dst.root(["ip", "route", "add", "blackhole", f"{lab.src.address}/32"])
            self.dropping = "route"
        self.r.outcome.notes.append(f"packets dropped ({self.dropping})")

    def check(self, run: Running) -> None:
        r = self.r
        if self.late:
            raise RoundFailed(self.late)
        if self.began is None:
            return
        text, code = run.text(), run.proc.returncode
        cuts = _cuts(text)
        if not cuts:
            if code != 0:
                r.unclear("the cycle failed without a WARNING saying what stalled", text)
            else:
                r.outcome.notes.append("nothing stalled: the cycle went through")
            return
        r.outcome.notes.append(f"cut: {cuts[0].split(' WARNING ', 1)[1][:300]}")
        watchdog = [ln for ln in cuts if "cut the transfer" in ln]
        if watchdog and not any(_names_stream(watchdog[0], src, dst) for src, dst in r.pairs):
            r.unclear("the watchdog's WARNING does not name the filesystem and what stalled",
                      text)


def _play_stall(r: Round, variant: str) -> None:
    r.settings["stall_timeout"] = STALL_TIMEOUT
    r.baseline()
    r.write_data()
    stall = _Stall(r, variant)
    r.cleanups.append(stall.release)  # before the round's files go, whatever happened
    # A stopped process stalls only a stream; dropped packets also hold a listing or a
    # destroy over ssh, a remote command that does not exit.
    moments = CYCLE_MOMENTS if variant == "packets-dropped" else STREAM_MOMENTS
    run = r.fault_in_cycle(moments, stall.begin, end=stall.release, until=stall.until_cut)
    stall.check(run)
    r.recover()


# ------------------------------------------------------------------------ 5: pool full


def _set_quota(host: LabHost, fs: str, room: int) -> None:
    """A quota on `fs` of what it uses now plus `room` bytes. zfs-fuse counts data just
    written only once it is synced, and refuses a quota below what it will count: try
    again with the new figure until it takes it."""
    def attempt() -> bool:
        used = int(host.zfs("get", "-Hp", "-o", "value", "used", fs).strip())
        proc = host.root(["zfs", "set", f"quota={used + room}", fs], check=False)
        return proc.returncode == 0
    wait_for(f"a quota on {fs}", attempt, timeout=60)


def _play_full(r: Round, variant: str) -> None:
    r.baseline()
    r.write_data()
    if variant == "destination":
        parent = r.area.dst

        def fill(run: Running) -> None:
            # room for a few blocks, not for the stream
            _set_quota(r.lab.dst, parent, 256 << 10)

        def free() -> None:
            r.lab.dst.zfs("set", "quota=none", parent)

        moments = (LISTING, SNAPSHOT, STREAM_EARLY, STREAM_MIDDLE)
        run = r.fault_in_cycle(moments, fill, end=free, end_at_exit=True)
        if run.proc.returncode == 0 and r.outcome.phase == "in the stream":
            r.outcome.notes.append("the cycle succeeded although the quota was set in it")
    else:
        # The source full when the snapshot is taken: a quota on the parent, filled
        # up to it by a file that the applications could not finish writing.
        parent, (src, _) = r.area.src, r.pairs[0]
        _set_quota(r.lab.src, parent, 1 << 20)
        try:
            _fill_until_full(r, r.lab.src.mountpoint(src) / "filler.bin")
            r.define()
            code, text = r.runonce()
            r.outcome.moment, r.outcome.phase = SNAPSHOT, "source full"
            r.outcome.notes.append(f"cycle with the source full exited {code}")
            if code != 0 and not text.strip():
                r.unclear("the cycle failed without a word", text)
        finally:
            r.lab.src.zfs("set", "quota=none", parent)
    r.recover()


def _fill_until_full(r: Round, path: Path) -> None:
    """Write random data to `path` until the quota refuses more (8 MiB at most)."""
    block = r.rng.randbytes(128 << 10)
    try:
        with open(path, "wb") as f:
            for _ in range(64):
                f.write(block)
                f.flush()
    except OSError:
        pass


# ------------------------------------------------------------------------ 6: common snapshot gone


def _play_common(r: Round, variant: str) -> None:
    r.baseline(cycles=2)  # keep = 2: two own snapshots on each side
    lab = r.lab
    src, dst = r.pairs[0]
    r.outcome.moment = r.outcome.phase = BETWEEN
    if variant == "destination-newest":
        r.destroy_snapshot("dst", dst, own_snapshots(lab, lab.dst, dst)[-1])
        r.write_data()
        r.recover()  # the older common snapshot carries the chain
        return
    if variant == "destination-all":
        for name in own_snapshots(lab, lab.dst, dst):
            r.destroy_snapshot("dst", dst, name)
        r.write_data()
        code, text = r.runonce()
        _expect_refusal(r, code, text, ("no common snapshot", "doctor"))
        # the repair the message and doctor give: move the replica aside
        code, doc = r.command("doctor", SERVICE)
        if f"rename {dst} {dst}.old" not in doc.replace("'", ""):
            r.outcome.notes.append(f"doctor:\n{_tail(doc)}")
            raise RoundFailed("doctor did not give the rename that starts over")
        lab.dst.zfs("rename", dst, f"{dst}.old")
        r.recover()
        return
    # source-newest: the snapshot the chain continues from, gone from the source
    r.destroy_snapshot("src", src, own_snapshots(lab, lab.src, src)[-1])
    r.write_data()
    if "openzfs" in lab.features:
        text = r.recover()  # the bookmark carries the chain
        if "incremental -i #" not in text:
            r.outcome.notes.append("recovered without the bookmark")
        return
    code, text = r.runonce()
    _expect_refusal(r, code, text, ("newer than the last one it shares", "doctor"))
    code, fixed = r.command("doctor", SERVICE, "--fix", "--yes")
    if code != 0:
        r.outcome.notes.append(f"doctor --fix:\n{_tail(fixed)}")
        raise RoundFailed("doctor --fix did not repair")
    r.recover()


def _expect_refusal(r: Round, code: int, text: str, words: tuple[str, ...]) -> None:
    if code == 0 or not all(w in text for w in words):
        r.outcome.notes.append(f"expected a refusal naming {words}:\n{_tail(text)}")
        raise RoundFailed("no clear refusal")
    if "starting full send" in text:
        raise RoundFailed("a full resend after the chain was cut")


# ------------------------------------------------------------------------ 7: at once


def _play_concurrent(r: Round, variant: str) -> None:
    r.baseline()
    r.write_data()
    moments = (LISTING, SNAPSHOT, *STREAM_MOMENTS, RETENTION)
    second: list[Running] = []
    if variant == "runonce-during-run":
        def join(run: Running) -> None:
            second.append(r.start("runonce", SERVICE))
        first = r.fault_in_cycle(moments, join, verb="run")
        code = r.finish(second[0])
        try:
            wait_for("the service's cycle", lambda: first.ended() or (
                "cycle of testrepl finished" in first.text()), timeout=240)
        finally:
            _stop_daemon(r, first)
        if "cycle of testrepl finished" not in first.text():
            raise RoundFailed("the service's cycle did not finish")
        if code != 0:
            r.outcome.notes.append(f"runonce beside run:\n{_tail(second[0].text())}")
            raise RoundFailed(f"runonce beside a running service exited {code}")
        r.outcome.recovered = True
        return
    no_wait = variant == "runonce-no-wait"

    def join2(run: Running) -> None:
        second.append(r.start("runonce", *(["--no-wait"] if no_wait else []), SERVICE))
    first = r.fault_in_cycle(moments, join2)
    code = r.finish(second[0])
    text = second[0].text()
    if first.proc.returncode != 0:
        r.outcome.notes.append(f"first runonce:\n{_tail(first.text())}")
        raise RoundFailed(f"the first runonce exited {first.proc.returncode}")
    if no_wait and code != 0:
        if code != 1 or "is busy" not in text or len(text.strip().splitlines()) > 3:
            r.unclear("runonce --no-wait beside a cycle: not one clear message", text)
    elif code != 0:
        r.outcome.notes.append(f"second runonce:\n{_tail(text)}")
        raise RoundFailed(f"the second runonce exited {code}")
    r.outcome.recovered = True


# ------------------------------------------------------------------------ 8: host key


def _play_hostkey(r: Round, variant: str) -> None:
    r.baseline()
    r.write_data()
    r.outcome.moment = r.outcome.phase = BETWEEN
    # The destination now shows a key the source does not know for it ("changed": another
    # key is known for it; "unknown": none is): the source user's known hosts are replaced
    # for this service only (the lab's stay as they are).
    known = r.repl.base / "known_hosts"
    entry = f"{r.lab.dst.address} {_other_host_key(r)}\n" if variant == "changed" else ""
    r.repl.put(known, entry.encode())
    r.define(destination={"ssh_options": [f"UserKnownHostsFile={known}",
                                          "StrictHostKeyChecking=yes"]})
    run = r.start("runonce", SERVICE)
    code = r.finish(run, bound=120)
    text = run.text()
    r.define()
    if code == 0:
        raise RoundFailed(f"runonce replicated to a host whose key it does not know:\n{text}")
    if r.lab.dst.address not in text or "host key" not in text.lower():
        r.unclear("no clear error naming the host and its key", text)
    r.recover()


def _other_host_key(r: Round) -> str:
    """A new ed25519 public key ("type base64"): not the destination's."""
    key = r.workdir / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return " ".join(key.with_suffix(".pub").read_text().split()[:2])


# ------------------------------------------------------------------------ 9: state folder


def _play_state(r: Round, variant: str) -> None:
    r.baseline()
    r.write_data()
    folder = r.repl.state_dir / "services" / SERVICE
    state = folder / "state.json"
    scripts = {
        "truncated": f'f={state}; s=$(wc -c < "$f"); truncate -s $((s / 2)) "$f"',
        "deleted": f"rm -rf {folder}",
        "unreadable": f"chmod 000 {state}",
        "folder-unwritable": f"chmod 0555 {folder}",
        # a small tmpfs over the folder, holding a copy of its files, then filled up
        "folder-full": (
            f'd={folder}; t=$(mktemp -d); cp -a "$d"/. "$t"/ && '
            'mount -t tmpfs -o "size=256k,uid=$(stat -c %u "$d"),gid=$(stat -c %g "$d"),'
            'mode=$(stat -c %a "$d")" zfsrepl-fault-full "$d" && cp -a "$t"/. "$d"/; '
            'rm -rf "$t"; dd if=/dev/zero of="$d/.fill" bs=4096 2>/dev/null; true'),
    }
    undo = {"unreadable": f"chmod 0644 {state}", "folder-unwritable": f"chmod 0755 {folder}",
            "folder-full": f"rm -f {folder}/.fill"}
    if variant == "folder-full":
        # before the round's files go; the tmpfs must not outlive the round
        r.cleanups.append(lambda: r.lab.src.root(
            ["sh", "-c", f"if mountpoint -q {folder}; then umount {folder} || "
                         f"umount -l {folder}; fi"], check=False))

    garbage = r.rng.randbytes(300)

    def spoil(run: Running | None = None) -> None:
        if variant == "garbage":
            r.repl.put(state, garbage)
        else:
            r.lab.src.root(["sh", "-c", scripts[variant]])

    if r.rng.random() < 0.5:
        r.outcome.moment = r.outcome.phase = BETWEEN
        spoil()
        code, text = r.runonce()
    else:
        run = r.fault_in_cycle((SNAPSHOT, STREAM_EARLY, STREAM_MIDDLE, STREAM_LATE), spoil)
        code, text = run.proc.returncode, run.text()
    if code != 0:
        lines = [ln for ln in text.splitlines() if "error" in ln.lower()]
        r.outcome.notes.append(f"cycle with the state {variant} exited {code}: {lines[-1:]}")
        if not lines:
            r.unclear("the cycle failed without a clear message", text)
    if variant in undo:
        r.lab.src.root(["sh", "-c", undo[variant]])
    r.recover()


# ------------------------------------------------------------------------ 10: clock

# libfaketime (Debian package faketime), preloaded into zfsrepl alone: sudo drops
# LD_PRELOAD, so zfs and the machine's clock never see it. A fixed offset per process:
# libfaketime cannot step the clock of a running Python process (time.sleep then fails
# with EINVAL), so the clock is stepped between cycles. The loop of `run` schedules by
# the monotonic clock, which a step of the wall clock does not move.
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def _no_faketime(lab: Lab) -> str:
    found = lab.src.root(["test", "-e", FAKETIME_LIB], check=False).returncode == 0
    return "" if found else f"no {FAKETIME_LIB} on the source host (apt-get install faketime)"


def _play_clock(r: Round, variant: str) -> None:
    r.baseline()
    r.outcome.moment = r.outcome.phase = BETWEEN
    step = "-1h" if variant == "back" else "+1h"
    stepped = {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": step}
    # two cycles an hour off, then the clock stepped back to the right time
    for env in (stepped, stepped, None):
        r.write_data()
        code, text = r.runonce(env=env)
        if code != 0:
            r.outcome.notes.append(f"cycle with the clock at {step if env else '+0'}:\n"
                                   f"{_tail(text)}")
            raise RoundFailed(f"a cycle failed after the clock was stepped {variant}")
        for args in (("status", SERVICE, "--json"), ("metrics", SERVICE)):
            code, out = r.command(*args, env=env)
            lags = _lags(args[0], out)
            if code != 0 or not lags or any(lag < 0 or lag > 2 * 3600 for lag in lags):
                r.unclear(f"`zfsrepl {' '.join(args)}` with the clock at "
                          f"{step if env else '+0'}: lags {lags}", out)
    r.outcome.recovered = True


def _lags(what: str, out: str) -> list[float]:
    """The lags `status --json` or `metrics` reports."""
    if what == "metrics":
        return [float(ln.rsplit(" ", 1)[1]) for ln in out.splitlines()
                if ln.startswith("zfsrepl_lag_seconds{")]
    try:
        data = json.loads(out)
    except ValueError:
        return []
    found: list[float] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "lag_seconds" and isinstance(value, (int, float)):
                    found.append(float(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(data)
    return found


# ------------------------------------------------------------------------ kinds


KINDS: tuple[Kind, ...] = (
    Kind(1, "kill", "kill -9 of runonce / run mid-cycle", ("runonce", "run"), _play_kill),
    Kind(2, "ssh", "ssh cut: stream client, master, destination sshd",
         ("client", "master", "sshd"), _play_ssh),
    Kind(3, "link", "link between the hosts down, shorter / longer than the keep-alive",
         ("short", "long"), _play_link),
    Kind(4, "stall", "a transfer stalled: receiver / sender stopped, packets dropped",
         ("receiver-stopped", "sender-stopped", "packets-dropped"), _play_stall),
    Kind(5, "full", "destination pool full mid-cycle / source full at the snapshot",
         ("destination", "source"), _play_full),
    Kind(6, "common", "newest common snapshot destroyed by hand",
         ("destination-newest", "destination-all", "source-newest"), _play_common),
    Kind(7, "concurrent", "two runonce at once / runonce during run",
         ("two-runonce", "runonce-no-wait", "runonce-during-run"), _play_concurrent),
    Kind(8, "hostkey", "the destination's host key changed / unknown", ("changed", "unknown"),
         _play_hostkey),
    Kind(9, "state", "the state folder spoiled",
         ("truncated", "garbage", "deleted", "unreadable", "folder-unwritable", "folder-full"),
         _play_state),
    Kind(10, "clock", "the wall clock stepped an hour back / forward between cycles",
         ("back", "forward"), _play_clock, unplayable=_no_faketime),
)
KINDS_BY_NAME = {k.name: k for k in KINDS}
