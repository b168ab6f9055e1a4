"""Writing setup's files: atomically, with their mode, and not at all when unchanged
(running setup again must change nothing)."""

from __future__ import annotations

import os
from pathlib import Path

from zfsrepl.fileio import write_atomically


def write_if_changed(path: Path, content: str, mode: int) -> bool:
    """Make `path` hold `content` with `mode`; True if anything had to change."""
    data = content.encode("utf-8")
    try:
        same = path.read_bytes() == data
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        same = False
    if same:
        if (path.stat().st_mode & 0o7777) == mode:
            return False
        os.chmod(path, mode)
        return True
    write_atomically(path, data, mode)
    return True
