"""The executor of a cycle's plan: hooks and snapshots, the streams (through the
stream seam, cyclehosts.Streams), the incremental bases held and bookmarked, and
retention's destroys, with `parallel` filesystems at once where the definition asks.
What to destroy and where the bases move is decided by cycleplan.after."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from zfsrepl import cycleplan, hooks, plan, retention
from zfsrepl.capabilities import compress_argv
from zfsrepl.config import FilesystemPair
from zfsrepl.cyclehosts import CycleHosts
from zfsrepl.cycleplan import CyclePlan, FilesystemPlan, wire_configured
from zfsrepl.errors import CommandError, ZfsreplError
from zfsrepl.log import logger
from zfsrepl.replication import Replication
from zfsrepl.transfer import Cancel, Progress, TransferResult, Watchdog
from zfsrepl.zfs import Zfs
from zfsrepl.zfserrors import HasClones, NotResumable

# After a stop request cut the streams in flight: how long to wait for the worker
# threads to unwind (each waits for its processes, at most host.stop_process's grace).
_STOP_WAIT = 15.0

T = TypeVar("T")
Item = TypeVar("Item")


@dataclass(frozen=True)
class Prune:
    """What retention destroys of one filesystem, and which of it carries this
    service's hold (released first)."""

    pair: FilesystemPair
    destroy_source: tuple[str, ...]
    destroy_destination: tuple[str, ...]
    held_source: frozenset[str]
    held_destination: frozenset[str]

    @classmethod
    def planned(cls, fp: FilesystemPlan) -> Prune:
        return cls(fp.pair, fp.destroy_source, fp.destroy_destination, fp.held_source,
                   fp.held_destination)


class Snapshots:
    def __init__(self, hosts: CycleHosts) -> None:
        self.h = hosts

    def take(self, cp: CyclePlan) -> CyclePlan:
        """pre hook, one snapshot per filesystem (all in one call where the host can),
        post hook; the plan with the snapshot's creation time.

        The post hook runs whenever the pre hook was started, even if it or a snapshot
        failed: a database put into backup mode must always be taken out of it."""
        rep, src = self.h.rep, self.h.src
        snapshot = cp.snapshot
        assert snapshot is not None
        sources = [pair.source for pair in rep.filesystems if pair.source not in cp.skipped]
        taken = 0

        def take() -> None:
            nonlocal taken
            taken = int(time.time())
            if src.capabilities().multi_snapshot:
                # One call for all: OpenZFS takes them atomically, so the filesystems'
                # snapshots are of one consistent point in time (or none is taken).
                src.snapshot_all(sources, snapshot)
                for fs in sources:
                    logger.info("snapshot %s@%s taken", fs, snapshot)
            else:
                for fs in sources:
                    src.snapshot(fs, snapshot)
                    logger.info("snapshot %s@%s taken", fs, snapshot)

        between_hooks(rep, sources, snapshot, take)
        return cp.stamped(taken)


def between_hooks(rep: Replication, sources: Sequence[str], snapshot: str,
                  take: Callable[[], None]) -> None:
    """The pre hook, `take` (the snapshots of `sources`), the post hook. The post hook
    runs whenever the pre hook was started, even if it or a snapshot failed: a database
    put into backup mode must always be taken out of it."""
    svc = rep.service
    env = {"ZFSREPL_SERVICE": svc.name, "ZFSREPL_SNAPSHOT": snapshot,
           "ZFSREPL_FILESYSTEMS": "\n".join(sources)}
    failure: ZfsreplError | None = None
    try:
        if rep.pre_snapshot:
            hooks.run_hook("pre_snapshot", rep.pre_snapshot,
                           {**env, "ZFSREPL_PHASE": "pre_snapshot"}, svc.hook_timeout)
        take()
    except ZfsreplError as exc:
        failure = exc
    finally:
        if rep.post_snapshot:
            status = "failed" if failure else "ok"
            hooks.run_hook("post_snapshot", rep.post_snapshot,
                           {**env, "ZFSREPL_PHASE": "post_snapshot",
                            "ZFSREPL_SNAPSHOT_STATUS": status}, svc.hook_timeout)
    if failure:
        raise failure


