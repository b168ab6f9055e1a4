"""The service's line in the destination user's `authorized_keys`.

The line pins the key to the agent: `restrict` (no pty, no forwarding of any kind)
and a forced command. It ends with a marker comment naming the service, by which
setup finds its own line again: re-running replaces it in place instead of adding
a second one, and `lockoutkey` removes it. Every other line of the file is kept
byte for byte.
"""

from __future__ import annotations

import fcntl
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from zfsrepl.errors import UsageError
from zfsrepl.fileio import UnsafePath, open_file, write_atomically

MARKER_PREFIX = "zfsrepl:"


def service_marker(service: str, source_user: str, source_host: str) -> str:
    """The comment that identifies a service's key line: one per service and source."""
    return f"{MARKER_PREFIX}{service}:{source_user}@{source_host}"


def forced_command(argv: Sequence[str]) -> str:
    """The argv as one shell command line, safe inside command="..."."""
    text = " ".join(shlex.quote(a) for a in argv)
    # sshd ends the option at an unescaped '"' and treats '\' specially: shlex.quote
    # never yields either for the names the definition allows; make sure of it.
    if '"' in text or "\\" in text or "\n" in text:
        raise UsageError(f"cannot put {text!r} into a forced command")
    return text


def key_line(public_key: str, command_argv: Sequence[str], marker: str) -> str:
    """`restrict,command="..." TYPE BLOB MARKER` for a public key `TYPE BLOB [comment]`."""
    words = public_key.split()
    if len(words) < 2 or not words[0].startswith("ssh-"):
        raise UsageError(f"not an OpenSSH public key: {public_key[:60]!r}")
    return f'restrict,command="{forced_command(command_argv)}" {words[0]} {words[1]} {marker}'


def _marker_of(line: bytes) -> bytes | None:
    words = line.split()
    return words[-1] if words and not line.lstrip().startswith(b"#") else None


def with_line(content: bytes, line: str, marker: str) -> bytes | None:
    """`content` with exactly one line for `marker`, equal to `line`; None if already so.

    The service's line takes the place of its first old line (or goes at the end);
    further old lines of the same service go; everything else stays as it was.
    """
    new = line.encode("utf-8")
    mark = marker.encode("utf-8")
    lines = content.splitlines(keepends=True)
    ours = [i for i, ln in enumerate(lines) if _marker_of(ln) == mark]
    if len(ours) == 1 and lines[ours[0]].rstrip(b"\r\n") == new:
        return None
    kept: list[bytes] = []
    placed = False
    for i, ln in enumerate(lines):
        if i in ours:
            if not placed:
                kept.append(new + b"\n")
                placed = True
            continue
        kept.append(ln)
    if not placed:
        if kept and not kept[-1].endswith(b"\n"):
            kept[-1] += b"\n"
        kept.append(new + b"\n")
    return b"".join(kept)


def without_marker(content: bytes, marker: str) -> bytes | None:
    """`content` without the lines of `marker`; None if it has none."""
    mark = marker.encode("utf-8")
    lines = content.splitlines(keepends=True)
    kept = [ln for ln in lines if _marker_of(ln) != mark]
    return None if len(kept) == len(lines) else b"".join(kept)


def default_path() -> Path:
    return Path.home() / ".ssh" / "authorized_keys"


def update(path: Path, change: Callable[[bytes], bytes | None]) -> bool:
    """Apply `change` to the file under a lock, replacing it atomically; True if changed.

    sshd never sees a half-written file, and two setups at once do not lose each
    other's lines (both take the lock beside the file).
    """
    path = path.resolve() if path.is_symlink() else path
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    try:
        # Like every file zfsrepl writes: no link followed, only in a folder of this user
        # or root (root editing a user's file would write where that user points).
        lock = open_file(folder / ".zfsrepl-authorized_keys.lock",
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                old = path.read_bytes()
                mode = path.stat().st_mode & 0o7777
            except FileNotFoundError:
                old, mode = b"", 0o600
            new = change(old)
            if new is None:
                return False
            write_atomically(path, new, mode)
            return True
        finally:
            os.close(lock)
    except UnsafePath as exc:
        raise UsageError(f"refusing to change {path}: {exc.strerror}") from None
