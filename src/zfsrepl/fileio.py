"""Opening and writing the files zfsrepl keeps, without ever following a planted link.

zfsrepl may run as root over folders a service's user can write. Every file it writes
(state, locks, metrics, logs) is therefore opened relative to a descriptor of its
folder, with O_NOFOLLOW, and checked after opening: a folder must belong to the
running user or root and not be open to others' writes (unless sticky); a file must
be a regular file of the running user or root with no other hard link. Root thus
never truncates or appends to a file someone else points it at.

Writes replace the file atomically: a reader sees the old or the new content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path zfsrepl refuses to open; `strerror` says why and what to do."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(errno.EPERM, f"{path} {reason}")


def user_name(uid: int) -> str:
    """The login name of `uid`, or "uid N"."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def trusted_owner(uid: int, euid: int) -> bool:
    """Whether `uid` may own what user `euid` writes or runs: itself or root."""
    return uid in (euid, 0)


def _expected(euid: int) -> str:
    return "root" if euid == 0 else f"{user_name(euid)} (who runs zfsrepl) or root"


def folder_problem(st: os.stat_result, euid: int) -> str | None:
    """Why a folder with status `st` must not hold files written by user `euid`, or None."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if not trusted_owner(st.st_uid, euid):
        owner = user_name(st.st_uid)
        fix = f"run zfsrepl as {owner}" if euid == 0 else \
            f"run zfsrepl as {owner}, or have root give the folder to {user_name(euid)}"
        return f"is owned by {owner}, not by {_expected(euid)}: {fix}"
    mode = stat.S_IMODE(st.st_mode)
    # In a sticky folder others cannot replace our entries; elsewhere they could.
    if mode & 0o022 and not mode & stat.S_ISVTX:
        return (f"is writable by others (mode {mode:04o}): chmod go-w it, so that nobody "
                "else can put a link where zfsrepl writes")
    return None


def file_problem(st: os.stat_result, euid: int) -> str | None:
    """Why an opened file with status `st` must not be written by user `euid`, or None."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if not trusted_owner(st.st_uid, euid):
        return f"is owned by {user_name(st.st_uid)}, not by {_expected(euid)}"
    if st.st_nlink > 1:
        # A hard link to a file of root's would pass the owner check.
        return "has another hard link: remove it, zfsrepl creates the file again"
    return None


def _open(name: str, flags: int, mode: int, dir_fd: int | None, shown: Path | str) -> int:
    try:
        return os.open(name, flags | _NOFOLLOW, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(shown, "is a symbolic link; zfsrepl never follows one where "
                             "it writes: remove it") from None
        raise


@contextlib.contextmanager
def folder(path: Path) -> Iterator[int]:
    """A descriptor of the folder `path`, refused (UnsafePath) unless it is safe to write
    in as this user (see `folder_problem`)."""
    fd = _open(str(path), os.O_RDONLY | os.O_DIRECTORY, 0, None, path)
    try:
        problem = folder_problem(os.fstat(fd), os.geteuid())
        if problem:
            raise UnsafePath(path, problem)
        yield fd
    finally:
        os.close(fd)


def check_folder(path: Path) -> None:
    """Raise UnsafePath if zfsrepl must not write in the folder `path`."""
    with folder(path):
        pass


def open_in(dir_fd: int, name: str, flags: int, mode: int = 0o644,
            shown: Path | str | None = None) -> int:
    """Open (or create) the file `name` in the folder `dir_fd` without following a link;
    refused (UnsafePath) unless it is a regular file of this user or root with one link.
    Give no O_TRUNC: truncate after this check."""
    assert not flags & os.O_TRUNC, "truncating before the check would defeat it"
    shown = name if shown is None else shown
    fd = _open(name, flags | os.O_NONBLOCK, mode, dir_fd, shown)
    try:
        problem = file_problem(os.fstat(fd), os.geteuid())
        if problem:
            raise UnsafePath(shown, problem)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: Path, flags: int, mode: int = 0o644) -> int:
    """`open_in` the folder of `path`, after checking that folder."""
    with folder(path.parent) as dir_fd:
        return open_in(dir_fd, path.name, flags, mode, path)


def read_file(path: Path) -> bytes:
    """The content of a regular file, without following a link or waiting on a FIFO.

    Reading is allowed where writing is not (`zfsrepl status` as root reads a user's
    state), so neither owner is checked."""
    fd = _open(str(path), os.O_RDONLY | os.O_NONBLOCK, 0, None, path)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(path, "is not a regular file")
        return f.read()


def write_atomically(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` by `data` (text is written as UTF-8) with permission `mode`.

    The content goes to a new temporary file beside `path`, is synced, and is renamed
    over it: a crash or a concurrent reader never finds a half-written file, and a
    link at `path` is replaced, never written through.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with folder(path.parent) as dir_fd:
        tmp = f".{path.name}.{secrets.token_hex(4)}.tmp"
        fd = _open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd, path.parent / tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