class Transfers:
    def __init__(self, hosts: CycleHosts) -> None:
        self.h = hosts

    def stream(self, fp: FilesystemPlan, s: plan.Send,
               cancel: Cancel | None = None) -> TransferResult:
        """One stream from the source to the destination, with the best options both
        sides offer. `cancel`: the stream runs in a worker thread, beside others."""
        h = self.h
        src, dst, svc = h.src, h.dst, h.rep.service
        src_fs, dst_fs = fp.pair.source, fp.pair.destination
        src_caps, dst_caps = src.capabilities(), dst.capabilities()
        raw = fp.encrypted and src_caps.raw_send and dst_caps.raw_send
        if fp.encrypted and not raw:
            logger.warning("%s is encrypted but %s cannot receive raw streams: sending it "
                           "decrypted", src_fs, dst.label)
        compressed = not raw and src_caps.compressed and dst_caps.compressed
        resuming = s.token is not None
        what = f"{s.describe()} of {src_fs} to {dst.label}:{dst_fs}"
        if cancel is not None:
            cancel.check(what)
        wire = h.wire()
        shown = f" (wire: {wire.describe(raw)})" if wire_configured(svc) else ""
        logger.info("starting %s%s%s", what, " (raw)" if raw else "", shown)

        def estimate() -> int | None:
            return src.estimate(src_fs, s, raw=raw, compressed=compressed)

        receive = {"incremental": s.base is not None, "resumable": h.resumable(),
                   "readonly": h.readonly_replica(dst_caps) and not resuming}
        helpers = wire.helpers(raw)
        compression = wire.for_stream(raw)
        result = h.streams.pipe(
            src.send_argv(src_fs, s, raw=raw, compressed=compressed),
            dst.receive_pipeline_argv(dst_fs, helpers, agent=wire.agent, **receive)
            if helpers else dst.receive_argv(dst_fs, **receive),
            what, progress=Progress(f"{src_fs}@{s.target or '(resumed)'}",
                                    estimate=estimate if src_caps.estimate else None,
                                    concurrent=cancel is not None),
            limit=svc.bandwidth_limit,
            compressor=compress_argv(compression) if compression else None,
            cancel=cancel,
            watchdog=Watchdog(svc.stall_timeout, sender=f"zfs send on {src.label}",
                              receiver=f"zfs receive on {dst.label}"))
        size = "" if result.bytes is None else f", {result.bytes} bytes"
        if result.bytes is not None and result.stream_bytes is not None:
            size += f" on the wire ({result.stream_bytes} before {compression})"
        logger.info("finished %s in %.1fs%s", what, result.seconds, size)
        h.events.sent(fp.pair, result)
        return result

    def send(self, fp: FilesystemPlan, cancel: Cancel | None = None) -> bool:
        """Send what `fp` plans, stream after stream; True when the filesystem needs
        another look (a cut stream was resumed, or a token that cannot be resumed was
        discarded). The base moves afterwards, for all filesystems at once."""
        if isinstance(fp.plan, plan.Resume):
            return self._resume(fp, fp.plan.sends[0], cancel)
        for s in fp.plan.sends:
            self.stream(fp, s, cancel)
        return False

    def _resume(self, fp: FilesystemPlan, s: plan.Send, cancel: Cancel | None) -> bool:
        try:
            self.stream(fp, s, cancel)
        except CommandError as exc:
            if cancel is not None and cancel.cancelled:
                raise  # stopping: the token stays for the next cycle
            if not isinstance(exc, NotResumable):
                raise  # cut again: the next attempt resumes from the new token
            self.h.dst.abort_resumable(fp.pair.destination)
            logger.warning("the cut transfer to %s:%s cannot be resumed (%s): discarded it "
                           "(receive -A); the transfer starts over", self.h.dst.label,
                           fp.pair.destination, exc)
        return True


Moved = list[tuple[FilesystemPlan, str]]  # (filesystem, its new base)


