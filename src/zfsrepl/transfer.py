"""The `zfs send | transport | zfs receive` pipeline.

zfsrepl moves the stream between the two pipes itself, so that it can count the
bytes (for metrics and progress), hold the stream to a bandwidth limit (by pausing
between moves) and see a stream that stalls. Where the platform has `os.splice`
(Linux, Python 3.10+) it moves it with splice, which hands kernel pages from one
pipe to the other: the data never passes through Python buffers. Elsewhere it is
read into one buffer and written out again, a copy that costs far less than the
network it goes to.

The watchdog (`Watchdog`): a stream that moves no byte for its timeout (a receiver
or a sender that hangs, a network that silently drops packets while ssh keep-alives
still pass), or a process of the pipeline that has not exited that long after its
stream ended, has its pipeline cut with a WARNING; the transfer fails and the
cycle's retries take over.

With wire compression the pipeline is `zfs send | compressor | ssh ...` here and
`decompressor | [mbuffer |] zfs receive` on the destination. Both pipes on this side
are spliced: the one into the compressor by a second thread (the stream's bytes,
which the size estimate and the progress are about), the one into ssh as before (the
bytes on the wire, which the bandwidth limit holds).

Several pipelines may run at once, each in its own thread (a service's `parallel`).
Signals reach only the main thread: a stop request there cuts the pipelines of the
other threads through their `Cancel`, which ends every process they started.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, TextIO

from zfsrepl import interrupts, zfserrors
from zfsrepl.capabilities import COMPRESSORS, buffer_argv, decompress_argv, format_buffer_size
from zfsrepl.errors import CommandError
from zfsrepl.host import Tools, first_line, stop_process
from zfsrepl.log import logger

_CHUNK = 1 << 20
_MIN_CHUNK = 64 << 10
DAEMON_PROGRESS_INTERVAL = 30.0
TTY_PROGRESS_INTERVAL = 0.5
# On a terminal, with several streams at once: a line per stream this often.
CONCURRENT_TTY_PROGRESS_INTERVAL = 10.0
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(frozen=True)
class TransferResult:
    seconds: float
    bytes: int | None  # on the wire (None: not known)
    stream_bytes: int | None = None  # before compression (None: not compressed)


class TransferFailed(CommandError):
    """A stream failed; `sent`: the bytes that went through before (None: none moved yet)."""

    def __init__(self, message: str, *, argv: list[str], stderr: str, returncode: int,
                 sent: int | None) -> None:
        super().__init__(message, argv=argv, stderr=stderr, returncode=returncode)
        self.sent = sent


class TransferNotResumable(TransferFailed, zfserrors.NotResumable):
    """A resumed stream failed because its token is no good (zfserrors.NotResumable)."""


def _grow_pipe(fd: int) -> None:
    # Bigger pipes mean fewer wake-ups per MiB; not fatal where refused.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _CHUNK)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_text(what: str, done: int, total: int | None, elapsed: float,
                  wire: int | None = None) -> str:
    """One progress line: bytes, rate and (with a size estimate) share and ETA; with
    `wire` (a compressed stream), the bytes that crossed the network so far."""
    rate = done / elapsed if elapsed > 0 else 0.0
    text = f"{what}: {human_bytes(done)}"
    if total:
        text += f" of ~{human_bytes(total)} ({min(100, 100 * done // total)}%)"
    text += f", {human_bytes(rate)}/s"
    if total and rate > 0 and done < total:
        text += f", ETA {_clock((total - done) / rate)}"
    if wire is not None:
        text += f", {human_bytes(wire)} on the wire"
    return text


class Progress:
    """Reports a stream's progress: redrawn on a terminal, a log line at intervals
    otherwise (a daemon).

    `concurrent`: other streams run at the same time. Then the line is never redrawn,
    and each stream logs a line of its own (naming its filesystem) at intervals,
    every CONCURRENT_TTY_PROGRESS_INTERVAL on a terminal: the other streams' log lines
    (started, finished, a warning) come from other threads at any moment and would
    land in the middle of a redrawn line, and one line cannot show several streams
    legibly in a terminal's width."""

    def __init__(self, what: str, total: int | None = None, *,
                 estimate: Callable[[], int | None] | None = None,
                 interactive: bool | None = None, stream: TextIO | None = None,
                 interval: float | None = None, concurrent: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.total = total
        # Asked for the size when the first line is due, not before: most streams of a
        # cycle are small incrementals that end before it, and asking costs a process.
        self._estimate = estimate
        self.stream = stream or sys.stderr
        tty = self.stream.isatty() if interactive is None else interactive
        self.interactive = tty and not concurrent
        if interval is None:
            if self.interactive:
                interval = TTY_PROGRESS_INTERVAL
            elif tty:
                interval = CONCURRENT_TTY_PROGRESS_INTERVAL
            else:
                interval = DAEMON_PROGRESS_INTERVAL
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last = self.started
        self._drawn = False

    def update(self, done: int, wire: int | None = None) -> None:
        now = self.clock()
        if now - self._last < self.interval:
            return
        self._last = now
        if self._estimate is not None:
            estimate, self._estimate = self._estimate, None
            self.total = estimate()
        text = progress_text(self.what, done, self.total, now - self.started, wire)
        if self.interactive:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._drawn = True
        else:
            logger.info("progress of %s", text)

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


class _Count:
    """A byte count one thread writes and another reads (for a progress line)."""

    def __init__(self) -> None:
        self.n = 0


class Stalled(Exception):
    """Nothing moved in a pipeline for its watchdog's timeout."""


class _Activity:
    """When bytes last moved anywhere in one pipeline (its loops share it), against the
    watchdog's timeout: a loop that waits while another one moves bytes is not stalled."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self.last = clock()

    def moved(self, until: float | None = None) -> None:
        """Bytes moved now, or the loop is busy by design (pacing) `until` then."""
        self.last = max(self.last, self.clock() if until is None else until)

    def left(self) -> float:
        """Seconds before the pipeline counts as stalled (<= 0: it does)."""
        return self.last + self.timeout - self.clock()


class _Splice:
    """Moves bytes from pipe to pipe in the kernel."""

    holding = False  # nothing waits in a buffer of ours

    def __call__(self, rfd: int, wfd: int, n: int) -> int:
        flags = os.SPLICE_F_NONBLOCK  # type: ignore[attr-defined,unused-ignore]
        return os.splice(rfd, wfd, n, flags=flags)  # type: ignore[attr-defined,unused-ignore]


class _Copy:
    """Moves bytes with read and write, through one buffer, where splice is missing."""

    def __init__(self) -> None:
        self._pending = memoryview(b"")

    @property
    def holding(self) -> bool:
        """Bytes read and not yet written: the next move writes, it does not read."""
        return bool(self._pending)

    def __call__(self, rfd: int, wfd: int, n: int) -> int:
        if not self._pending:
            data = os.read(rfd, n)
            if not data:
                return 0
            self._pending = memoryview(data)
        written = os.write(wfd, self._pending)
        self._pending = self._pending[written:]
        return written


def _await(fd: int, events: int, activity: _Activity | None, *,
           broken: int | None = None) -> bool:
    """Wait until `fd` is ready for `events` (or its other end closed); False if the pipe
    `broken` lost its reader meanwhile. Raise Stalled when nothing moved in the pipeline
    for the watchdog's timeout (`activity`; None: wait as long as it takes)."""
    poller = select.poll()
    poller.register(fd, events)
    if broken is not None:
        poller.register(broken, 0)  # errors and hang-ups are always reported
    while True:
        if activity is None:
            ready = dict(poller.poll())
        else:
            left = activity.left()
            if left <= 0:
                raise Stalled
            ready = dict(poller.poll(max(1, int(left * 1000) + 1)))
        if broken is not None and ready.get(broken):
            return False
        if ready.get(fd):
            return True


def _splice_all(src: IO[bytes], dst: IO[bytes], *, limit: int | None = None,
                progress: Progress | None = None,
                sleep: Callable[[float], None] = time.sleep,
                count: _Count | None = None,
                wire: _Count | None = None,
                activity: _Activity | None = None) -> int:
    """Move everything from pipe `src` to pipe `dst` (in the kernel where splice is
    there); return the byte count.

    `limit` (bytes per second): after each move, wait until the bytes moved so far
    are due; chunks are a tenth of a second's worth, so the rate stays even. `count`
    follows the total as it grows; `wire` is shown beside it in the progress.
    `activity`: the pipeline's watchdog; Stalled is raised when nothing moved in the
    pipeline for its timeout (pacing for the limit is not a stall)."""
    move: _Splice | _Copy = _Splice() if hasattr(os, "splice") else _Copy()
    rfd, wfd = src.fileno(), dst.fileno()
    _grow_pipe(rfd)
    _grow_pipe(wfd)
    # The waits are poll's, where the watchdog can see them run out.
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    chunk = _CHUNK if not limit else max(_MIN_CHUNK, min(_CHUNK, limit // 10))
    started = time.monotonic()
    total = 0
    while True:
        # input first (watching for the receiver going away meanwhile), then room for it
        if not move.holding and not _await(rfd, select.POLLIN, activity, broken=wfd):
            break  # the receiver is gone; its exit status tells why
        if not _await(wfd, select.POLLOUT, activity):
            break
        try:
            moved = move(rfd, wfd, chunk)
        except BrokenPipeError:
            break  # the receiver is gone; its exit status tells why
        except BlockingIOError:
            time.sleep(0.001)  # ready a moment ago, not now: wait again
            continue
        if moved == 0:
            break
        total += moved
        if count is not None:
            count.n = total
        if activity is not None:
            activity.moved()
        if limit:
            ahead = total / limit - (time.monotonic() - started)
            if ahead > 0:
                if activity is not None:
                    activity.moved(activity.clock() + ahead)
                sleep(ahead)
        if progress is not None:
            progress.update(total, None if wire is None else wire.n)
            if activity is not None:
                activity.moved()  # the first line may have asked for an estimate
    return total


class _Feeder(threading.Thread):
    """Splices the sender's output into the compressor, counting the stream's bytes
    and reporting the progress (of the stream, the bytes on the wire beside it); closes
    both pipes when done, so the compressor sees the end of the stream. A stall it sees
    (`activity`) cuts the pipeline at once (`on_stall`), before its pipes close: the
    compressor must not take the cut stream for a whole one and end it cleanly."""

    def __init__(self, src: IO[bytes], dst: IO[bytes], progress: Progress | None,
                 wire: _Count, activity: _Activity | None = None,
                 on_stall: Callable[[], None] | None = None) -> None:
        super().__init__(name="zfsrepl-feeder", daemon=True)
        self.src = src
        self.dst = dst
        self.progress = progress
        self.wire = wire
        self.activity = activity
        self.on_stall = on_stall
        self.count = _Count()
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            _splice_all(self.src, self.dst, progress=self.progress, count=self.count,
                        wire=self.wire, activity=self.activity)
        except Stalled:
            if self.on_stall is not None:
                self.on_stall()
        except OSError as exc:
            self.error = exc
        finally:
            self.dst.close()
            self.src.close()


@dataclass(frozen=True)
class Watchdog:
    """When a pipeline counts as stalled: no byte moved for `timeout` seconds, or one
    of its processes still runs `timeout` seconds after its stream ended. `sender` and
    `receiver` name the two ends in messages ("zfs receive on dst@host")."""

    timeout: float
    sender: str = "the sender"
    receiver: str = "the receiver"


class _Cut:
    """How a pipeline was cut by its watchdog: the first reason wins (two loops may
    see the same stall); every process is terminated at once, from whichever thread."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs = procs
        self.reason: str | None = None
        self._lock = threading.Lock()

    def __call__(self, reason: str, warning: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
        logger.warning("%s: cut the transfer", warning)
        for proc in list(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.terminate()


class TransferStopped(TransferFailed):
    """A stream cut (or not started) because the transfers were cancelled (a stop)."""


class Cancel:
    """Cuts the pipelines of transfers that run in other threads.

    A signal is handled in the main thread only: the exception it raises unwinds that
    thread's own pipeline (the `finally` of `pipe`), not those of other threads. They
    share a Cancel, with which `pipe` registers every process it starts; `cancel()`
    terminates them all, and every later `pipe` (or process start) with it is refused,
    so no new stream starts while a stop is under way. Each `pipe` then unwinds as on
    any failure, waiting for its processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> int:
        """Terminate every process registered and refuse new ones; how many were
        running."""
        with self._lock:
            self._cancelled = True
            running = [p for p in self._procs if p.poll() is None]
            for proc in running:
                with contextlib.suppress(OSError):
                    proc.terminate()
            return len(running)

    def check(self, what: str) -> None:
        """Raise TransferStopped if cancelled."""
        if self._cancelled:
            raise TransferStopped(f"{what}: not started: stopping", argv=[], stderr="",
                                  returncode=-1, sent=None)

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        """Register a process just started (terminated at once when already cancelled)."""
        with self._lock:
            self._procs.add(proc)
            if self._cancelled and proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.terminate()

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def running(self) -> int:
        """Processes registered and not yet waited for (for tests)."""
        with self._lock:
            return len(self._procs)


def _stderr_of(file: IO[bytes]) -> str:
    file.seek(0)
    return first_line(file.read().decode("utf-8", "replace"))


def pipe(sender: list[str], receiver: list[str], what: str, *,
         progress: Progress | None = None, limit: int | None = None,
         compressor: list[str] | None = None, cancel: Cancel | None = None,
         watchdog: Watchdog | None = None) -> TransferResult:
    """Run sender | [compressor |] receiver; raise CommandError naming `what` if any of
    them fails (with the receiver's own message first: zfs receive says best what went
    wrong).

    `progress` reports the bytes as they go, `limit` caps the rate on the wire (bytes
    per second). `cancel` (a pipeline in a thread other than the main one): its
    `cancel()` cuts this pipeline; the error raised is then a TransferStopped.
    `watchdog`: a stalled pipeline is cut (see `Watchdog`), with a WARNING, and the
    transfer fails; without one, it waits as long as it takes."""
    started = time.monotonic()
    if cancel is not None:
        cancel.check(what)
    procs: list[subprocess.Popen[bytes]] = []
    cut = _Cut(procs)
    activity = _Activity(watchdog.timeout) if watchdog is not None else None

    def start(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        # A stop signal between the fork and this record would leave the process
        # running unseen: it is held back until the process is recorded.
        with interrupts.shielded():
            proc = subprocess.Popen(argv, **kw)
            procs.append(proc)
            if cancel is not None:
                cancel.track(proc)
        return proc

    def stalled() -> None:
        assert watchdog is not None
        idle = f"no data moved for {watchdog.timeout:g} s"
        cut(idle, f"{idle} sending {what}")

    def finish(proc: subprocess.Popen[bytes], name: str) -> int:
        """Wait for `proc`, whose stream ended; with a watchdog, that long at most."""
        if watchdog is None:
            return proc.wait()
        try:
            return proc.wait(timeout=watchdog.timeout)
        except subprocess.TimeoutExpired:
            late = f"{name} did not exit {watchdog.timeout:g} s after its stream ended"
            cut(late, f"{late} ({what})")
            stop_process(proc)  # terminated, or killed if it is stopped
            return proc.wait()

    with tempfile.TemporaryFile() as send_err, tempfile.TemporaryFile() as recv_err, \
            tempfile.TemporaryFile() as comp_err:
        send: subprocess.Popen[bytes] | None = None
        comp: subprocess.Popen[bytes] | None = None
        recv: subprocess.Popen[bytes] | None = None
        feeder: _Feeder | None = None
        wire = _Count()
        count: int | None = None
        comp_rc = 0
        recv_rc = send_rc = -1
        try:
            send = start(sender, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=send_err)
            assert send.stdout is not None
            upstream = send.stdout  # what goes into ssh
            if compressor is not None:
                try:
                    comp = start(compressor, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=comp_err)
                except OSError as exc:
                    raise TransferFailed(f"{what} failed: cannot run {compressor[0]}: "
                                         f"{exc.strerror}", argv=compressor, stderr="",
                                         returncode=127, sent=None) from None
                assert comp.stdout is not None and comp.stdin is not None
                feeder = _Feeder(send.stdout, comp.stdin, progress, wire, activity, stalled)
                feeder.start()
                upstream = comp.stdout
            recv = start(receiver, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=recv_err)
            assert recv.stdin is not None
            try:
                count = _splice_all(upstream, recv.stdin, limit=limit,
                                    progress=None if feeder else progress, count=wire,
                                    activity=activity)
            except Stalled:
                stalled()
                count = wire.n
            finally:
                recv.stdin.close()
                upstream.close()
            if cut.reason is None:
                recv_rc = finish(recv, watchdog.receiver if watchdog else "")
                if recv_rc != 0:
                    # nobody reads any more
                    stop_process(send)
                    if comp is not None:
                        stop_process(comp)
                if comp is not None:
                    comp_rc = finish(comp, compressor[0] if compressor else "")
                send_rc = finish(send, watchdog.sender if watchdog else "")
        finally:
            # Interrupted (signal, exception, a stall): leave no part of the pipeline
            # running.
            # Every one started, even one whose start was cut; the sender first, while
            # its stream still flows: a zfs send run through sudo ends by the SIGTERM
            # sudo relays, and on zfs-fuse one whose readers are gone first may hang
            # where no signal of ours reaches it.
            for proc in procs:
                stop_process(proc)
            if feeder is not None:
                feeder.join()  # its pipes' other ends are gone: it is done
            if cancel is not None:
                for proc in procs:
                    cancel.forget(proc)
            if progress is not None:
                progress.finish()
        if cut.reason is not None:
            recv_rc = recv.returncode if recv else -1
            send_rc = send.returncode if send else -1
            comp_rc = comp.returncode if comp is not None else 0
        if feeder is not None and feeder.error is not None and not send_rc:
            # the stream did not reach the compressor whole: zfs receive must not be
            # believed if it took the cut stream for a whole one
            send_rc = -1
            send_err.write(f"feeding the compressor: {feeder.error}\n".encode())
        if cut.reason is not None or recv_rc != 0 or send_rc != 0 or comp_rc != 0:
            recv_msg = _stderr_of(recv_err)
            send_msg = _stderr_of(send_err)
            comp_msg = _stderr_of(comp_err)
            if cut.reason is not None:
                # what the processes said is what being cut made them say
                reason = cut.reason
            elif recv_rc != 0 and recv_msg:
                reason = recv_msg
            elif send_rc != 0 and send_msg:
                reason = send_msg
            elif comp_rc != 0 and comp_msg:
                reason = f"{compressor[0] if compressor else 'compressor'}: {comp_msg}"
            else:
                reason = f"exit codes: send {send_rc}, receive {recv_rc}"
                if compressor is not None:
                    reason += f", {compressor[0]} {comp_rc}"
            stderr = "\n".join(m for m in (send_msg, comp_msg, recv_msg) if m)
            error: type[TransferFailed] = TransferFailed
            if zfserrors.says(stderr, zfserrors.NotResumable):
                error = TransferNotResumable
            if cancel is not None and cancel.cancelled:
                # what the processes said is what being terminated made them say
                error, reason = TransferStopped, "cut: stopping"
            raise error(f"{what} failed: {reason}", argv=sender, stderr=stderr,
                        returncode=(recv_rc or send_rc or comp_rc or -1), sent=count)
    stream = feeder.count.n if feeder is not None else None
    return TransferResult(seconds=time.monotonic() - started, bytes=count, stream_bytes=stream)


# ---------------------------------------------------------------------------- the wire


@dataclass(frozen=True)
class Wire:
    """How streams cross the network: compressed with `compression` (None: not), into an
    mbuffer of `buffer` bytes on the destination (None: none). `agent`: the destination
    runs requests through the zfsrepl agent."""

    compression: str | None = None
    buffer: int | None = None
    agent: bool = False

    def for_stream(self, raw: bool) -> str | None:
        """The compression of one stream. A raw stream (an encrypted filesystem) is not
        compressed: its blocks are ciphertext, which does not shrink, so compressing it
        only costs CPU on both hosts. A `send -c` stream is: its blocks that ZFS
        compressed gain little, but those stored uncompressed (compression=off, or an
        older dataset) and the stream's own records still shrink, at little cost."""
        return None if raw else self.compression

    def helpers(self, raw: bool) -> list[list[str]]:
        """The programs the stream passes on the destination before zfs receive."""
        out = []
        compression = self.for_stream(raw)
        if compression:
            out.append(decompress_argv(compression))
        if self.buffer is not None:
            out.append(buffer_argv(self.buffer))
        return out

    def describe(self, raw: bool = False) -> str:
        """E.g. "zstd, buffer 16M" or "uncompressed (raw stream), no buffer"."""
        compression = self.for_stream(raw)
        if compression:
            text = compression
        elif raw and self.compression:
            text = "uncompressed (raw stream)"
        else:
            text = "uncompressed"
        buffer = f"buffer {format_buffer_size(self.buffer)}" if self.buffer else "no buffer"
        return f"{text}, {buffer}"


def choose_wire(compression: str, buffer: int | None, source: str, source_tools: Tools,
                destination: str, destination_tools: Tools
                ) -> tuple[Wire, list[tuple[int, str]]]:
    """The wire a definition's `wire_compression` and `buffer` give between two hosts
    (`source`, `destination`: their labels) with the tools they have; and what to log
    about it, as (level, message). A tool missing on a side is never a failure: the
    stream goes uncompressed (or unbuffered), with a WARNING naming the host and the
    tool; `auto` finding no compressor on both sides is only noted."""
    notes: list[tuple[int, str]] = []
    chosen: str | None = None
    sides = ((source, source_tools), (destination, destination_tools))
    if compression == "auto":
        chosen = next((t for t in COMPRESSORS
                       if t in source_tools.found and t in destination_tools.found), None)
        if chosen is None:
            have = "; ".join(f"{label} has {', '.join(t for t in COMPRESSORS if t in tools.found)}"
                             for label, tools in sides
                             if any(t in tools.found for t in COMPRESSORS))
            notes.append((logging.INFO, f"wire_compression auto: no compressor "
                                        f"({' or '.join(COMPRESSORS)}) on both {source} and "
                                        f"{destination}{f' ({have})' if have else ''}: "
                                        "streams go uncompressed"))
    elif compression != "none":
        missing = [label for label, tools in sides if compression not in tools.found]
        if missing:
            notes.append((logging.WARNING, f"wire_compression {compression}: {compression} "
                                           f"not found on {' nor on '.join(missing)}: streams "
                                           "go uncompressed"))
        else:
            chosen = compression
    if buffer is not None and "mbuffer" not in destination_tools.found:
        notes.append((logging.WARNING, f"buffer: mbuffer not found on {destination}: streams "
                                       "are received without a buffer"))
        buffer = None
    return Wire(chosen, buffer, destination_tools.agent), notes
