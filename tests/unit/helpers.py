"""Builders of snapshot lists for the pure core's unit tests. The fakes of the things
that run commands (a simulated ZFS host, streams) are in fakes.py."""

from __future__ import annotations

from zfsrepl.chain import Receiver, Sender, compare
from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot

NAMING = SnapshotNaming("src", "dst", "desthost")
SRC_FS = "tank/src/fs"
DST_FS = "backup/dst/fs"


def own(seq: int, guid: int | None, txg: int, *, fs: str = SRC_FS,
        userrefs: int = 0) -> Snapshot:
    """A snapshot of this service (NAMING) with sequence `seq`."""
    return Snapshot(fs, NAMING.format(seq), guid, txg, creation=txg, userrefs=userrefs)


def other(name: str, guid: int | None, txg: int, *, fs: str = SRC_FS,
          userrefs: int = 0) -> Snapshot:
    """A snapshot not made by this service."""
    return Snapshot(fs, name, guid, txg, creation=txg, userrefs=userrefs)


def received(snaps: list[Snapshot], *, fs: str = DST_FS, first_txg: int = 1000,
             rename: dict[str, str] | None = None) -> list[Snapshot]:
    """The destination's copies of `snaps`: same GUIDs and names (unless renamed),
    its own transaction groups, in the same order."""
    rename = rename or {}
    return [Snapshot(fs, rename.get(s.name, s.name), s.guid, first_txg + i)
            for i, s in enumerate(snaps)]


def seq(n: int) -> str:
    return NAMING.format(n)


def common_snapshot(src: list[Snapshot], dst: list[Snapshot]) -> Snapshot | None:
    """The newest source snapshot the destination has (by GUID), bookmarks aside."""
    c = compare(Sender.of(src), Receiver.of(dst), NAMING).common
    return c.sending if c is not None else None
