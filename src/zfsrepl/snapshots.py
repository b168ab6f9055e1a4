"""The snapshot record shared by the pure core and the ZFS edge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of one filesystem, as ZFS reports it.

    `guid` is None for a snapshot that is about to be taken (planning a dry run,
    or the snapshot of this cycle before the next listing sees it).
    """

    filesystem: str
    name: str  # the part after '@'
    guid: int | None
    createtxg: int
    creation: int = 0  # seconds since the epoch
    userrefs: int = 0  # holds; a held snapshot is never destroyed

    @property
    def full_name(self) -> str:
        return f"{self.filesystem}@{self.name}"


def by_age(snaps: list[Snapshot] | tuple[Snapshot, ...]) -> list[Snapshot]:
    """Oldest first, by transaction group (creation times can tie or go backwards)."""
    return sorted(snaps, key=lambda s: (s.createtxg, s.creation))