class Bases:
    def __init__(self, hosts: CycleHosts) -> None:
        self.h = hosts

    def moved(self, moved: Moved) -> dict[int, tuple[frozenset[str], frozenset[str]]]:
        """Each (fp, base): the newest replicated snapshot of fp is now `base`. On each
        side, one call holds every new base, then one releases the old bases (in that
        order: a base is never left unheld); each base is bookmarked on the source (up
        to `parallel` at once).
        Failing here fails no transfer. Returns, by id() of each fp whose holds moved on
        a side, the own snapshots still held on (source, destination) afterwards."""
        held = {id(fp): (fp.held_source, fp.held_destination) for fp, _ in moved}
        if not moved:
            return held
        for zfs, side in ((self.h.src, "source"), (self.h.dst, "destination")):
            if not zfs.capabilities().holds:
                continue
            for fp, base in self._move_holds(zfs, side, moved):
                # the old bases' holds are gone: retention may destroy them
                src_held, dst_held = held[id(fp)]
                held[id(fp)] = ((src_held & {base}, dst_held) if side == "source"
                                else (src_held, dst_held & {base}))
        if not self.h.src.capabilities().bookmarks:
            return held
        if self.h.src.takes_many_bookmarks(len(moved)):
            self._bookmark_all(moved)  # one transaction group for them all
        else:
            # each waits for its transaction group: side by side with `parallel`
            each(self.h, moved, lambda item, cancel: self._bookmark(*item))
        return held

    def _move_holds(self, zfs: Zfs, side: str, moved: Moved) -> Moved:
        """Hold the new bases on one side, then release the old ones; those of `moved`
        whose holds moved. A batch that fails is tried again one filesystem at a time, so
        one filesystem's trouble leaves the others' holds moving as before."""
        new: list[str] = []
        old: list[str] = []
        for fp, base in moved:
            fs = fp.pair.source if side == "source" else fp.pair.destination
            held = fp.held_source if side == "source" else fp.held_destination
            new.append(f"{fs}@{base}")
            old += [f"{fs}@{name}" for name in sorted(held - {base})]
        try:
            zfs.hold(self.h.tag, new)
            if old:
                zfs.release(self.h.tag, old)
        except ZfsreplError as exc:
            if len(moved) > 1:
                logger.debug("batched hold/release on %s failed (%s): one at a time",
                             zfs.label, exc)
                # holding and releasing again what went through is harmless
                return [ok for one in moved for ok in self._move_holds(zfs, side, [one])]
            # an old base that is still held stays held: retention releases it
            logger.warning("moving the hold to %s on %s: %s", new[0], zfs.label, exc)
            return []
        return moved

    def _bookmark(self, fp: FilesystemPlan, base: str) -> None:
        src, src_fs = self.h.src, fp.pair.source
        try:
            src.bookmark(src_fs, base)
            for old in retention.stale_bookmarks(list(fp.bookmarks), self.h.rep.naming, base):
                src.destroy_bookmark(src_fs, old)
        except ZfsreplError as exc:
            logger.warning("bookmarking @%s of %s: %s", base, src_fs, exc)


    def _bookmark_all(self, moved: Moved) -> None:
        """`_bookmark` of every one of `moved` in two requests: the new bookmarks, then
        the stale ones destroyed."""
        src = self.h.src
        stale: list[str] = []
        made = src.bookmarks([(fp.pair.source, base) for fp, base in moved])
        for (fp, base), error in zip(moved, made):
            if error is not None:
                logger.warning("bookmarking @%s of %s: %s", base, fp.pair.source, error)
                continue
            stale += [f"{fp.pair.source}#{old}" for old in
                      retention.stale_bookmarks(list(fp.bookmarks), self.h.rep.naming, base)]
        for name, error in zip(stale, src.destroy_bookmarks(stale)):
            if error is not None:
                logger.warning("destroying the old bookmark %s: %s", name, error)


