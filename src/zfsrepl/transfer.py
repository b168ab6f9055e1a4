"""The `zfs send | transport | zfs receive` pipeline.

The OS connects the sender's stdout to the receiver's stdin: stream data never
passes through Python.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass

from zfsrepl.errors import CommandError
from zfsrepl.host import first_line, stop_process


@dataclass(frozen=True)
class TransferResult:
    seconds: float


def pipe(sender: list[str], receiver: list[str], what: str) -> TransferResult:
    """Run sender | receiver; raise CommandError naming `what` if either fails."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as send_err, tempfile.TemporaryFile() as recv_err:
        send = subprocess.Popen(sender, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=send_err)
        recv: subprocess.Popen[bytes] | None = None
        try:
            assert send.stdout is not None
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
    return TransferResult(seconds=time.monotonic() - started)
