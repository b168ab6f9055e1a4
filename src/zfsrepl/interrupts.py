"""SIGTERM in one-shot commands: unwind like Ctrl-C.

Apart from the service loop (service.py), which has its own signal handling, and
light to import: `runonce` installs it before it imports the rest of zfsrepl.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

# shielded(): how deep the main thread is in shielded blocks, and the stops held back
_shield_depth = 0
_held_back: list[Callable[[], None]] = []


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Hold back a stop signal's exception while the block runs (in the main thread,
    where Python runs signal handlers): e.g. from the fork of a process to the moment
    its pid is recorded, so that the unwinding sees, and ends, every process started.
    The exception is raised as the outermost block ends."""
    global _shield_depth
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers never run here; a worker's processes are cut by transfer.Cancel
        return
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
        if _shield_depth == 0 and _held_back:
            actions = list(_held_back)
            _held_back.clear()
            for action in actions:
                action()


def stop_now_or_after_shield(action: Callable[[], None]) -> None:
    """For signal handlers: run `action` (which raises the stop's exception) now, or,
    inside `shielded()`, as the block ends."""
    if _shield_depth:
        _held_back.append(action)
    else:
        action()


class Terminated(KeyboardInterrupt):
    """SIGTERM in a one-shot command (`runonce`): unwinds like Ctrl-C, so every
    `with` (the ssh ControlMaster, the lock, a transfer's two halves) is closed."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (once: a second SIGTERM does not
    cut the clean-up of the first). The previous handler is given back after."""

    def handle(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

        def stop() -> None:
            raise Terminated(signal.Signals(signum).name)

        stop_now_or_after_shield(stop)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
