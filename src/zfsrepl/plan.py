"""Pure decisions: what to send for one filesystem.

Given both sides' snapshot lists, decide between a full send, an incremental
send, nothing, or a named conflict. Matching is by GUID: the incremental base is
the newest source snapshot whose GUID exists on the destination, or, where that
snapshot is gone from the source, a bookmark of it (same GUID). Only this
service's own snapshots are sent, so another service's or an administrator's
snapshots never leak into this service's destination. A destination that holds the
token of a cut resumable receive continues that stream first (`Resume`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot, by_age


@dataclass(frozen=True)
class Send:
    """One `zfs send` stream: full when `base` is None, else `-I`/`-i` from base
    (`-i FS#base` when `bookmark`); with `token`, the rest of a cut stream (`send -t`)."""

    target: str
    base: str | None = None
    intermediates: bool = False  # -I (base..target with all between) instead of -i
    bookmark: bool = False  # base names a bookmark (always -i)
    token: str | None = None  # receive_resume_token: continue a cut stream

    def describe(self) -> str:
        if self.token is not None:
            return "resumed send of a cut stream"
        if self.base is None:
            return f"full send of @{self.target}"
        if self.bookmark:
            return f"incremental -i #{self.base} -> @{self.target}"
        flag = "-I" if self.intermediates else "-i"
        return f"incremental {flag} @{self.base} -> @{self.target}"


@dataclass(frozen=True)
class Full:
    """The destination filesystem does not exist: send the target whole."""

    send: Send

    @property
    def sends(self) -> tuple[Send, ...]:
        return (self.send,)


@dataclass(frozen=True)
class Resume:
    """The destination holds the token of a cut resumable receive: send the rest of
    that stream (`send -t token`) before deciding anything else."""

    token: str

    @property
    def sends(self) -> tuple[Send, ...]:
        return (Send(target="", token=self.token),)


@dataclass(frozen=True)
class Incremental:
    """Send what the destination lacks, starting at the common snapshot `base`."""

    base: str
    sends: tuple[Send, ...]


@dataclass(frozen=True)
class UpToDate:
    common: str
    sends: tuple[Send, ...] = ()


@dataclass(frozen=True)
class NoCommonSnapshot:
    """The destination exists but shares no snapshot (by GUID) with the source."""

    destination_snapshots: int
    sends: tuple[Send, ...] = ()

    def explain(self, source: str, destination: str) -> str:
        if self.destination_snapshots == 0:
            what = "exists but has no snapshots"
        else:
            what = f"has {self.destination_snapshots} snapshot(s), none of them on the source"
        return (f"no common snapshot between {source} and {destination}: the destination {what}"
                " (compared by GUID). Run 'zfsrepl doctor' to see both chains; to start over,"
                " rename or destroy the destination so the next cycle sends a full stream")


@dataclass(frozen=True)
class Diverged:
    """The destination holds snapshots newer than the common one (manual 7.2)."""

    common: str
    extra_on_destination: tuple[str, ...]
    sends: tuple[Send, ...] = ()

    def explain(self, source: str, destination: str) -> str:
        extra = ", ".join("@" + n for n in self.extra_on_destination)
        return (f"{destination} has snapshots newer than the last one it shares with {source}"
                f" (@{self.common}): {extra}. Replicating would destroy them; run 'zfsrepl"
                " doctor' to compare both chains and repair")


@dataclass(frozen=True)
class NothingToSend:
    """The source has none of this service's snapshots yet (only in dry runs)."""

    sends: tuple[Send, ...] = ()


Plan = Union[Full, Resume, Incremental, UpToDate, NoCommonSnapshot, Diverged, NothingToSend]


def newest_common(source: list[Snapshot], destination: list[Snapshot]) -> Snapshot | None:
    """The newest source snapshot whose GUID exists on the destination."""
    dst_guids = {s.guid for s in destination if s.guid is not None}
    for snap in reversed(by_age(source)):
        if snap.guid is not None and snap.guid in dst_guids:
            return snap
    return None


def common_bookmark(bookmarks: list[Snapshot] | tuple[Snapshot, ...],
                    destination: list[Snapshot], newer_than: int = -1) -> Snapshot | None:
    """The newest source bookmark whose GUID exists on the destination and that is
    newer (createtxg) than `newer_than` (the newest common snapshot's)."""
    dst_guids = {s.guid for s in destination if s.guid is not None}
    for mark in reversed(by_age(list(bookmarks))):
        if mark.guid is not None and mark.guid in dst_guids and mark.createtxg > newer_than:
            return mark
    return None


