"""Snapshot names: `zfsrepl-<srcuser>-<dstuser>-<dsthost>-<seq>`, as the original manual.

The prefix identifies the service that made a snapshot; the sequence number orders
them. Names are only labels: which snapshot is common to both sides is decided by
GUID (see plan.py).
"""

from __future__ import annotations

import re

from zfsrepl.record import record

PREFIX = "zfsrepl"

# Characters ZFS accepts in a snapshot name component (space included).
_SNAP_COMPONENT = re.compile(r"^[A-Za-z0-9_.:\- ]+$")


@record
class SnapshotNaming:
    """The snapshot name family of one service."""

    source_user: str
    destination_user: str
    destination_host: str

    @property
    def prefix(self) -> str:
        return f"{PREFIX}-{self.source_user}-{self.destination_user}-{self.destination_host}-"

    def format(self, seq: int) -> str:
        if seq < 1:
            raise ValueError(f"sequence must be positive, not {seq}")
        return f"{self.prefix}{seq}"

    def parse(self, snapname: str) -> int | None:
        """The sequence number if `snapname` (the part after '@') is ours, else None."""
        if not snapname.startswith(self.prefix):
            return None
        tail = snapname[len(self.prefix):]
        if not (tail.isascii() and tail.isdigit()) or tail.startswith("0"):
            return None
        return int(tail)

    def is_ours(self, snapname: str) -> bool:
        return self.parse(snapname) is not None


def valid_name_component(value: str) -> bool:
    """True if `value` can appear inside a ZFS snapshot name."""
    return bool(_SNAP_COMPONENT.fullmatch(value))


def split_snapshot(full: str) -> tuple[str, str]:
    """'pool/fs@snap' -> ('pool/fs', 'snap')."""
    fs, sep, snap = full.partition("@")
    if not sep or not fs or not snap:
        raise ValueError(f"not a snapshot name: {full!r}")
    return fs, snap
