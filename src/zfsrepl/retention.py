"""Pure decisions: which snapshots to destroy on one side, and why the rest stay.

Only this service's own snapshots are candidates. The newest `keep` of them stay,
and so do the snapshots a chain still needs (the newest common snapshot) and held
snapshots, whatever `keep` says. A snapshot whose only hold is this service's own
(`own_holds`: the base it held before the base moved on) is a candidate: the cycle
releases that hold before destroying it. Someone else's hold always wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot, by_age


@dataclass(frozen=True)
class RetentionDecision:
    destroy: tuple[str, ...]
    keep: tuple[tuple[str, str], ...]  # (snapshot name, why it stays)


def decide(snaps: list[Snapshot], naming: SnapshotNaming, keep: int,
           protected: Iterable[str] = (), own_holds: Iterable[str] = ()) -> RetentionDecision:
    if keep < 1:
        raise ValueError("keep must be at least 1")
    protected_names = set(protected)
    ours = set(own_holds)
    ordered = list(reversed(by_age(snaps)))  # newest first
    kept: list[tuple[str, str]] = []
    destroy: list[str] = []
    own_seen = 0
    for snap in ordered:
        if not naming.is_ours(snap.name):
            kept.append((snap.name, "not made by this service"))
            continue
        own_seen += 1
        if own_seen <= keep:
            kept.append((snap.name, f"one of the newest {keep}"))
        elif snap.name in protected_names:
            kept.append((snap.name, "newest snapshot common to both sides"))
        elif snap.userrefs - (1 if snap.name in ours else 0) > 0:
            kept.append((snap.name, "held"))
        else:
            destroy.append(snap.name)
    # Destroy oldest first: an interruption then leaves a contiguous newer chain.
    return RetentionDecision(destroy=tuple(reversed(destroy)), keep=tuple(kept))


def stale_bookmarks(bookmarks: list[Snapshot], naming: SnapshotNaming,
                    current: str) -> tuple[str, ...]:
    """This service's bookmarks other than `current` (the newest replicated snapshot's):
    one bookmark is enough to continue the chain. Others' bookmarks are never touched."""
    return tuple(b.name for b in by_age(bookmarks)
                 if naming.is_ours(b.name) and b.name != current)
