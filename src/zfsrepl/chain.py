"""The one comparison of two snapshot chains: where the receiving side stands against
the sending side.

`compare` takes both sides' snapshots, the sender's bookmarks and the receiver's
resume token, and returns a `ChainState`: the newest point both sides share (a
snapshot, or a bookmark whose snapshot is gone from the sender), the service's
snapshots the receiver still lacks, what the receiver holds beyond the shared point,
and the one `Verdict` that follows. Snapshots are matched by GUID only: names are
labels, the same name on both sides may be two different snapshots.

The planner (plan.py), the doctor (diagnosis.py) and the lag and pending figures of
status read a chain only through this, so they cannot disagree about it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot, by_age


@dataclass(frozen=True)
class Sender:
    """The sending side of one filesystem: its snapshots and bookmarks (a bookmark's
    name is the part after '#')."""

    snapshots: tuple[Snapshot, ...]
    bookmarks: tuple[Snapshot, ...] = ()

    @classmethod
    def of(cls, snapshots: Sequence[Snapshot],
           bookmarks: Sequence[Snapshot] = ()) -> Sender:
        return cls(tuple(by_age(list(snapshots))), tuple(by_age(list(bookmarks))))


@dataclass(frozen=True)
class Receiver:
    """The receiving side of one filesystem that exists: its snapshots, and the token a
    cut resumable receive left (None or "": there is none)."""

    snapshots: tuple[Snapshot, ...]
    resume_token: str | None = None

    @classmethod
    def of(cls, snapshots: Sequence[Snapshot], resume_token: str | None = None) -> Receiver:
        return cls(tuple(by_age(list(snapshots))), resume_token or None)


@dataclass(frozen=True)
class Common:
    """The newest point both sides share: `sending` is the sender's snapshot or
    bookmark, `receiving` the receiver's snapshot of the same GUID."""

    sending: Snapshot
    receiving: Snapshot
    bookmark: bool  # `sending` is a bookmark: its snapshot is gone from the sender

    @property
    def name(self) -> str:
        return self.sending.name

    @property
    def ref(self) -> str:
        """How a send names it as its base: `#name` for a bookmark, else `name`."""
        return "#" + self.name if self.bookmark else self.name

    @property
    def label(self) -> str:
        """For people: `#name` or `@name`."""
        return self.ref if self.bookmark else "@" + self.name


class Verdict(enum.Enum):
    """What the comparison says, in the order it is decided (the first that holds)."""

    RESUME = "a cut stream waits to be resumed"
    NOTHING_YET = "the sender has no snapshot of this service"
    RECEIVER_ABSENT = "the receiving filesystem does not exist"
    NO_COMMON = "no common snapshot"
    DIVERGED = "the receiver holds snapshots newer than the common one"
    UP_TO_DATE = "up to date"
    BEHIND = "the receiver lacks snapshots of the sender"


@dataclass(frozen=True)
class ChainState:
    """Both chains of one filesystem compared; every sequence is oldest first."""

    sending: tuple[Snapshot, ...]
    bookmarks: tuple[Snapshot, ...]
    receiving: tuple[Snapshot, ...] | None  # None: the filesystem does not exist
    resume_token: str | None  # only where the receiving filesystem exists
    own: tuple[Snapshot, ...]  # the sender's snapshots of this service
    common: Common | None
    # the sender's snapshots of this service newer than the common point (all of them
    # where there is none): what a cycle sends
    pending: tuple[Snapshot, ...]
    # the receiver's snapshots newer than its copy of the common point (all of them
    # where there is none): what the sender does not have
    diverged: tuple[Snapshot, ...]

    @property
    def verdict(self) -> Verdict:
        if self.resume_token is not None:
            return Verdict.RESUME
        if not self.own:
            return Verdict.NOTHING_YET
        if self.receiving is None:
            return Verdict.RECEIVER_ABSENT
        if self.common is None:
            return Verdict.NO_COMMON
        if self.diverged:
            return Verdict.DIVERGED
        if not self.pending:
            return Verdict.UP_TO_DATE
        return Verdict.BEHIND

    @property
    def target(self) -> Snapshot | None:
        """The newest snapshot of this service on the sender: what a cycle brings over."""
        return self.own[-1] if self.own else None

    @property
    def same_names(self) -> tuple[str, ...]:
        """Names on both sides that are different snapshots (other GUIDs): a sign that
        one side was re-created."""
        if self.receiving is None:
            return ()
        guid_of = {s.name: s.guid for s in self.sending}
        return tuple(s.name for s in self.receiving
                     if s.name in guid_of and guid_of[s.name] != s.guid)


def compare(sending: Sender, receiving: Receiver | None,
            naming: SnapshotNaming) -> ChainState:
    """Compare the sender's chain with the receiver's (None: it does not exist)."""
    src = tuple(by_age(sending.snapshots))
    marks = tuple(by_age(sending.bookmarks))
    own = tuple(s for s in src if naming.is_ours(s.name))
    if receiving is None:
        return ChainState(src, marks, None, None, own, None, own, ())
    rcv = tuple(by_age(receiving.snapshots))
    common = _newest_common(src, marks, rcv)
    if common is None:
        return ChainState(src, marks, rcv, receiving.resume_token or None, own, None, own, rcv)
    low = common.sending.createtxg
    return ChainState(
        src, marks, rcv, receiving.resume_token or None, own, common,
        pending=tuple(s for s in own if s.createtxg > low),
        diverged=tuple(s for s in rcv if s.createtxg > common.receiving.createtxg))


def _newest_common(src: tuple[Snapshot, ...], marks: tuple[Snapshot, ...],
                   rcv: tuple[Snapshot, ...]) -> Common | None:
    """The newest sender snapshot whose GUID the receiver has; a bookmark instead where
    one is newer still (its snapshot is gone from the sender)."""
    on_receiver: dict[int, Snapshot] = {}
    for s in rcv:
        if s.guid is not None:
            on_receiver.setdefault(s.guid, s)
    snap = next((s for s in reversed(src) if s.guid in on_receiver), None)
    floor = snap.createtxg if snap is not None else -1
    mark = next((m for m in reversed(marks)
                 if m.guid in on_receiver and m.createtxg > floor), None)
    if mark is not None and mark.guid is not None:
        return Common(mark, on_receiver[mark.guid], bookmark=True)
    if snap is not None and snap.guid is not None:
        return Common(snap, on_receiver[snap.guid], bookmark=False)
    return None


def newest_own(snapshots: Sequence[Snapshot], naming: SnapshotNaming) -> Snapshot | None:
    """The newest snapshot of this service among `snapshots`."""
    own = [s for s in by_age(list(snapshots)) if naming.is_ours(s.name)]
    return own[-1] if own else None


def receive(receiving: Sequence[Snapshot] | None, arrived: Sequence[Snapshot],
            filesystem: str) -> list[Snapshot] | None:
    """The receiver's snapshots once the sender's `arrived` (oldest first) were received
    onto `receiving` (None: the filesystem does not exist), as the next listing would
    show them: each new one newer than everything there, with the sender's GUID and
    creation time. None: the filesystem does not exist and received nothing."""
    if receiving is None and not arrived:
        return None
    before = list(receiving or [])
    have = {s.guid for s in before if s.guid is not None}
    top = max((s.createtxg for s in before), default=0)
    new = [s for s in arrived if s.guid is None or s.guid not in have]
    return [*before, *(Snapshot(filesystem, s.name, s.guid, top + i + 1, s.creation)
                       for i, s in enumerate(new))]
