"""The survey of a cycle: list both sides (one call each), find what stops the cycle
before anything changes (a taken-over destination, a missing filesystem or parent), ask
what only the hosts can tell (what was written, who holds what), and hand all of it to
the pure planner (cycleplan.plan_cycle)."""

from __future__ import annotations

import time

from zfsrepl import hooks, unchanged
from zfsrepl.cyclehosts import CycleHosts
from zfsrepl.cycleplan import (
    CyclePlan,
    Holds,
    Listing,
    check_listing,
    new_snapshot_name,
    plan_cycle,
    wire_configured,
)
from zfsrepl.errors import ReplicationError
from zfsrepl.log import logger
from zfsrepl.snapshots import Snapshot
from zfsrepl.zfs import ENCRYPTION, RESUME_TOKEN, Zfs

# The source hosts this process already said has no `written` for skip_unchanged: said
# once for the life of `zfsrepl run`, though a failed attempt has every host probed again.
_SAID_NO_WRITTEN: set[str] = set()


class Survey:
    def __init__(self, hosts: CycleHosts) -> None:
        self.h = hosts

    def survey(self, take_snapshot: bool) -> CyclePlan:
        """List both sides and decide everything; raises before anything changes."""
        h = self.h
        rep, svc = h.rep, h.rep.service
        hooks.check_executable("pre_snapshot", rep.pre_snapshot, svc.path)
        hooks.check_executable("post_snapshot", rep.post_snapshot, svc.path)
        listing = self.list_both()
        missing_dst = check_listing(rep, listing, h.src.label)
        parents = sorted({d.rsplit("/", 1)[0] for d in missing_dst})
        absent = sorted(set(parents) - h.dst.existing(parents))
        if absent:
            raise ReplicationError(
                f"destination parent {', '.join(absent)} does not exist on {h.dst.label}:"
                f" create it there (zfs create -p {absent[0]}) or correct [[filesystem]]"
                " destination in the definition")
        skip: frozenset[str] = frozenset()
        unchanged_at = None
        if take_snapshot and svc.skip_unchanged:
            unchanged_at = int(time.time())
            skip = self.unchanged(listing)
        snapshot = None
        if take_snapshot and len(skip) < len(rep.filesystems):
            snapshot = new_snapshot_name(rep, listing)
        src_lists = listing.snapshots(listing.source).values()
        dst_lists = listing.snapshots(listing.destination).values()
        holds = Holds(self.own_holds(h.src, [s for s in src_lists if s]),
                      self.own_holds(h.dst, [s for s in dst_lists if s]))
        return plan_cycle(rep, listing, snapshot, holds,
                          wire=h.wire() if wire_configured(svc) else None,
                          skipped=skip, unchanged_at=unchanged_at)

    def list_both(self) -> Listing:
        """Both sides of every filesystem, one call each: the source first, as its
        listing is local, done while the destination's ssh connection may still open."""
        h = self.h
        pairs = h.rep.filesystems
        src_caps = h.src.capabilities()
        src, dst = h.listings.survey(
            pairs, (ENCRYPTION,) if src_caps.raw_send else (),
            lambda: (RESUME_TOKEN,) if h.resumable() else ())
        return Listing(src, dst)

    def unchanged(self, listing: Listing) -> frozenset[str]:
        """skip_unchanged: the source filesystems with nothing written since their
        newest snapshot, which the destination holds (unchanged.py). One `zfs get written`
        for those that could be, after the listing: a snapshot of another's taken in
        between makes the next cycle's listing see it, and that cycle sends."""
        h = self.h
        pairs = h.rep.filesystems
        srcs = listing.snapshots(listing.source)
        dsts = listing.snapshots(listing.destination)
        marks = {p.source: tuple(st.bookmarks) for p in pairs
                 if (st := listing.source[p.source]) is not None}
        tokens = {p.destination: st.resume_token for p in pairs
                  if (st := listing.destination[p.destination]) is not None}
        naming = h.rep.naming
        both = [(p.source, p.destination) for p in pairs]
        # those that would be skipped if nothing was written: only they are asked about
        candidates = unchanged.skipped(dict.fromkeys(srcs, 0), srcs, dsts, both, naming,
                                       bookmarks=marks, tokens=tokens)
        if not candidates:
            return frozenset()
        written = h.src.written(sorted(candidates))
        if written is None:
            if h.src.label not in _SAID_NO_WRITTEN:
                _SAID_NO_WRITTEN.add(h.src.label)
                logger.warning("skip_unchanged has no effect: ZFS on %s has no 'written' "
                               "property (pool version 23, zfs-fuse); every filesystem gets "
                               "its snapshot each cycle", h.src.label)
            return frozenset()
        skip = unchanged.skipped(written, srcs, dsts, both, naming, bookmarks=marks,
                                 tokens=tokens)
        if skip:
            logger.info("skip_unchanged: %d of %d filesystem(s) unchanged since their last "
                        "snapshot: no snapshot, send or destroy for them this cycle",
                        len(skip), len(pairs))
        return skip

    def own_holds(self, zfs: Zfs, lists: list[list[Snapshot]]) -> dict[str, set[str]]:
        """filesystem -> own snapshots that carry this service's hold (one call, only
        where the host lists holds and some own snapshot is held at all)."""
        if not zfs.capabilities().holds:
            return {}
        held = [s for snaps in lists for s in snaps
                if s.userrefs > 0 and self.h.rep.naming.is_ours(s.name)]
        out: dict[str, set[str]] = {}
        tags = zfs.holds(held) if held else {}
        for snap in held:
            if self.h.tag in tags.get(snap.full_name, set()):
                out.setdefault(snap.filesystem, set()).add(snap.name)
        return out
