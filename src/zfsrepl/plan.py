"""Pure decisions: what to send for one filesystem.

Given both sides' chains compared (chain.py), decide between a full send, an
incremental send, nothing, or a named conflict. The incremental base is the newest
point both sides share by GUID: a source snapshot, or, where that snapshot is gone
from the source, a bookmark of it. Only this
service's own snapshots are sent, so another service's or an administrator's
snapshots never leak into this service's destination. A destination that holds the
token of a cut resumable receive continues that stream first (`Resume`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from zfsrepl.chain import ChainState, Common, Receiver, Sender, Verdict, compare
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


def plan_filesystem(source: list[Snapshot], destination: list[Snapshot] | None,
                    naming: SnapshotNaming, *, bookmarks: tuple[Snapshot, ...] = (),
                    resume_token: str | None = None) -> Plan:
    """Decide how to bring `destination` (None: does not exist) up to the newest own
    snapshot of `source`. `bookmarks`: the source filesystem's bookmarks (incremental
    bases where their snapshot is gone); `resume_token`: the destination's
    receive_resume_token."""
    receiving = None if destination is None else Receiver.of(destination, resume_token)
    return plan_chain(compare(Sender.of(source, bookmarks), receiving, naming))


def plan_chain(state: ChainState) -> Plan:
    """The plan that follows from the comparison of both chains."""
    verdict = state.verdict
    if verdict is Verdict.RESUME:
        assert state.resume_token is not None
        return Resume(state.resume_token)
    if verdict is Verdict.NOTHING_YET:
        return NothingToSend()
    target = state.own[-1]
    if verdict is Verdict.RECEIVER_ABSENT:
        return Full(Send(target=target.name))
    if verdict is Verdict.NO_COMMON:
        return NoCommonSnapshot(destination_snapshots=len(state.diverged))
    common = state.common
    assert common is not None
    if verdict is Verdict.DIVERGED:
        return Diverged(common=common.ref,
                        extra_on_destination=tuple(s.name for s in state.diverged))
    if verdict is Verdict.UP_TO_DATE:
        return UpToDate(common=common.ref)
    return Incremental(base=common.ref, sends=_sends(state, common))


def _sends(state: ChainState, common: Common) -> tuple[Send, ...]:
    """The streams that bring every pending snapshot over. From a bookmark, `-i #mark`
    to the first pending snapshot comes first (a bookmark is only ever an `-i` base);
    then one `-I` stream carries the rest where only own snapshots lie between, else
    one `-i` step from own snapshot to own snapshot, so that no other service's
    snapshot reaches the destination."""
    pending = list(state.pending)
    sends: list[Send] = []
    start = common.sending
    if common.bookmark:
        sends.append(Send(target=pending[0].name, base=common.name, bookmark=True))
        start, pending = pending[0], pending[1:]
    if not pending:
        return tuple(sends)
    target = pending[-1]
    between = [s for s in state.sending if start.createtxg < s.createtxg < target.createtxg]
    if all(s in state.own for s in between):
        sends.append(Send(target=target.name, base=start.name, intermediates=bool(between)))
    else:
        steps = [start, *pending]
        sends += [Send(target=b.name, base=a.name) for a, b in zip(steps, steps[1:])]
    return tuple(sends)


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
