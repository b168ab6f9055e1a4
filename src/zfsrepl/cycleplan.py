"""The pure half of a cycle: what it does, decided from both sides' listings
(`plan_cycle`), and what follows from how its sends went (`after`): what retention
destroys on each side and where each filesystem's incremental base moves.

Nothing here runs a command. The survey (survey.py) lists both sides and asks what
only a host can tell (a parent that exists, what was written, who holds what); the
executor (executor.py) carries the plan out.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from zfsrepl import chain, diagnosis, plan, retention
from zfsrepl.capabilities import format_buffer_size
from zfsrepl.config import FilesystemPair, Service
from zfsrepl.errors import ReplicationError
from zfsrepl.replication import Replication
from zfsrepl.snapshots import Snapshot
from zfsrepl.transfer import Wire
from zfsrepl.zfs import FsState


@dataclass(frozen=True)
class FilesystemPlan:
    pair: FilesystemPair  # source: the sending filesystem, destination: the receiving one
    source: list[Snapshot]  # including the snapshot this cycle takes
    destination: list[Snapshot] | None
    plan: plan.Plan
    # what retention destroys on each side once the sends went as planned
    destroy_source: tuple[str, ...] = ()
    destroy_destination: tuple[str, ...] = ()
    bookmarks: tuple[Snapshot, ...] = ()  # the source's bookmarks of this filesystem
    encrypted: bool = False  # the source filesystem is encrypted: send raw
    # own snapshots that carry this service's hold, on each side
    held_source: frozenset[str] = field(default_factory=frozenset)
    held_destination: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class CyclePlan:
    replication: Replication
    snapshot: str | None  # the snapshot this cycle takes, None when it takes none
    filesystems: list[FilesystemPlan]
    wire: Wire | None = None  # how streams cross the network (None: not asked for)
    # skip_unchanged: source filesystems left alone this cycle, and when they were found
    # unchanged (the destination held all their data then)
    skipped: frozenset[str] = frozenset()
    unchanged_at: int | None = None

    def conflicts(self) -> list[str]:
        """Why filesystems cannot be replicated as their chains stand, one line each."""
        return [fp.plan.explain(fp.pair.source, fp.pair.destination)
                for fp in self.filesystems
                if isinstance(fp.plan, (plan.NoCommonSnapshot, plan.Diverged))]

    def raise_on_conflict(self) -> None:
        found = self.conflicts()
        if found:
            raise ReplicationError("; ".join(found))

    def describe(self) -> list[str]:
        rep = self.replication
        svc = rep.service
        lines = [f"service {svc.name}: {rep.sending.user}@{rep.sending.host} -> "
                 f"{rep.receiving.user}@{rep.receiving.host}"]
        if self.wire is not None:
            lines.append(f"wire: {wire_text(svc, self.wire)}")
        if svc.parallel > 1:
            lines.append(f"parallel: up to {svc.parallel} filesystems sent at once")
        if self.snapshot:
            lines.append(f"snapshot @{self.snapshot} of: "
                         + ", ".join(fp.pair.source for fp in self.filesystems
                                     if fp.pair.source not in self.skipped))
        for fp in self.filesystems:
            lines.append(f"{fp.pair.source} -> {fp.pair.destination}: {self._what(fp)}")
            lines += [f"  destroy on source: {fp.pair.source}@{n}" for n in fp.destroy_source]
            lines += [f"  destroy on destination: {fp.pair.destination}@{n}"
                      for n in fp.destroy_destination]
        return lines

    def _what(self, fp: FilesystemPlan) -> str:
        p = fp.plan
        if isinstance(p, (plan.NoCommonSnapshot, plan.Diverged)):
            return "CONFLICT: " + p.explain(fp.pair.source, fp.pair.destination)
        if isinstance(p, plan.UpToDate) and fp.pair.source in self.skipped:
            return f"unchanged since @{p.common}: no snapshot (skip_unchanged)"
        if isinstance(p, plan.UpToDate):
            return f"up to date at @{p.common}"
        if isinstance(p, plan.NothingToSend):
            return "nothing to send"
        return "; ".join(s.describe() for s in p.sends)

    def stamped(self, taken: int) -> CyclePlan:
        """The snapshot just taken was created at `taken`, not when the survey planned it
        (hooks ran between): the lag recorded after the cycle counts from then."""
        def stamp(fp: FilesystemPlan) -> FilesystemPlan:
            return dataclasses.replace(fp, source=[
                dataclasses.replace(s, creation=taken)
                if s.name == self.snapshot and s.guid is None else s for s in fp.source])
        return dataclasses.replace(self, filesystems=[stamp(fp) for fp in self.filesystems])


def wire_configured(svc: Service) -> bool:
    """Whether the definition asks for wire compression or a buffer at all."""
    return svc.wire_compression != "none" or svc.buffer is not None


def wire_text(svc: Service, wire: Wire) -> str:
    """The wire chosen and what the definition asked for, for --dry-run."""
    asked = f'wire_compression = "{svc.wire_compression}"'
    if svc.buffer is not None:
        asked += f', buffer = "{format_buffer_size(svc.buffer)}"'
    raw = " (raw streams of encrypted filesystems uncompressed)" if wire.compression else ""
    return f"{wire.describe()}{raw}; asked: {asked}"


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Listing:
    """Both sides of every filesystem of a cycle, as one listing call per side saw them
    (None: the filesystem does not exist)."""

    source: Mapping[str, FsState | None]
    destination: Mapping[str, FsState | None]

    def snapshots(self, side: Mapping[str, FsState | None]) -> dict[str, list[Snapshot] | None]:
        return {fs: (st.snapshots if st else None) for fs, st in side.items()}


def check_listing(rep: Replication, listing: Listing, source_label: str) -> list[str]:
    """Raise what stops the cycle as both sides stand; else the receiving filesystems
    that do not exist (their parents must)."""
    pairs = rep.filesystems
    dst = listing.destination
    # The interlock: a destination that took over by failover is never overwritten.
    taken = [p.destination for p in pairs
             if (st := dst[p.destination]) is not None and st.role == diagnosis.ROLE_TAKEN_OVER]
    if taken:
        raise ReplicationError(diagnosis.interlock_problem(taken, rep.name,
                                                           rep.receiving_side))
    missing_src = [p.source for p in pairs if listing.source[p.source] is None]
    if missing_src:
        raise ReplicationError(
            f"source filesystem {', '.join(missing_src)} does not exist on {source_label}:"
            " create it, or correct [[filesystem]] source in the definition")
    return [p.destination for p in pairs if dst[p.destination] is None]


def new_snapshot_name(rep: Replication, listing: Listing) -> str:
    """The name of the snapshot this cycle takes: the next sequence on either side."""
    src = listing.snapshots(listing.source).values()
    dst = listing.snapshots(listing.destination).values()
    seq = plan.next_sequence(rep.naming, *(s for s in src if s), *(s for s in dst if s))
    return rep.naming.format(seq)


def with_new_snapshot(snaps: list[Snapshot], fs: str, name: str,
                      marks: tuple[Snapshot, ...] = ()) -> list[Snapshot]:
    """`snaps` and the snapshot about to be taken: newer than every snapshot and
    bookmark (`marks`) there is."""
    top = max((s.createtxg for s in (*snaps, *marks)), default=0)
    return [*snaps, Snapshot(filesystem=fs, name=name, guid=None, createtxg=top + 1,
                             creation=int(time.time()))]


@dataclass(frozen=True)
class Holds:
    """Per side: filesystem -> own snapshots that carry this service's hold."""

    source: Mapping[str, set[str]] = field(default_factory=dict)
    destination: Mapping[str, set[str]] = field(default_factory=dict)


