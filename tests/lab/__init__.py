"""The zfsrepl test lab: two ZFS hosts joined by ssh, for end-to-end tests.

tests/ is a source root (see pyproject.toml), so this package is imported as ``lab``:

    from lab import Lab, snapshot_checksums, tree_checksums, write_tree

Tests get a :class:`Lab` from the ``lab`` fixture (tests/e2e/conftest.py). The backend
is chosen by ``$ZFSREPL_LAB_BACKEND``: ``fuse`` (the default; zfs-fuse in network
namespaces, see tests/lab/fuse/setup.sh) or ``openzfs`` (a qemu VM with OpenZFS 2.3,
see tests/lab/openzfs/setup.sh).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from .area import Area, claim_area, release_area
from .base import Lab, LabCommandError, LabHost
from .content import tree_checksums, write_tree
from .service import ZfsreplCli, service_definition, toml_dumps
from .zfs import (
    CHECK_CLONE_PREFIX,
    DELEGATED_PERMISSIONS,
    destroy,
    exists,
    own_snapshots,
    release_holds,
    retry_busy,
    snapshot_checksums,
    snapshot_prefix,
    wait_for,
)

BACKENDS = ("fuse", "openzfs")
# The sessions this process has open (at most one lab: see lab_session).
_open_sessions: list[Lab] = []

__all__ = [
    "BACKENDS",
    "CHECK_CLONE_PREFIX",
    "DELEGATED_PERMISSIONS",
    "Area",
    "Lab",
    "LabCommandError",
    "LabHost",
    "ZfsreplCli",
    "claim_area",
    "destroy",
    "exists",
    "lab_session",
    "own_snapshots",
    "release_area",
    "release_holds",
    "retry_busy",
    "service_definition",
    "snapshot_checksums",
    "snapshot_prefix",
    "toml_dumps",
    "tree_checksums",
    "wait_for",
    "write_tree",
]


@contextlib.contextmanager
def lab_session(*, keep: bool = False) -> Iterator[Lab]:
    """The lab of ``$ZFSREPL_LAB_BACKEND`` (default ``fuse``) for one test session.

    It is set up if needed and, if this session set it up, torn down at the end
    unless ``keep``.

    A session opened while this process has one open already (two test folders with
    their own ``lab`` fixtures in one pytest run) is that same session: the lab's lock
    is per open file, and a second one would wait for the first forever.
    """
    backend = os.environ.get("ZFSREPL_LAB_BACKEND") or "fuse"
    if _open_sessions:
        yield _open_sessions[-1]
        return
    lab: Lab
    if backend == "fuse":
        from .fuse import fuse_lab_session

        with fuse_lab_session(keep=keep) as lab:
            _open_sessions.append(lab)
            try:
                yield lab
            finally:
                _open_sessions.remove(lab)
    elif backend == "openzfs":
        from .openzfs import openzfs_lab_session

        with openzfs_lab_session(keep=keep) as lab:
            _open_sessions.append(lab)
            try:
                yield lab
            finally:
                _open_sessions.remove(lab)
    else:
        raise ValueError(f"unknown lab backend {backend!r} (known: {', '.join(BACKENDS)})")