def prune(hosts: CycleHosts, job: Prune, cancel: Cancel | None = None, *,
          source: bool = True, destination: bool = True) -> None:
    """Destroy what retention chose for one filesystem on the sides asked. `cancel`: in
    a worker thread (see `each`); stops between two snapshots once cancelled."""
    sides = []
    if source:
        sides.append((hosts.src, job.pair.source, job.destroy_source, job.held_source))
    if destination:
        sides.append((hosts.dst, job.pair.destination, job.destroy_destination,
                      job.held_destination))
    for zfs, fs, names, held in sides:
        for name in names:
            if cancel is not None:
                cancel.check(f"destroying {fs}@{name} on {zfs.label}")
            if name in held:
                zfs.release(hosts.tag, [f"{fs}@{name}"])  # only this service's own hold
            try:
                zfs.destroy_snapshot(fs, name)
            except HasClones:
                # the origin of a replica renamed aside by `doctor --fix` (repair.py):
                # kept while that lives; the snapshots after it are pruned as usual
                logger.info("kept %s@%s on %s: a clone of it exists (a diverged replica "
                            "renamed aside?)", fs, name, zfs.label)
                continue
            logger.info("destroyed %s@%s on %s", fs, name, zfs.label)


def prune_together(hosts: CycleHosts, jobs: Sequence[Prune], *, source: bool) -> None:
    """One side's part of every job's prune at once: one release of this service's
    holds among them, then one request destroying them all (see
    Zfs.destroy_snapshots); a failure is logged and fails nothing."""
    zfs = hosts.src if source else hosts.dst
    doomed = [(job.pair.source if source else job.pair.destination, job.pair.source,
               job.destroy_source if source else job.destroy_destination,
               job.held_source if source else job.held_destination) for job in jobs]
    source_of = {fs: src_fs for fs, src_fs, _, _ in doomed}
    names = [f"{fs}@{n}" for fs, _, destroy, _ in doomed for n in destroy]
    held = [f"{fs}@{n}" for fs, _, destroy, held in doomed for n in destroy if n in held]
    if held:
        try:
            zfs.release(hosts.tag, held)  # only this service's own holds
        except ZfsreplError as exc:
            logger.warning("retention on %s: %s", zfs.label, exc)
            names = [n for n in names if n not in held]  # still held: kept for now
    for name, outcome in zip(names, zfs.destroy_snapshots(names)):
        fs, _, snap = name.partition("@")
        if outcome is None:
            logger.info("destroyed %s@%s on %s", fs, snap, zfs.label)
        elif isinstance(outcome, HasClones):
            logger.info("kept %s@%s on %s: a clone of it exists (a diverged replica "
                        "renamed aside?)", fs, snap, zfs.label)
        else:
            # A snapshot left over is destroyed by a later cycle; it fails nothing.
            logger.warning("retention on %s: %s", source_of[fs], outcome)


def each(hosts: CycleHosts, items: Sequence[Item],
         work: Callable[[Item, Cancel | None], T]) -> list[T | ZfsreplError]:
    """`work(item, cancel)` for each of `items` (one per filesystem), up to `parallel`
    at once: what each returned, or the ZfsreplError it raised, in order (one
    filesystem's failure stops no other). Any other exception (a stop request, a bug) is
    raised after the others were cut, as below.

    One at a time, it runs in this thread with no `cancel`: a stop request raises right
    inside the transfer, whose `finally` ends it. Several at once, each runs in a worker
    thread, handed out from this one as a worker becomes free. A stop request (which
    Python raises in the main thread, here while it waits) cuts them all through
    `cancel`: every process of every stream in flight is terminated and nothing new
    starts; the workers are given time to unwind (each waits for its processes) before
    the request goes on up, where the ssh connection is closed."""
    width = min(hosts.rep.service.parallel, len(items))
    if width <= 1:
        return [_outcome(work, item, None) for item in items]
    # What the streams need to know of both hosts is probed and kept here: the
    # workers only read it.
    hosts.wire()
    hosts.src.capabilities()
    hosts.dst.capabilities()
    return _in_workers(hosts, items, work, width)


