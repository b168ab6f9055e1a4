"""ZFS helpers for tests that work on every backend (they only use LabHost)."""

from __future__ import annotations

import secrets
import time
from typing import Callable, TypeVar

from .base import LabCommandError, LabHost
from .content import tree_checksums

T = TypeVar("T")

# Temporary clones made by snapshot_checksums, at the top of the snapshot's pool.
CHECK_CLONE_PREFIX = "zr-check-"


def retry_busy(action: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1) -> T:
    """Call ``action`` until it does not fail with "dataset/pool is busy".

    zfs-fuse often reports a mounted filesystem busy for a moment (on destroy, rename,
    or while another process still has a copy of the mount); it passes on retry.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except LabCommandError as e:
            if "is busy" not in e.text or time.monotonic() > deadline:
                raise
        time.sleep(interval)


def exists(host: LabHost, dataset: str) -> bool:
    """Whether the filesystem or snapshot ``dataset`` exists on ``host``."""
    return host.root(["zfs", "list", "-H", "-o", "name", dataset], check=False).returncode == 0


def destroy(host: LabHost, dataset: str, *flags: str) -> None:
    """``zfs destroy FLAGS DATASET`` as root, retrying while it is busy."""
    retry_busy(lambda: host.zfs("destroy", *flags, dataset))


def snapshot_checksums(host: LabHost, snapshot: str) -> dict[str, str]:
    """:func:`tree_checksums` of the contents of ``snapshot`` (``pool/fs@name``).

    zfs-fuse has no ``.zfs/snapshot`` directory, so the snapshot is cloned to a
    temporary filesystem in the same pool, read, and the clone destroyed. This also
    reads replicas received with ``-u`` without ever mounting (and so modifying) them.
    """
    fs, at, _ = snapshot.partition("@")
    if not at:
        raise ValueError(f"not a snapshot name: {snapshot!r}")
    clone = f"{fs.split('/')[0]}/{CHECK_CLONE_PREFIX}{secrets.token_hex(4)}"
    host.zfs("clone", snapshot, clone)
    try:
        return tree_checksums(host.mountpoint(clone))
    finally:
        destroy(host, clone)