def plan_filesystem(rep: Replication, pair: FilesystemPair, listing: Listing,
                    snapshot: str | None, holds: Holds) -> FilesystemPlan:
    """One filesystem's part of the cycle: its sends, and what retention destroys once
    they went through."""
    src_state, dst_state = listing.source[pair.source], listing.destination[pair.destination]
    src = src_state.snapshots if src_state else []
    marks = tuple(src_state.bookmarks) if src_state else ()
    if snapshot:
        src = with_new_snapshot(src, pair.source, snapshot, marks)
    dst = dst_state.snapshots if dst_state else None
    token = dst_state.resume_token if dst_state else None
    fp = FilesystemPlan(
        pair, src, dst,
        plan.plan_filesystem(src, dst, rep.naming, bookmarks=marks, resume_token=token),
        bookmarks=marks, encrypted=bool(src_state and src_state.encrypted),
        held_source=frozenset(holds.source.get(pair.source, ())),
        held_destination=frozenset(holds.destination.get(pair.destination, ())))
    destroy_src, destroy_dst = retention_after(rep, fp, sent_ok=True)
    return dataclasses.replace(fp, destroy_source=destroy_src, destroy_destination=destroy_dst)


def plan_cycle(rep: Replication, listing: Listing, snapshot: str | None, holds: Holds, *,
               wire: Wire | None = None, skipped: frozenset[str] = frozenset(),
               unchanged_at: int | None = None) -> CyclePlan:
    """The whole cycle: `snapshot` (None: none taken) of every filesystem but the
    `skipped` ones, then their sends and retention."""
    fps = [plan_filesystem(rep, pair, listing,
                           snapshot if pair.source not in skipped else None, holds)
           for pair in rep.filesystems]
    return CyclePlan(rep, snapshot, fps, wire, skipped, unchanged_at if skipped else None)


