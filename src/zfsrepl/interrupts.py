"""SIGTERM in one-shot commands: unwind like Ctrl-C.

Apart from the service loop (service.py), which has its own signal handling, and
light to import: `runonce` installs it before it imports the rest of zfsrepl.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM in a one-shot command (`runonce`): unwinds like Ctrl-C, so every
    `with` (the ssh ControlMaster, the lock, a transfer's two halves) is closed."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (once: a second SIGTERM does not
    cut the clean-up of the first). The previous handler is given back after."""

    def handle(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
