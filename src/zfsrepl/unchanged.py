"""Pure decision of `skip_unchanged`: which filesystems a cycle leaves alone.

ZFS's `written` property of a filesystem counts the bytes written to it since its
newest snapshot. A filesystem is unchanged, and gets no snapshot, send or destroy
this cycle, only when all of these hold:

* `written` is 0 (known, not missing);
* its newest snapshot (of anyone) is one of this service's own: `written` counts from
  the newest snapshot, and an administrator's or another service's newer snapshot says
  nothing about what this service's destination holds;
* the destination holds that very snapshot (same GUID) and nothing newer, and no cut
  transfer waits to be resumed: the plan without a new snapshot is "up to date" at it.

Then the destination already holds everything the source holds, and a new snapshot
would only add an empty one on each side.
"""

from __future__ import annotations

from collections.abc import Mapping

from zfsrepl import plan
from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot, by_age


def is_unchanged(written: int | None, source: list[Snapshot],
                 destination: list[Snapshot] | None, naming: SnapshotNaming, *,
                 bookmarks: tuple[Snapshot, ...] = (),
                 resume_token: str | None = None) -> bool:
    """Whether one filesystem may skip this cycle (see the module's rules)."""
    if written != 0 or not source or destination is None:
        return False
    newest = by_age(source)[-1]
    if not naming.is_ours(newest.name):
        return False
    p = plan.plan_filesystem(source, destination, naming, bookmarks=bookmarks,
                             resume_token=resume_token)
    return isinstance(p, plan.UpToDate) and p.common == newest.name


def parse_written(text: str, wanted: list[str]) -> dict[str, int | None]:
    """`zfs get -H -p -o name,value written FS...` output: bytes per filesystem of
    `wanted` (None where ZFS printed no number, e.g. "-")."""
    out: dict[str, int | None] = dict.fromkeys(wanted)
    for line in text.splitlines():
        name, _, value = line.rpartition("\t")
        if name in out:
            out[name] = int(value) if value.isdigit() else None
    return out


def skipped(written: Mapping[str, int | None], source: Mapping[str, list[Snapshot] | None],
            destination: Mapping[str, list[Snapshot] | None],
            pairs: list[tuple[str, str]], naming: SnapshotNaming, *,
            bookmarks: Mapping[str, tuple[Snapshot, ...]] | None = None,
            tokens: Mapping[str, str | None] | None = None) -> frozenset[str]:
    """The source filesystems of `pairs` (source, destination) that skip this cycle."""
    return frozenset(
        src for src, dst in pairs
        if is_unchanged(written.get(src), source.get(src) or [], destination.get(dst), naming,
                        bookmarks=(bookmarks or {}).get(src, ()),
                        resume_token=(tokens or {}).get(dst)))
