"""The listing cache: a service with thousands of snapshots lists them only when they
changed.

Where ZFS has `snapshots_changed` (OpenZFS 2.2 and later: when a snapshot of the
filesystem was last created, destroyed or renamed), a cycle asks each side for it
once, for all the service's filesystems (with the filesystems' own properties of the
listing, which are never cached: a failover sets zfsrepl:role without touching a
snapshot), and lists in full only the filesystems whose value moved since the listing
kept in the service's state folder (LISTINGS_FILE). The source is done first, then
the destination. After a cycle that went through, what the cycle itself did (its
snapshots, receives, destroys, holds and bookmarks, each as ZFS confirmed it: see
`Zfs.journal`) is applied to what it listed, the snapshots it took are read back for
their GUIDs, and the result is kept with the values read after its last change.

Any doubt lists again: no file, a file that cannot be read or parsed (one WARNING),
another version, another service, host or set of filesystems, a value that moved or
that ZFS does not give, a listing older than TRUST_SECONDS, a failed attempt (the file
is removed when a survey reads it, and written only after a cycle that went through),
and a filesystem whose chain from a cached side is anything but up to date or behind
by snapshots of this service (both sides of it are listed again before anything is
decided: a conflict is never reported, nor an unusual chain acted on, from the cache
alone). A service with fewer than MIN_SNAPSHOTS snapshots keeps only a note saying
so and lists in full without the looks. Where ZFS has no `snapshots_changed`
(zfs-fuse, OpenZFS before 2.2), or the destination's agent refuses the look (an older
zfsrepl), every cycle lists both sides as before.

The value has a resolution of one second, and a change made by someone else on a side
while a cycle changes that side (or in the second of its last change) is hidden
behind the cycle's own: such a snapshot is seen at the next full listing, at most
TRUST_SECONDS later. One made between two cycles is seen by the next cycle.

The decisions are pure functions at the top; `Listings` does the reading and writing.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from zfsrepl import chain, plan
from zfsrepl.config import FilesystemPair, Service
from zfsrepl.errors import ZfsreplError
from zfsrepl.fileio import UnsafePath, read_file, write_atomically
from zfsrepl.log import logger
from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot
from zfsrepl.zfs import FsState, Zfs

if TYPE_CHECKING:
    from zfsrepl.cycleplan import CyclePlan

FORMAT_VERSION = 1
LISTINGS_FILE = "listings.json"
# A filesystem is listed in full at least this often, whatever its value says: the
# bound on how long a snapshot hidden behind a cycle's own change goes unseen.
TRUST_SECONDS = 600
# Below this many snapshots in all (both sides, every filesystem) a full listing costs
# about what the cache's own looks cost (two calls per side and cycle, one of them a
# round trip to the destination): such a service lists in full and keeps only a note
# saying so, which spares it those looks until its listings grow past it.
MIN_SNAPSHOTS = 1000
SIDES = ("source", "destination")


@dataclass(frozen=True)
class Entry:
    """One filesystem's snapshots and bookmarks as they stood while its
    `snapshots_changed` was `changed`; `listed_at`: when the full listing they derive
    from was made (this machine's clock)."""

    changed: int
    listed_at: float
    snapshots: tuple[Snapshot, ...]
    bookmarks: tuple[Snapshot, ...] = ()


@dataclass
class Kept:
    """The content of the listings file: for whom it holds, and each side's entries."""

    key: dict[str, Any]
    entries: dict[str, dict[str, Entry]] = field(
        default_factory=lambda: {side: {} for side in SIDES})
    small: bool = False  # fewer than MIN_SNAPSHOTS: list in full without a look


# ---------------------------------------------------------------------------- decisions


def cache_key(service: Service, src: list[object], dst: list[object]) -> dict[str, Any]:
    """What a kept listing is for: the service, both hosts (and users and zfs
    commands) and its filesystems in order. Any difference discards it."""
    return {"service": service.name, "source": src, "destination": dst,
            "filesystems": [[p.source, p.destination] for p in service.filesystems]}


def reusable(entry: Entry | None, changed: int | None, now: float) -> bool:
    """Whether a kept listing stands for the filesystem as it is now."""
    return (entry is not None and changed is not None and entry.changed == changed
            and 0 <= now - entry.listed_at < TRUST_SECONDS)


def snapshot_count(states: Sequence[Mapping[str, FsState | None]]) -> int:
    return sum(len(st.snapshots) for side in states for st in side.values()
               if st is not None)


def doubtful(pairs: Sequence[FilesystemPair], src: Mapping[str, FsState | None],
             dst: Mapping[str, FsState | None], cached: set[tuple[str, str]],
             naming: SnapshotNaming) -> list[FilesystemPair]:
    """The pairs with a side from the cache (`cached`: (side, filesystem)) whose chain
    is not the ordinary one (up to date, or behind by this service's snapshots, the
    newest common one matched by GUID, no name on both sides with two GUIDs): they are
    listed again before anything is decided."""
    out = []
    for pair in pairs:
        if ("source", pair.source) not in cached \
                and ("destination", pair.destination) not in cached:
            continue
        s, d = src.get(pair.source), dst.get(pair.destination)
        if s is None or d is None:
            out.append(pair)
            continue
        state = chain.compare(chain.Sender.of(s.snapshots, s.bookmarks),
                              chain.Receiver.of(d.snapshots, d.resume_token), naming)
        if state.verdict not in (chain.Verdict.UP_TO_DATE, chain.Verdict.BEHIND) \
                or state.same_names:
            out.append(pair)
    return out


@dataclass
class Changes:
    """What a cycle did to one side, from the journal of its zfs (`Zfs.journal`)."""

    created: set[str] = field(default_factory=set)  # FS@SNAP
    destroyed: set[str] = field(default_factory=set)  # FS@SNAP and FS#BOOKMARK
    bookmarked: set[str] = field(default_factory=set)  # FS#BOOKMARK
    held: Counter[str] = field(default_factory=Counter)
    released: Counter[str] = field(default_factory=Counter)
    other: set[str] = field(default_factory=set)  # filesystems changed otherwise


def changes_of(journal: Sequence[tuple[str, str]]) -> Changes:
    out = Changes()
    for what, name in journal:
        if what == "snapshot":
            out.created.add(name)
        elif what == "destroy":
            out.destroyed.add(name)
        elif what == "bookmark":
            out.bookmarked.add(name)
        elif what == "hold":
            out.held[name] += 1
        elif what == "release":
            out.released[name] += 1
        else:
            out.other.add(name.split("@", 1)[0].split("#", 1)[0])
    return out


def _touched(changes: Changes) -> set[str]:
    names = (*changes.created, *changes.destroyed, *changes.bookmarked, *changes.held,
             *changes.released)
    return {n.split("@", 1)[0].split("#", 1)[0] for n in names}


def after_changes(fs: str, snapshots: Sequence[Snapshot], bookmarks: Sequence[Snapshot],
                  changes: Changes, arrived: Sequence[Snapshot] = (),
                  taken: dict[str, Snapshot] | None = None
                  ) -> tuple[tuple[Snapshot, ...], tuple[Snapshot, ...]] | None:
    """One filesystem's snapshots and bookmarks once `changes` (and the snapshots of the
    sender that `arrived` by receive, oldest first) went through, as a listing would
    show them; `taken`: the snapshots this cycle took, read back (FS@SNAP -> Snapshot).
    None when it cannot be told (a snapshot whose GUID is not known)."""
    if fs in changes.other:
        return None
    taken = taken or {}
    snaps = list(snapshots)
    for full in sorted(changes.created):
        if full.split("@", 1)[0] == fs:
            found = taken.get(full)
            if found is None:
                return None
            snaps.append(found)
    received = chain.receive(snaps, list(arrived), fs) if arrived else snaps
    if received is None or any(s.guid is None for s in received):
        return None
    out = []
    for s in received:
        if s.full_name in changes.destroyed:
            continue
        refs = s.userrefs
        if s.full_name not in taken:  # those were read back after the holds moved
            refs += changes.held[s.full_name] - changes.released[s.full_name]
        out.append(Snapshot(s.filesystem, s.name, s.guid, s.createtxg, s.creation,
                            max(refs, 0)))
    by_name = {s.name: s for s in out}
    marks = [m for m in bookmarks if f"{fs}#{m.name}" not in changes.destroyed]
    have = {m.name for m in marks}
    for full in sorted(changes.bookmarked):
        mfs, _, name = full.partition("#")
        if mfs != fs or name in have:
            continue
        snap = by_name.get(name)
        if snap is None:
            return None
        marks.append(Snapshot(fs, name, snap.guid, snap.createtxg, snap.creation))
    return tuple(out), tuple(marks)


def arrivals(cp: CyclePlan, taken: dict[str, Snapshot]) -> dict[str, list[Snapshot] | None]:
    """Destination filesystem -> the source snapshots its streams brought this cycle,
    oldest first, with the GUIDs of those just taken; None where that is not known (a
    resumed stream)."""
    out: dict[str, list[Snapshot] | None] = {}
    for fp in cp.filesystems:
        if isinstance(fp.plan, plan.Resume):
            out[fp.pair.destination] = None
            continue
        if not fp.plan.sends:
            out[fp.pair.destination] = []
            continue
        by_name = {s.name: s for s in fp.source}
        came = []
        for name in plan.received_names(fp.plan, fp.source):
            s = by_name[name]
            came.append(s if s.guid is not None else taken.get(s.full_name, s))
        out[fp.pair.destination] = came
    return out


# ---------------------------------------------------------------------------- the file


def _snap_row(s: Snapshot) -> list[Any]:
    return [s.name, s.guid, s.createtxg, s.creation, s.userrefs]


def _snap_of(fs: str, row: Any) -> Snapshot:
    if not (isinstance(row, list) and len(row) == 5 and isinstance(row[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in row[1:])):
        raise ValueError("a snapshot is [name, guid, createtxg, creation, userrefs]")
    return Snapshot(fs, row[0], row[1], row[2], row[3], row[4])


def encode(kept: Kept) -> str:
    return json.dumps({
        "version": FORMAT_VERSION, "key": kept.key, "small": kept.small,
        **{side: {fs: {"changed": e.changed, "listed_at": e.listed_at,
                       "snapshots": [_snap_row(s) for s in e.snapshots],
                       "bookmarks": [_snap_row(s) for s in e.bookmarks]}
                  for fs, e in kept.entries[side].items()} for side in SIDES}},
        separators=(",", ":"), sort_keys=True) + "\n"


def decode(text: str) -> Kept:
    """The file's content; ValueError (naming what) for anything else."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"version {data.get('version')!r}, not {FORMAT_VERSION}")
    key = data.get("key")
    if not isinstance(key, dict):
        raise ValueError("no key")
    small = data.get("small", False)
    if not isinstance(small, bool):
        raise ValueError("small is not true or false")
    kept = Kept(key, small=small)
    for side in SIDES:
        found = data.get(side)
        if not isinstance(found, dict):
            raise ValueError(f"no {side} listings")
        for fs, e in found.items():
            if not (isinstance(e, dict) and isinstance(e.get("changed"), int)
                    and isinstance(e.get("listed_at"), (int, float))
                    and isinstance(e.get("snapshots"), list)
                    and isinstance(e.get("bookmarks"), list)):
                raise ValueError(f"the {side} listing of {fs} is incomplete")
            kept.entries[side][fs] = Entry(
                e["changed"], float(e["listed_at"]),
                tuple(_snap_of(fs, r) for r in e["snapshots"]),
                tuple(_snap_of(fs, r) for r in e["bookmarks"]))
    return kept


# ---------------------------------------------------------------------------- reading


@dataclass
class _Seen:
    """What one survey used on one side: each filesystem's state, its value read before
    the listing, and when its full listing was made."""

    states: dict[str, FsState | None] = field(default_factory=dict)
    changed: dict[str, int | None] = field(default_factory=dict)
    listed_at: dict[str, float] = field(default_factory=dict)


class Listings:
    """Both sides' listings of one service's cycles, through the cache where it can be.
    `folder` None (a dry run, or no state folder): always a full listing."""

    def __init__(self, service: Service, folder: Path | None, src: Zfs, dst: Zfs,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.path = None if folder is None else folder / LISTINGS_FILE
        self.zfs = {"source": src, "destination": dst}
        self.clock = clock
        self._seen: dict[str, _Seen] | None = None
        self._small: int | None = None  # a small service's snapshots, listed in full

    def _key(self) -> dict[str, Any]:
        return cache_key(self.service, self.zfs["source"].identity(),
                         self.zfs["destination"].identity())

    def load(self) -> Kept | None:
        """The kept listings if they are for this service as it is now; None (one
        WARNING if the file is damaged) otherwise."""
        assert self.path is not None
        try:
            raw = read_file(self.path).decode("utf-8")
            kept = decode(raw)
        except FileNotFoundError:
            return None
        except (OSError, UnsafePath) as exc:
            logger.warning("cannot read the listing cache %s (%s): listing in full",
                           self.path, getattr(exc, "strerror", None) or exc)
            return None
        except ValueError as exc:  # UnicodeDecodeError and json errors among them
            logger.warning("ignoring the listing cache %s: %s; listing in full, it is "
                           "written again after this cycle", self.path,
                           str(exc).splitlines()[0][:200])
            return None
        if kept.key != self._key():
            logger.debug("the listing cache %s is for another definition: not used",
                         self.path)
            return None
        return kept

    def survey(self, pairs: Sequence[FilesystemPair], src_extra: tuple[str, ...],
               dst_extra: Callable[[], tuple[str, ...]]
               ) -> tuple[dict[str, FsState | None], dict[str, FsState | None]]:
        """Each side's FsState of each filesystem of `pairs`, as `Zfs.states` gives
        them, from the cache where it holds. The source is done first (its calls are
        local, made while the destination's ssh connection may still be opening), so
        the destination's `extra` is asked for only then."""
        src, dst = self.zfs["source"], self.zfs["destination"]
        src_fs, dst_fs = [p.source for p in pairs], [p.destination for p in pairs]
        self._seen = self._small = None

        def in_full() -> tuple[dict[str, FsState | None], dict[str, FsState | None]]:
            listed = src.states(src_fs, src_extra)
            return listed, dst.states(dst_fs, dst_extra())

        # ZFS without bookmarks (pool v23, zfs-fuse, Solaris) has no snapshots_changed
        # either: not even asked.
        if self.path is None or self.service.listing_cache == "off" \
                or src.lacks_snapshots_changed() or dst.lacks_snapshots_changed() \
                or not src.capabilities().bookmarks:
            return in_full()
        kept = self.load()
        if kept is not None and kept.small and self.service.listing_cache == "auto":
            found = in_full()
            self._small = snapshot_count(found)
            return found
        # Written again only after a cycle that went through: an attempt that fails or is
        # stopped half-way leaves no listing behind that its changes made wrong.
        self._remove()
        seen = {side: _Seen() for side in SIDES}
        cached: set[tuple[str, str]] = set()
        out: dict[str, dict[str, FsState | None]] = {}
        extras = {"source": src_extra}
        for side, zfs, names in (("source", src, src_fs), ("destination", dst, dst_fs)):
            zfs.journal = None
            if side == "destination":
                extras[side] = dst_extra()
                looked = dst.changed(names, extras[side]) \
                    if dst.capabilities().bookmarks else None
            else:
                looked = src.changed(names, src_extra)
            if looked is None:  # no snapshots_changed here: the cache stays off
                if side == "source":
                    return in_full()
                return out["source"], dst.states(dst_fs, extras[side])
            now = self.clock()
            entries = kept.entries[side] if kept is not None else {}
            use = [fs for fs in names if fs in looked
                   and reusable(entries.get(fs), looked[fs][0], now)]
            states = zfs.states([fs for fs in names if fs not in use], extras[side])
            for fs in use:
                entry, st = entries[fs], looked[fs][1]
                st.snapshots, st.bookmarks = list(entry.snapshots), list(entry.bookmarks)
                states[fs] = st
                cached.add((side, fs))
                seen[side].listed_at[fs] = entry.listed_at
            for fs in names:
                seen[side].listed_at.setdefault(fs, now)
                seen[side].changed[fs] = looked[fs][0] if fs in looked else None
            logger.debug("%s: %d of %d filesystem(s) listed in full, %d from the "
                         "listing cache", zfs.label, len(names) - len(use), len(names),
                         len(use))
            seen[side].states = states
            out[side] = states
        again = doubtful(pairs, out["source"], out["destination"], cached,
                         self.service.naming)
        if again:
            logger.debug("listing again what the cache said of %s: its chain is not "
                         "the ordinary one", ", ".join(p.source for p in again))
            now = self.clock()
            for side, zfs, names in (
                    ("source", src, [p.source for p in again]),
                    ("destination", dst, [p.destination for p in again])):
                relist = [fs for fs in names if (side, fs) in cached]
                out[side].update(zfs.states(relist, extras[side]))
                for fs in relist:
                    seen[side].listed_at[fs] = now
        for zfs in (src, dst):
            zfs.journal = []
        self._seen = seen
        return out["source"], out["destination"]

    # -------------------------------------------------------------------------- writing

    def cycle_done(self, cp: CyclePlan) -> None:
        """After a cycle that went through: keep what the next listing would show, read
        back what ZFS alone knows (the new snapshots' GUIDs, the values after the
        cycle's last change). Failing here fails nothing: the cache is dropped."""
        seen, self._seen = self._seen, None
        small, self._small = self._small, None
        if self.path is None:
            return
        if small is not None:
            if small >= MIN_SNAPSHOTS:
                self._remove()  # the next cycle looks, and keeps what it lists
            return
        if seen is None:
            return
        if self.service.listing_cache == "auto" \
                and snapshot_count([s.states for s in seen.values()]) < MIN_SNAPSHOTS:
            for zfs in self.zfs.values():
                zfs.journal = None
            self._write(Kept(self._key(), small=True))
            return
        try:
            kept = self._predicted(cp, seen)
        except ZfsreplError as exc:
            logger.debug("listing cache not kept: %s", exc)
            self.discard()
            return
        except Exception as exc:  # the cycle went through: a fault here never fails it
            logger.warning("listing cache not kept (%s: %s); the next cycle lists in full",
                           type(exc).__name__, exc)
            self.discard()
            return
        self._write(kept)

    def _write(self, kept: Kept) -> None:
        assert self.path is not None
        try:
            write_atomically(self.path, encode(kept), mode=0o600)
        except (OSError, UnsafePath) as exc:
            logger.warning("cannot write the listing cache %s: %s", self.path,
                           getattr(exc, "strerror", None) or exc)

    def _predicted(self, cp: CyclePlan, seen: dict[str, _Seen]) -> Kept:
        src, dst = self.zfs["source"], self.zfs["destination"]
        changes = {side: changes_of(self.zfs[side].journal or []) for side in SIDES}
        for zfs in (src, dst):
            zfs.journal = None
        src_fs = list(seen["source"].states)
        values_src, taken = src.changed_after(src_fs, sorted(changes["source"].created))
        after = dst.changed(list(seen["destination"].states))
        values = {"source": values_src,
                  "destination": {fs: v for fs, (v, _) in (after or {}).items()}}
        came = arrivals(cp, taken)
        kept = Kept(self._key())
        for side in SIDES:
            for fs, st in seen[side].states.items():
                value = values[side].get(fs)
                if value is None:
                    continue
                if side == "destination":
                    arrived = came.get(fs, [])
                    if arrived is None:
                        continue
                    if st is None and arrived:  # created by a full stream
                        st = FsState()
                    if fs not in _touched(changes[side]) and not arrived \
                            and value != seen[side].changed.get(fs):
                        continue  # moved, and not by this cycle
                else:
                    arrived = []
                    if fs not in _touched(changes[side]) \
                            and value != seen[side].changed.get(fs):
                        continue
                if st is None:
                    continue
                result = after_changes(fs, st.snapshots, st.bookmarks, changes[side],
                                       arrived, taken)
                if result is not None:
                    kept.entries[side][fs] = Entry(value, seen[side].listed_at[fs],
                                                   *result)
        return kept

    def discard(self) -> None:
        """Forget the kept listings."""
        self._seen = None
        for zfs in self.zfs.values():
            zfs.journal = None
        self._remove()

    def _remove(self) -> None:
        if self.path is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove the listing cache %s: %s", self.path,
                           exc.strerror)
