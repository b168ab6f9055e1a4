"""The `zfs send | transport | zfs receive` pipeline.

Stream data never passes through Python buffers. Where the platform has
`os.splice` (Linux, Python 3.10+) zfsrepl moves the stream between the two pipes
with splice, which hands kernel pages from one pipe to the other: that lets it
count the bytes (for metrics and progress) at no copying cost. Elsewhere the OS
connects the sender's stdout directly to the receiver's stdin.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import IO

from zfsrepl.errors import CommandError
from zfsrepl.host import first_line, stop_process

_CHUNK = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(frozen=True)
class TransferResult:
    seconds: float
    bytes: int | None  # None where the stream was not counted


def _grow_pipe(fd: int) -> None:
    # Bigger pipes mean fewer wake-ups per MiB; not fatal where refused.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _CHUNK)


def _splice_all(src: IO[bytes], dst: IO[bytes]) -> int:
    """Move everything from pipe `src` to pipe `dst` in the kernel; return the byte count."""
    splice = os.splice  # type: ignore[attr-defined,unused-ignore]
    rfd, wfd = src.fileno(), dst.fileno()
    _grow_pipe(rfd)
    _grow_pipe(wfd)
    total = 0
    while True:
        try:
            moved = splice(rfd, wfd, _CHUNK)
        except BrokenPipeError:
            break  # the receiver is gone; its exit status tells why
        if moved == 0:
            break
        total += moved
    return total


def pipe(sender: list[str], receiver: list[str], what: str) -> TransferResult:
    """Run sender | receiver; raise CommandError naming `what` if either fails."""
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
                    count = _splice_all(send.stdout, recv.stdin)
                finally:
                    recv.stdin.close()
                    send.stdout.close()
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
            raise CommandError(f"{what} failed: {reason}", argv=sender,
                               stderr=f"{send_msg}\n{recv_msg}", returncode=recv_rc or send_rc)
    return TransferResult(seconds=time.monotonic() - started, bytes=count)
