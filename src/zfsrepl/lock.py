"""Advisory file locks that say who holds them.

The kernel releases a lock when its holder dies, so a crashed process never
leaves a service locked. The holder writes its PID and role into the file and
empties it on release: someone who finds the lock taken can say which process
has the service.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from zfsrepl.errors import UsageError, ZfsreplError
from zfsrepl.fileio import UnsafePath, open_file

# How long a lock seen taken may be a mere `probe` (see FileLock.acquire).
PROBE_GRACE = 1.0


@dataclass(frozen=True)
class Holder:
    pid: int | None  # None: the lock is taken but its holder has not written itself yet
    role: str = ""
    since: float | None = None

    def describe(self) -> str:
        if self.pid is None:
            return "another process"
        role = f" ({self.role})" if self.role else ""
        return f"process {self.pid}{role}"


class Busy(ZfsreplError):
    """The lock is held by someone else."""

    def __init__(self, message: str, holder: Holder) -> None:
        super().__init__(message)
        self.holder = holder


def _parse(text: str) -> Holder:
    parts = text.split()
    if not parts or not parts[0].isdigit():
        return Holder(None)
    role = parts[1] if len(parts) > 1 else ""
    try:
        since = float(parts[2]) if len(parts) > 2 else None
    except ValueError:
        since = None
    return Holder(int(parts[0]), role, since)


def probe(path: Path) -> Holder | None:
    """Who holds the lock at `path`, or None when nobody does.

    Takes a shared lock for an instant: a holder-to-be that tries at that very
    moment retries (see `FileLock.acquire`)."""
    try:
        # A link or a FIFO planted in place of the lock is nobody: never follow or wait.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # no such lock yet, or not ours to read: nobody we can name
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse(os.pread(fd, 200, 0).decode("ascii", "replace"))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class FileLock:
    """An exclusive lock on `path`, held by this process in `role` (e.g. "run")."""

    def __init__(self, path: Path, role: str) -> None:
        self.path = path
        self.role = role
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        assert self._fd is None, "lock already held"
        try:
            fd = open_file(self.path, os.O_RDWR | os.O_CREAT)
        except UnsafePath as exc:
            raise UsageError(f"refusing the lock: {exc.strerror}") from None
        except OSError as exc:
            raise UsageError(f"cannot open the lock {self.path}: {exc.strerror}; the state "
                             "folder must be writable (--state-dir DIR or ZFSREPL_STATE_DIR "
                             "chooses another)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.role} {time.time():.0f}\n".encode(), 0)
        self._fd = fd
        return True

    def acquire(self, *, wait: bool, sleep: Callable[[float], None] = time.sleep,
                on_wait: Callable[[Holder], None] | None = None, what: str = "",
                poll: float = 0.2, grace: float | None = None) -> None:
        """Take the lock; if another process has it, wait for it (`wait`) or raise Busy.

        `sleep` is how to pass the time between tries: the service loop passes one
        that a stop request interrupts. A holder seen only during the first `grace`
        seconds may be a `probe`, which lets go at once, so it is not reported.
        """
        grace = PROBE_GRACE if grace is None else grace
        started = time.monotonic()
        told = False
        while not self.try_acquire():
            holder = probe(self.path) or Holder(None)
            settling = time.monotonic() - started < grace
            if not wait and not settling:
                raise Busy(f"{what or self.path} is held by {holder.describe()}", holder)
            if wait and not told and not settling and on_wait is not None:
                on_wait(holder)
                told = True
            sleep(poll)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
