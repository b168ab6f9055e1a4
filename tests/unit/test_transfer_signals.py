"""A stop signal that arrives while a pipeline's process is being started: the
unwinding must still see, and end, that process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from zfsrepl import interrupts, transfer

from .processes import wait_gone


@pytest.mark.parametrize("nth", [1, 2])
def test_sigterm_right_after_a_fork_leaves_no_process_behind(
        monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    real = subprocess.Popen
    started: list[int] = []

    def popen_then_sigterm(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
        proc = real(*args, **kw)
        started.append(proc.pid)
        if len(started) == nth:
            # the handler runs at the next bytecode: before the caller records `proc`
            os.kill(os.getpid(), signal.SIGTERM)
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen_then_sigterm)
    with pytest.raises(interrupts.Terminated), interrupts.sigterm_unwinds():
        transfer.pipe(["sleep", "600"], ["sleep", "600"], "a test stream")
    monkeypatch.undo()
    try:
        assert len(started) == nth
        # stop_process has ended them (SIGTERM) already; the wait is a bound
        assert all(wait_gone(pid, 30) for pid in started), started
    finally:
        for pid in started:  # a failed run leaves nothing behind either
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_stop_inside_a_shielded_block_is_raised_as_it_ends() -> None:
    steps: list[str] = []
    with pytest.raises(interrupts.Terminated), interrupts.sigterm_unwinds():
        with interrupts.shielded():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here and must not raise yet
            steps.append("recorded")
        steps.append("after")  # never reached
    assert steps == ["recorded"]