def plan_filesystem(source: list[Snapshot], destination: list[Snapshot] | None,
                    naming: SnapshotNaming, *, bookmarks: tuple[Snapshot, ...] = (),
                    resume_token: str | None = None) -> Plan:
    """Decide how to bring `destination` (None: does not exist) up to the newest own
    snapshot of `source`. `bookmarks`: the source filesystem's bookmarks (incremental
    bases where their snapshot is gone); `resume_token`: the destination's
    receive_resume_token."""
    if resume_token and destination is not None:
        return Resume(resume_token)
    src = by_age(source)
    own = [s for s in src if naming.is_ours(s.name)]
    if not own:
        return NothingToSend()
    target = own[-1]
    if destination is None:
        return Full(Send(target=target.name))

    common = newest_common(src, destination)
    mark = common_bookmark(bookmarks, destination,
                           common.createtxg if common is not None else -1)
    if mark is not None:
        return _from_bookmark(mark, src, own, destination)
    if common is None:
        return NoCommonSnapshot(destination_snapshots=len(destination))

    dst_common = next(s for s in destination if s.guid == common.guid)
    extra = [s.name for s in by_age(destination) if s.createtxg > dst_common.createtxg]
    if extra:
        return Diverged(common=common.name, extra_on_destination=tuple(extra))

    pending = [s for s in own if s.createtxg > common.createtxg]
    if not pending:
        return UpToDate(common=common.name)

    between = [s for s in src if common.createtxg < s.createtxg < target.createtxg]
    if all(naming.is_ours(s.name) for s in between):
        # One stream carries every pending snapshot.
        sends: tuple[Send, ...] = (
            Send(target=target.name, base=common.name, intermediates=bool(between)),
        )
    else:
        # Foreign snapshots lie between: step from own snapshot to own snapshot.
        chain = [common, *pending]
        sends = tuple(Send(target=b.name, base=a.name) for a, b in zip(chain, chain[1:]))
    return Incremental(base=common.name, sends=sends)


def _from_bookmark(mark: Snapshot, src: list[Snapshot], own: list[Snapshot],
                   destination: list[Snapshot]) -> Plan:
    """The chain continues from a bookmark: its snapshot is gone from the source, the
    destination still has it (same GUID). `-i #mark` to the oldest pending own snapshot,
    then on from there as usual."""
    dst_common = next(s for s in destination if s.guid == mark.guid)
    extra = [s.name for s in by_age(destination) if s.createtxg > dst_common.createtxg]
    if extra:
        return Diverged(common="#" + mark.name, extra_on_destination=tuple(extra))
    pending = [s for s in own if s.createtxg > mark.createtxg]
    if not pending:
        return UpToDate(common="#" + mark.name)
    first, target = pending[0], pending[-1]
    sends = [Send(target=first.name, base=mark.name, bookmark=True)]
    if target is not first:
        between = [s for s in src if first.createtxg < s.createtxg < target.createtxg]
        if all(s in own for s in between):
            sends.append(Send(target=target.name, base=first.name, intermediates=bool(between)))
        else:
            chain = pending
            sends += [Send(target=b.name, base=a.name) for a, b in zip(chain, chain[1:])]
    return Incremental(base="#" + mark.name, sends=tuple(sends))


def next_sequence(naming: SnapshotNaming, *lists: list[Snapshot]) -> int:
    """One more than the highest sequence of this service's snapshots on any side."""
    highest = 0
    for snaps in lists:
        for snap in snaps:
            seq = naming.parse(snap.name)
            if seq is not None and seq > highest:
                highest = seq
    return highest + 1


def received_names(plan: Plan, source: list[Snapshot]) -> list[str]:
    """The source snapshots the destination holds once `plan`'s sends succeed, oldest first."""
    src = by_age(source)
    index = {s.name: i for i, s in enumerate(src)}
    names: list[str] = []
    for send in plan.sends:
        if send.token is not None:
            continue  # what a resumed stream brings is known from the next listing
        if send.base is not None and send.intermediates:
            lo, hi = index[send.base], index[send.target]
            names += [s.name for s in src[lo + 1:hi]]
        names.append(send.target)
    return names
