"""The `zfs send | transport | zfs receive` pipeline.

Stream data never passes through Python buffers. Where the platform has
`os.splice` (Linux, Python 3.10+) zfsrepl moves the stream between the two pipes
with splice, which hands kernel pages from one pipe to the other: that lets it
count the bytes (for metrics and progress) and hold the stream to a bandwidth
limit (by pausing between splices) at no copying cost. Elsewhere the OS connects
the sender's stdout directly to the receiver's stdin (no progress, no limit).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TextIO

from zfsrepl.errors import CommandError
from zfsrepl.host import first_line, stop_process
from zfsrepl.log import logger

_CHUNK = 1 << 20
_MIN_CHUNK = 64 << 10
DAEMON_PROGRESS_INTERVAL = 30.0
TTY_PROGRESS_INTERVAL = 0.5
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(frozen=True)
class TransferResult:
    seconds: float
    bytes: int | None  # None where the stream was not counted


class TransferFailed(CommandError):
    """A stream failed; `sent`: the bytes that went through before (None: not counted)."""

    def __init__(self, message: str, *, argv: list[str], stderr: str, returncode: int,
                 sent: int | None) -> None:
        super().__init__(message, argv=argv, stderr=stderr, returncode=returncode)
        self.sent = sent


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


def progress_text(what: str, done: int, total: int | None, elapsed: float) -> str:
    """One progress line: bytes, rate and (with a size estimate) share and ETA."""
    rate = done / elapsed if elapsed > 0 else 0.0
    text = f"{what}: {human_bytes(done)}"
    if total:
        text += f" of ~{human_bytes(total)} ({min(100, 100 * done // total)}%)"
    text += f", {human_bytes(rate)}/s"
    if total and rate > 0 and done < total:
        text += f", ETA {_clock((total - done) / rate)}"
    return text


class Progress:
    """Reports a stream's progress: redrawn on a terminal, a log line at intervals
    otherwise (a daemon)."""

    def __init__(self, what: str, total: int | None = None, *,
                 interactive: bool | None = None, stream: TextIO | None = None,
                 interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.total = total
        self.stream = stream or sys.stderr
        self.interactive = (self.stream.isatty() if interactive is None else interactive)
        self.interval = interval if interval is not None else (
            TTY_PROGRESS_INTERVAL if self.interactive else DAEMON_PROGRESS_INTERVAL)
        self.clock = clock
        self.started = clock()
        self._last = self.started
        self._drawn = False

    def update(self, done: int) -> None:
        now = self.clock()
        if now - self._last < self.interval:
            return
        self._last = now
        text = progress_text(self.what, done, self.total, now - self.started)
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


def _splice_all(src: IO[bytes], dst: IO[bytes], *, limit: int | None = None,
                progress: Progress | None = None,
                sleep: Callable[[float], None] = time.sleep) -> int:
    """Move everything from pipe `src` to pipe `dst` in the kernel; return the byte count.

    `limit` (bytes per second): after each splice, wait until the bytes moved so far
    are due; chunks are a tenth of a second's worth, so the rate stays even."""
    splice = os.splice  # type: ignore[attr-defined,unused-ignore]
    rfd, wfd = src.fileno(), dst.fileno()
    _grow_pipe(rfd)
    _grow_pipe(wfd)
    chunk = _CHUNK if not limit else max(_MIN_CHUNK, min(_CHUNK, limit // 10))
    started = time.monotonic()
    total = 0
    while True:
        try:
            moved = splice(rfd, wfd, chunk)
        except BrokenPipeError:
            break  # the receiver is gone; its exit status tells why
        if moved == 0:
            break
        total += moved
        if limit:
            ahead = total / limit - (time.monotonic() - started)
            if ahead > 0:
                sleep(ahead)
        if progress is not None:
            progress.update(total)
    return total


def pipe(sender: list[str], receiver: list[str], what: str, *,
         progress: Progress | None = None, limit: int | None = None) -> TransferResult:
    """Run sender | receiver; raise CommandError naming `what` if either fails.

    `progress` reports the bytes as they go, `limit` caps the rate (bytes per second);
    both need `os.splice` (without it the stream runs uncounted and unlimited)."""
    started = time.monotonic()
    counting = hasattr(os, "splice")
    with tempfile.TemporaryFile() as send_err, tempfile.TemporaryFile() as recv_err:
        send = subprocess.Popen(sender, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=send_err)
        recv: subprocess.Popen[bytes] | None = None
        count: int | None = None
        try:
            assert send.stdout is not None
            if counting:
                recv = subprocess.Popen(receiver, stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=recv_err)
                assert recv.stdin is not None
                try:
                    count = _splice_all(send.stdout, recv.stdin, limit=limit,
                                        progress=progress)
                finally:
                    recv.stdin.close()
                    send.stdout.close()
                    if progress is not None:
                        progress.finish()
            else:
                try:
                    recv = subprocess.Popen(receiver, stdin=send.stdout,
                                            stdout=subprocess.DEVNULL, stderr=recv_err)
                finally:
                    send.stdout.close()  # the receiver holds the only read end now
            recv_rc = recv.wait()
            if recv_rc != 0:
                stop_process(send)  # nobody reads any more
            send_rc = send.wait()
        finally:
            # Interrupted (signal, exception): leave no half of the pipeline running.
            stop_process(send)
            if recv is not None:
                stop_process(recv)
        if recv_rc != 0 or send_rc != 0:
            recv_err.seek(0)
            send_err.seek(0)
            recv_msg = first_line(recv_err.read().decode("utf-8", "replace"))
            send_msg = first_line(send_err.read().decode("utf-8", "replace"))
            if recv_rc != 0 and recv_msg:
                reason = recv_msg
            elif send_msg:
                reason = send_msg
            else:
                reason = f"exit codes: send {send_rc}, receive {recv_rc}"
            raise TransferFailed(f"{what} failed: {reason}", argv=sender,
                                 stderr=f"{send_msg}\n{recv_msg}",
                                 returncode=recv_rc or send_rc, sent=count)
    return TransferResult(seconds=time.monotonic() - started, bytes=count)
