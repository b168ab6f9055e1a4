"""Test data: deterministic file trees, and checksums to compare trees with."""

from __future__ import annotations

import hashlib
import os
import random
import stat
from pathlib import Path

# Written by every write_tree call whatever the seed, so that a second call with another
# seed changes the contents of the same names. Covers what a replica must keep: a name
# with a space, nested directories, an empty file, an executable, a symlink.
_FIXED_FILES = ("name with space.txt", "sub/nested.bin", "sub/deeper/nested.bin", "sub/empty")
_EXECUTABLE = "sub/run.sh"
_SYMLINK = ("link-to-first", "file-00.bin")


def write_tree(path: Path, seed: int, *, n_files: int = 5, size: int = 32 * 1024) -> list[str]:
    """Write a pseudo-random tree under ``path``, the same for the same arguments.

    ``n_files`` top-level files ``file-NN.bin`` of up to ``size`` bytes, plus the fixed
    names above. Existing files of the same names are overwritten. Returns the relative
    paths written, sorted.
    """
    rng = random.Random(seed)
    names = [f"file-{i:02d}.bin" for i in range(n_files)] + list(_FIXED_FILES)
    for name in names:
        n = 0 if name.endswith("empty") else rng.randint(size // 2, size)
        _write(path / name, rng.randbytes(n), 0o644)
    _write(path / _EXECUTABLE, f"#!/bin/sh\necho {seed}\n".encode(), 0o755)
    link = path / _SYMLINK[0]
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(_SYMLINK[1])
    return sorted([*names, _EXECUTABLE, _SYMLINK[0]])


def _write(file: Path, data: bytes, mode: int) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)
    file.chmod(mode)


def tree_checksums(path: Path) -> dict[str, str]:
    """Relative path -> what it is, for every entry below ``path`` (not ``path`` itself).

    Files: ``"file 0644 <sha256>"``, directories: ``"dir 0755"``, symlinks:
    ``"link -> <target>"``. Two trees are equal when their dicts are.
    """
    result: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        base = Path(dirpath)
        for name in [*dirnames, *sorted(filenames)]:
            full = base / name
            rel = full.relative_to(path).as_posix()
            st = full.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = f"link -> {os.readlink(full)}"
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = f"dir {mode:04o}"
            elif stat.S_ISREG(st.st_mode):
                result[rel] = f"file {mode:04o} {_sha256(full)}"
            else:
                result[rel] = f"other {stat.S_IFMT(st.st_mode):o}"
    return result


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