# ---------------------------------------------------------------------------- after


@dataclass(frozen=True)
class After:
    """What follows for one filesystem from how its sends went."""

    destroy_source: tuple[str, ...]
    destroy_destination: tuple[str, ...]
    base: str | None  # the new incremental base; None: it did not move


def after(cp: CyclePlan, sent: Sequence[bool]) -> list[After]:
    """For each filesystem of `cp`, whether its sends went through (in order)."""
    return [after_filesystem(cp.replication, fp, ok) for fp, ok in zip(cp.filesystems, sent)]


def after_filesystem(rep: Replication, fp: FilesystemPlan, sent_ok: bool) -> After:
    """What follows for one filesystem: as planned when its sends went through (the
    plan's retention, the newest snapshot sent as the new base), else retention as
    things stand and the base where it was."""
    if not sent_ok:
        destroy_src, destroy_dst = retention_after(rep, fp, sent_ok=False)
        return After(destroy_src, destroy_dst, None)
    base = None
    if not isinstance(fp.plan, plan.Resume) and fp.plan.sends:
        # a resumed stream's end shows in the next listing
        base = plan.received_names(fp.plan, fp.source)[-1]
    return After(fp.destroy_source, fp.destroy_destination, base)


def retention_after(rep: Replication, fp: FilesystemPlan, sent_ok: bool
                    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What retention destroys on (source, destination) once the sends went as planned
    (`sent_ok`), or as things stand when they did not."""
    if isinstance(fp.plan, plan.Resume):
        # What the resumed stream brings shows in the next listing: prune then.
        return (), ()
    naming = rep.naming
    state = chain.compare(chain.Sender.of(fp.source, fp.bookmarks),
                          None if fp.destination is None else chain.Receiver.of(fp.destination),
                          naming)
    common = state.common.name if state.common is not None else None
    dst_after = fp.destination
    protected = [common] if common else []
    if sent_ok and fp.plan.sends:
        received = _received(fp)
        dst_after = chain.receive(fp.destination, received, fp.pair.destination)
        common = received[-1].name
        protected = [common]
    elif not sent_ok:
        # A failed send may still have delivered part of its snapshots (one step of a
        # chain, the first streams of a -I): keep every candidate on the source so the
        # next cycle finds its common snapshot whatever arrived.
        protected += plan.received_names(fp.plan, fp.source)
    destroy_src = retention.decide(fp.source, naming, rep.keep_sending, protected,
                                   fp.held_source).destroy
    destroy_dst: tuple[str, ...] = ()
    if dst_after is not None and common is not None:
        destroy_dst = retention.decide(dst_after, naming, rep.keep_receiving, protected,
                                       fp.held_destination).destroy
    return destroy_src, destroy_dst


def destination_after(fp: FilesystemPlan) -> list[Snapshot] | None:
    """The destination's snapshots once `fp`'s sends and destroys went through, from
    what the cycle already knows (its listing and its plan), without listing again.
    None: the destination filesystem does not exist and receives nothing. What a
    resumed stream brings is not known here (the next cycle's listing shows it)."""
    arrived = chain.receive(fp.destination, _received(fp), fp.pair.destination)
    gone = set(fp.destroy_destination)
    return None if arrived is None else [s for s in arrived if s.name not in gone]


def _received(fp: FilesystemPlan) -> list[Snapshot]:
    """The source snapshots `fp`'s sends bring over, oldest first."""
    by_name = {s.name: s for s in fp.source}
    return [by_name[n] for n in plan.received_names(fp.plan, fp.source)]