def _in_workers(hosts: CycleHosts, items: Sequence[Item],
                work: Callable[[Item, Cancel | None], T], width: int
                ) -> list[T | ZfsreplError]:
    cancel = Cancel()
    outcomes: dict[int, T | ZfsreplError] = {}
    running: dict[concurrent.futures.Future[T | ZfsreplError], int] = {}
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=width, thread_name_prefix=f"zfsrepl-{hosts.rep.service.name}")
    waiting = list(enumerate(items))[::-1]  # popped from the end: in order
    try:
        while waiting or running:
            while waiting and len(running) < width:
                i, item = waiting.pop()
                try:
                    hosts.connected()
                except ZfsreplError as exc:
                    outcomes[i] = exc
                    continue
                running[pool.submit(_outcome, work, item, cancel)] = i
            if not running:
                continue
            done, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                outcomes[running.pop(future)] = future.result()
    except BaseException:
        cut = cancel.cancel()
        logger.info("stopping: cut %d process(es) of the transfers in flight", cut)
        _, left = concurrent.futures.wait(running, timeout=_STOP_WAIT)
        if left:
            logger.warning("stopping: %d filesystem(s) still busy after %gs",
                           len(left), _STOP_WAIT)
        raise
    finally:
        pool.shutdown(wait=False)
    return [outcomes[i] for i in range(len(items))]


def _outcome(work: Callable[[Item, Cancel | None], T], item: Item,
             cancel: Cancel | None) -> T | ZfsreplError:
    try:
        return work(item, cancel)
    except ZfsreplError as exc:
        return exc


class Executor:
    """Carries out a cycle's plan."""

    def __init__(self, hosts: CycleHosts) -> None:
        self.h = hosts
        self.snapshots = Snapshots(hosts)
        self.transfers = Transfers(hosts)
        self.bases = Bases(hosts)

    def send_and_prune(self, cp: CyclePlan) -> bool:
        """Send every filesystem, even when another one fails (up to `parallel` at
        once); then move the bases of those sent (holds batched across filesystems);
        then prune each (up to `parallel` at once). True when a filesystem needs another
        look (a resumed stream, see Transfers.send)."""
        fps = cp.filesystems
        outcomes = each(self.h, fps, self.transfers.send)
        # a filesystem whose send failed keeps its base where it was, held as it was
        failures = [str(o) for o in outcomes if isinstance(o, ZfsreplError)]
        again = any(o is True for o in outcomes)
        afters = cycleplan.after(cp, [not isinstance(o, ZfsreplError) for o in outcomes])
        moved = [(fp, a.base) for fp, a in zip(fps, afters) if a.base is not None]
        # Before any prune: retention releases only what is still held.
        held = self.bases.moved(moved)
        jobs = [Prune(fp.pair, a.destroy_source, a.destroy_destination,
                      *held.get(id(fp), (fp.held_source, fp.held_destination)))
                for fp, a in zip(fps, afters)]
        # A side's destroys in one request where it takes that: the destination's agent
        # (a session and an agent's start saved each), libzfs_core here (a transaction
        # group each).
        src_together = self.h.src.takes_many_destroys(sum(len(j.destroy_source)
                                                          for j in jobs))
        dst_together = self.h.dst.takes_many_destroys(sum(len(j.destroy_destination)
                                                          for j in jobs))
        if not (src_together and dst_together):
            alone = partial(self.prune, source=not src_together,
                            destination=not dst_together)
            for fp, pruned in zip(fps, each(self.h, jobs, alone)):
                if isinstance(pruned, ZfsreplError):
                    # A snapshot left over is destroyed by a later cycle; it fails nothing.
                    logger.warning("retention on %s: %s", fp.pair.source, pruned)
        if src_together:
            prune_together(self.h, jobs, source=True)
        if dst_together:
            prune_together(self.h, jobs, source=False)
        if failures:
            raise CommandError("; ".join(failures))
        return again

    def prune(self, job: Prune, cancel: Cancel | None = None, *,
              source: bool = True, destination: bool = True) -> None:
        prune(self.h, job, cancel, source=source, destination=destination)
