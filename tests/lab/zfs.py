"""ZFS helpers for tests that work on every backend (they only use LabHost)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

from .base import DEFAULT_TIMEOUT, Lab, LabCommandError, LabHost
from .content import tree_checksums

T = TypeVar("T")

# Temporary clones made by snapshot_checksums, at the top of the snapshot's pool.
CHECK_CLONE_PREFIX = "zr-check-"


def _read_permissions(path: Path) -> dict[str, frozenset[str]]:
    roles: dict[str, frozenset[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            role, _, perms = line.partition(":")
            roles[role.strip()] = frozenset(p.strip() for p in perms.split(",") if p.strip())
    return roles


# The `zfs allow` rights a replication user needs on OpenZFS, by role ("source",
# "destination"). The one record of them: tests/lab/openzfs/guest/permissions, which the
# OpenZFS lab grants (both roles to both users on both pools).
DELEGATED_PERMISSIONS = _read_permissions(
    Path(__file__).resolve().parent / "openzfs" / "guest" / "permissions"
)


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


def destroy(host: LabHost, dataset: str, *flags: str,
            timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
    """``zfs destroy FLAGS DATASET`` as root, retrying while it is busy."""
    retry_busy(lambda: host.zfs("destroy", *flags, dataset, timeout=timeout))


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


def wait_for(what: str, condition: Callable[[], T], timeout: float = 120.0) -> T:
    """Poll until ``condition()`` gives something true, and return it; the timeout is a
    bound against hanging, not a timing check."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def snapshot_prefix(lab: Lab) -> str:
    """What the names of a service's snapshots start with in this lab (src -> dst)."""
    return f"zfsrepl-{lab.src.user}-{lab.dst.user}-{lab.dst.address}-"


def own_snapshots(lab: Lab, host: LabHost, fs: str) -> list[str]:
    """A service's snapshots of ``fs`` (the part after '@'), oldest first; [] if no fs."""
    proc = host.root(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg",
                      "-d", "1", fs], check=False)
    names = [ln.split("@", 1)[1] for ln in proc.stdout.decode().splitlines() if "@" in ln]
    return [n for n in names if n.startswith(snapshot_prefix(lab))]


# Releases every user hold on the snapshots below "$1".
# only the snapshots that carry holds (userrefs) are asked for them: a benchmark's
# filesystem of 10,000 snapshots would otherwise start 10,000 `zfs holds`
_RELEASE_HOLDS = """
zfs list -H -t snapshot -o name,userrefs -r "$1" |
while IFS='	' read -r snap refs; do [ "$refs" = 0 ] || zfs holds -H "$snap"; done |
while IFS='	' read -r snap tag _; do zfs release "$tag" "$snap"; done
"""


def release_holds(lab: Lab, host: LabHost, fs: str,
                  timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
    """Release whatever holds a tool left on the snapshots of ``fs`` and below, so that
    they can be destroyed (OpenZFS; zfs-fuse has hold and release but cannot list them)."""
    if "openzfs" in lab.features:
        host.root(["sh", "-c", _RELEASE_HOLDS, "sh", fs], timeout=timeout)
