"""One replication cycle of a service: survey, hooks, snapshot, send, prune.

Everything that can be known to fail is checked before anything changes: both
sides are listed (one call each), missing filesystems and parents and chain
conflicts are found, and only then are hooks run and snapshots taken.

What each host's ZFS offers is probed once per connection (capabilities.py) and
the best of it used: resumable receives, bookmarks and holds of the incremental
base, raw sends of encrypted filesystems, compressed streams, a read-only replica.
Where the definition asks for wire compression or a buffer, which of the tools for
them each host has is looked up once too, and what both sides have is used.

With `parallel` > 1 the sends of up to that many filesystems run at once, each in a
worker thread (a filesystem's own streams stay in order, in one thread), and so do
the prunes afterwards; holds, releases and bookmarks still go in their batches between
the two, from the main thread. Most of what a filesystem costs is latency (process
starts, ssh round trips, zfs's own per-command cost), which overlaps well. A stop
request (a signal, handled in the main thread) cuts every stream in flight.

Nothing of a cycle waits forever: a stream that stalls is cut by its watchdog
(`stall_timeout` without a byte moving, see transfer.Watchdog), and every other
command on either host is cut when it runs longer than `command_timeout`; either
fails the attempt, and the retries take over.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ContextManager, TypeVar

from zfsrepl import chain, diagnosis, hooks, plan, retention, unchanged
from zfsrepl.capabilities import Capabilities, compress_argv, format_buffer_size
from zfsrepl.config import FilesystemPair, Service
from zfsrepl.errors import CommandError, ReplicationError, UsageError, ZfsreplError
from zfsrepl.host import NO_TOOLS, Host, LocalHost, SshHost
from zfsrepl.log import alarm, logger
from zfsrepl.snapshots import Snapshot
from zfsrepl.transfer import (
    Cancel,
    Progress,
    TransferResult,
    Watchdog,
    Wire,
    choose_wire,
    pipe,
)
from zfsrepl.zfs import ENCRYPTION, RESUME_TOKEN, CapabilityCache, FsState, Zfs
from zfsrepl.zfserrors import HasClones, NotResumable

# How often one attempt continues after a resumed stream (each resume may reveal
# another cut stream only if something else cut it meanwhile).
_MAX_FOLLOW_UPS = 3
# After a stop request cut the streams in flight: how long to wait for the worker
# threads to unwind (each waits for its processes, at most host.stop_process's grace).
_STOP_WAIT = 15.0
# A command other than a stream (a listing, a snapshot, a destroy, a hold) shows no
# progress while it runs: it may take stall_timeout, and never less than this (a busy
# host lists thousands of snapshots, or frees a large one, in tens of seconds).
MIN_COMMAND_TIMEOUT = 60
# The source hosts this process already said has no `written` for skip_unchanged: said
# once for the life of `zfsrepl run`, though a failed attempt has every host probed again.
_SAID_NO_WRITTEN: set[str] = set()

T = TypeVar("T")


def command_timeout(service: Service) -> float:
    """How long a command of a cycle of `service` may run before it is cut."""
    return float(max(service.stall_timeout, MIN_COMMAND_TIMEOUT))


def _bound_commands(host: Host, seconds: float) -> None:
    # A bound for the commands whose callers name none: every command of zfs.py.
    if isinstance(host, (LocalHost, SshHost)):
        host.command_timeout = seconds


def hold_tag(service: str) -> str:
    """This service's hold tag on the incremental base."""
    return f"zfsrepl-{service}"


@dataclass
class FilesystemPlan:
    pair: FilesystemPair
    source: list[Snapshot]  # including the snapshot this cycle takes
    destination: list[Snapshot] | None
    plan: plan.Plan
    destroy_source: tuple[str, ...] = ()
    destroy_destination: tuple[str, ...] = ()
    bookmarks: tuple[Snapshot, ...] = ()  # the source's bookmarks of this filesystem
    encrypted: bool = False  # the source filesystem is encrypted: send raw
    # own snapshots that carry this service's hold, on each side
    held_source: frozenset[str] = field(default_factory=frozenset)
    held_destination: frozenset[str] = field(default_factory=frozenset)


@dataclass
class CyclePlan:
    service: Service
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
        svc = self.service
        lines = [f"service {svc.name}: {svc.source.user}@{svc.source.host} -> "
                 f"{svc.destination.user}@{svc.destination.host}"]
        if self.wire is not None:
            lines.append(f"wire: {wire_text(svc, self.wire)}")
        if svc.parallel > 1:
            lines.append(f"parallel: up to {svc.parallel} filesystems sent at once")
        if self.snapshot:
            lines.append(f"snapshot @{self.snapshot} of: "
                         + ", ".join(fp.pair.source for fp in self.filesystems
                                     if fp.pair.source not in self.skipped))
        for fp in self.filesystems:
            p = fp.plan
            if isinstance(p, (plan.NoCommonSnapshot, plan.Diverged)):
                what = "CONFLICT: " + p.explain(fp.pair.source, fp.pair.destination)
            elif isinstance(p, plan.UpToDate) and fp.pair.source in self.skipped:
                what = f"unchanged since @{p.common}: no snapshot (skip_unchanged)"
            elif isinstance(p, plan.UpToDate):
                what = f"up to date at @{p.common}"
            elif isinstance(p, plan.NothingToSend):
                what = "nothing to send"
            else:
                what = "; ".join(s.describe() for s in p.sends)
            lines.append(f"{fp.pair.source} -> {fp.pair.destination}: {what}")
            lines += [f"  destroy on source: {fp.pair.source}@{n}" for n in fp.destroy_source]
            lines += [f"  destroy on destination: {fp.pair.destination}@{n}"
                      for n in fp.destroy_destination]
        return lines


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


def _with_new_snapshot(snaps: list[Snapshot], fs: str, name: str,
                       marks: tuple[Snapshot, ...] = ()) -> list[Snapshot]:
    """`snaps` and the snapshot about to be taken: newer than every snapshot and
    bookmark (`marks`) there is."""
    top = max((s.createtxg for s in (*snaps, *marks)), default=0)
    return [*snaps, Snapshot(filesystem=fs, name=name, guid=None, createtxg=top + 1,
                             creation=int(time.time()))]


def destination_after(fp: FilesystemPlan) -> list[Snapshot] | None:
    """The destination's snapshots once `fp`'s sends and destroys went through, from
    what the cycle already knows (its listing and its plan), without listing again.
    None: the destination filesystem does not exist and receives nothing. What a
    resumed stream brings is not known here (the next cycle's listing shows it)."""
    after = chain.receive(fp.destination, _received(fp), fp.pair.destination)
    gone = set(fp.destroy_destination)
    return None if after is None else [s for s in after if s.name not in gone]


def _received(fp: FilesystemPlan) -> list[Snapshot]:
    """The source snapshots `fp`'s sends bring over, oldest first."""
    by_name = {s.name: s for s in fp.source}
    return [by_name[n] for n in plan.received_names(fp.plan, fp.source)]


def _prune(fp: FilesystemPlan, svc: Service, sent_ok: bool) -> None:
    """Fill in what retention destroys on each side once the sends went as planned
    (`sent_ok`), or as things stand when they did not."""
    naming = svc.naming
    if isinstance(fp.plan, plan.Resume):
        # What the resumed stream brings shows in the next listing: prune then.
        fp.destroy_source = fp.destroy_destination = ()
        return
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
        pending = plan.received_names(fp.plan, fp.source)
        protected += pending
    fp.destroy_source = retention.decide(fp.source, naming, svc.keep_source, protected,
                                         fp.held_source).destroy
    if dst_after is not None and common is not None:
        fp.destroy_destination = retention.decide(dst_after, naming, svc.keep_destination,
                                                  protected, fp.held_destination).destroy
    else:
        fp.destroy_destination = ()


def _new_base(fp: FilesystemPlan) -> str | None:
    """The newest snapshot `fp`'s sends replicated: the new incremental base (None: the
    base did not move; a resumed stream's end shows in the next listing)."""
    if isinstance(fp.plan, plan.Resume) or not fp.plan.sends:
        return None
    return plan.received_names(fp.plan, fp.source)[-1]


def _stamp_creation(cp: CyclePlan, taken: int) -> None:
    """The snapshot just taken was created at `taken`, not when the survey planned it
    (hooks ran between): the lag recorded after the cycle counts from then."""
    for fp in cp.filesystems:
        fp.source = [dataclasses.replace(s, creation=taken)
                     if s.name == cp.snapshot and s.guid is None else s for s in fp.source]


class CycleEvents:
    """What the long-running service learns of a cycle as it goes; the defaults do nothing."""

    def attempt_failed(self, attempt: int, attempts: int, error: ZfsreplError) -> None:
        """An attempt failed (the last one too, before the error is raised)."""

    def sent(self, pair: FilesystemPair, result: TransferResult) -> None:
        """One stream reached the destination. Called from worker threads when the
        service sends several filesystems at once (`parallel`): must be thread-safe."""

    def snapshot_phase(self) -> ContextManager[None]:
        """Wraps hooks and snapshots, which a stop request must not cut in half."""
        return contextlib.nullcontext()


class Cycle:
    """The replication of one service between a source and a destination host."""

    def __init__(self, service: Service, source: Host, destination: Host,
                 events: CycleEvents | None = None,
                 capabilities: CapabilityCache | None = None) -> None:
        self.service = service
        self.events = events or CycleEvents()
        for host in (source, destination):
            _bound_commands(host, command_timeout(service))
        self.src = Zfs(source, service.source.zfs_argv, capabilities)
        self.dst = Zfs(destination, service.destination.zfs_argv, capabilities)
        self.tag = hold_tag(service.name)
        self._wire: Wire | None = None

    # -- survey ---------------------------------------------------------------------

    def survey(self, take_snapshot: bool) -> CyclePlan:
        """List both sides and decide everything; raises before anything changes."""
        svc = self.service
        hooks.check_executable("pre_snapshot", svc.pre_snapshot, svc.path)
        hooks.check_executable("post_snapshot", svc.post_snapshot, svc.path)
        pairs = list(svc.filesystems)
        # the source first: its listing is local, done while the destination's ssh
        # connection may still be opening
        src_caps = self.src.capabilities()
        src_states = self.src.states([p.source for p in pairs],
                                     (ENCRYPTION,) if src_caps.raw_send else ())
        dst_states = self.dst.states([p.destination for p in pairs],
                                     (RESUME_TOKEN,) if self._resumable() else ())
        dst_lists = {fs: (st.snapshots if st else None) for fs, st in dst_states.items()}
        dst_roles = {fs: st.role for fs, st in dst_states.items() if st and st.role}
        # The interlock: a destination that took over by failover is never overwritten.
        taken = [p.destination for p in pairs
                 if dst_roles.get(p.destination) == diagnosis.ROLE_TAKEN_OVER]
        if taken:
            raise ReplicationError(diagnosis.interlock_problem(
                taken, svc.name, diagnosis.Side("destination", svc.destination.host,
                                                svc.destination.user)))
        src_lists = {fs: (st.snapshots if st else None) for fs, st in src_states.items()}

        missing_src = [p.source for p in pairs if src_lists[p.source] is None]
        if missing_src:
            raise ReplicationError(
                f"source filesystem {', '.join(missing_src)} does not exist on {self.src.label}:"
                " create it, or correct [[filesystem]] source in the definition")
        missing_dst = [p.destination for p in pairs if dst_lists[p.destination] is None]
        parents = sorted({d.rsplit("/", 1)[0] for d in missing_dst})
        absent = sorted(set(parents) - self.dst.existing(parents))
        if absent:
            raise ReplicationError(
                f"destination parent {', '.join(absent)} does not exist on {self.dst.label}:"
                f" create it there (zfs create -p {absent[0]}) or correct [[filesystem]]"
                " destination in the definition")

        skip: frozenset[str] = frozenset()
        unchanged_at = None
        if take_snapshot and svc.skip_unchanged:
            unchanged_at = int(time.time())
            skip = self._unchanged(pairs, src_states, dst_states)
        snapshot = None
        if take_snapshot and len(skip) < len(pairs):
            seq = plan.next_sequence(
                svc.naming, *(s for s in src_lists.values() if s),
                *(s for s in dst_lists.values() if s))
            snapshot = svc.naming.format(seq)

        held_src = self._own_holds(self.src, [s for s in src_lists.values() if s])
        held_dst = self._own_holds(self.dst, [s for s in dst_lists.values() if s])
        fps: list[FilesystemPlan] = []
        for pair in pairs:
            src_state, dst_state = src_states[pair.source], dst_states[pair.destination]
            src = src_lists[pair.source] or []
            marks = tuple(src_state.bookmarks) if src_state else ()
            if snapshot and pair.source not in skip:
                src = _with_new_snapshot(src, pair.source, snapshot, marks)
            dst = dst_lists[pair.destination]
            token = dst_state.resume_token if dst_state else None
            fp = FilesystemPlan(
                pair, src, dst,
                plan.plan_filesystem(src, dst, svc.naming, bookmarks=marks,
                                     resume_token=token),
                bookmarks=marks, encrypted=bool(src_state and src_state.encrypted),
                held_source=frozenset(held_src.get(pair.source, ())),
                held_destination=frozenset(held_dst.get(pair.destination, ())))
            _prune(fp, svc, sent_ok=True)
            fps.append(fp)
        return CyclePlan(svc, snapshot, fps, self.wire() if wire_configured(svc) else None,
                         skip, unchanged_at if skip else None)

    def _unchanged(self, pairs: list[FilesystemPair], src_states: dict[str, FsState | None],
                   dst_states: dict[str, FsState | None]) -> frozenset[str]:
        """skip_unchanged: the source filesystems with nothing written since their
        newest snapshot, which the destination holds (unchanged.py). One `zfs get written`
        for those that could be, after the listing: a snapshot of another's taken in
        between makes the next cycle's listing see it, and that cycle sends."""
        srcs = {fs: st.snapshots if st else None for fs, st in src_states.items()}
        dsts = {fs: st.snapshots if st else None for fs, st in dst_states.items()}
        marks = {p.source: tuple(st.bookmarks) for p in pairs
                 if (st := src_states[p.source]) is not None}
        tokens = {p.destination: st.resume_token for p in pairs
                  if (st := dst_states[p.destination]) is not None}
        naming = self.service.naming
        both = [(p.source, p.destination) for p in pairs]
        # those that would be skipped if nothing was written: only they are asked about
        candidates = unchanged.skipped(dict.fromkeys(srcs, 0), srcs, dsts, both, naming,
                                       bookmarks=marks, tokens=tokens)
        if not candidates:
            return frozenset()
        written = self.src.written(sorted(candidates))
        if written is None:
            if self.src.label not in _SAID_NO_WRITTEN:
                _SAID_NO_WRITTEN.add(self.src.label)
                logger.warning("skip_unchanged has no effect: ZFS on %s has no 'written' "
                               "property (pool version 23, zfs-fuse); every filesystem gets "
                               "its snapshot each cycle", self.src.label)
            return frozenset()
        skip = unchanged.skipped(written, srcs, dsts, both, naming, bookmarks=marks,
                                 tokens=tokens)
        if skip:
            logger.info("skip_unchanged: %d of %d filesystem(s) unchanged since their last "
                        "snapshot: no snapshot, send or destroy for them this cycle",
                        len(skip), len(pairs))
        return skip

    def wire(self) -> Wire:
        """How this cycle's streams cross the network: what the definition asks for, as
        far as both hosts have the tools (looked up once per connection; a missing tool
        is a WARNING, and the stream goes without it)."""
        if self._wire is None:
            svc = self.service
            if not wire_configured(svc):
                self._wire = Wire()
            else:
                src_tools = self.src.tools() if svc.wire_compression != "none" else NO_TOOLS
                self._wire, notes = choose_wire(svc.wire_compression, svc.buffer,
                                                self.src.label, src_tools,
                                                self.dst.label, self.dst.tools())
                for level, message in notes:
                    logger.log(level, "%s", message)
        return self._wire

    def forget_probes(self) -> None:
        """Probe both hosts again (after a failed attempt: a host may have changed)."""
        self.src.forget_capabilities()
        self.dst.forget_capabilities()
        self._wire = None

    def _readonly_replica(self, dst_caps: Capabilities) -> bool:
        """A new replica is made read-only, where receive can set properties; not when
        replicating back (failback): the receiving side is then the original source."""
        return dst_caps.recv_props and self.service.role != "destination"

    def _resumable(self) -> bool:
        return self.dst.capabilities().resume and self.src.capabilities().resume

    def _own_holds(self, zfs: Zfs, lists: list[list[Snapshot]]) -> dict[str, set[str]]:
        """filesystem -> own snapshots that carry this service's hold (one call, only
        where the host lists holds and some own snapshot is held at all)."""
        if not zfs.capabilities().holds:
            return {}
        held = [s for snaps in lists for s in snaps
                if s.userrefs > 0 and self.service.naming.is_ours(s.name)]
        out: dict[str, set[str]] = {}
        tags = zfs.holds(held) if held else {}
        for snap in held:
            if self.tag in tags.get(snap.full_name, set()):
                out.setdefault(snap.filesystem, set()).add(snap.name)
        return out

    # -- doing ----------------------------------------------------------------------

    def take_snapshots(self, cp: CyclePlan) -> None:
        """pre hook, one snapshot per filesystem (all in one call where the host can),
        post hook.

        The post hook runs whenever the pre hook was started, even if it or a snapshot
        failed: a database put into backup mode must always be taken out of it."""
        svc = self.service
        assert cp.snapshot is not None
        sources = [pair.source for pair in svc.filesystems if pair.source not in cp.skipped]
        env = {"ZFSREPL_SERVICE": svc.name, "ZFSREPL_SNAPSHOT": cp.snapshot,
               "ZFSREPL_FILESYSTEMS": "\n".join(sources)}
        failure: ZfsreplError | None = None
        try:
            if svc.pre_snapshot:
                hooks.run_hook("pre_snapshot", svc.pre_snapshot,
                               {**env, "ZFSREPL_PHASE": "pre_snapshot"}, svc.hook_timeout)
            taken = int(time.time())
            if self.src.capabilities().multi_snapshot:
                # One call for all: OpenZFS takes them atomically, so the filesystems'
                # snapshots are of one consistent point in time (or none is taken).
                self.src.snapshot_all(sources, cp.snapshot)
                for fs in sources:
                    logger.info("snapshot %s@%s taken", fs, cp.snapshot)
            else:
                for fs in sources:
                    self.src.snapshot(fs, cp.snapshot)
                    logger.info("snapshot %s@%s taken", fs, cp.snapshot)
            _stamp_creation(cp, taken)
        except ZfsreplError as exc:
            failure = exc
        finally:
            if svc.post_snapshot:
                status = "failed" if failure else "ok"
                hooks.run_hook("post_snapshot", svc.post_snapshot,
                               {**env, "ZFSREPL_PHASE": "post_snapshot",
                                "ZFSREPL_SNAPSHOT_STATUS": status}, svc.hook_timeout)
        if failure:
            raise failure

    def _stream(self, fp: FilesystemPlan, s: plan.Send,
                cancel: Cancel | None = None) -> TransferResult:
        """One stream from the source to the destination, with the best options both
        sides offer. `cancel`: the stream runs in a worker thread, beside others."""
        src_fs, dst_fs = fp.pair.source, fp.pair.destination
        src_caps, dst_caps = self.src.capabilities(), self.dst.capabilities()
        raw = fp.encrypted and src_caps.raw_send and dst_caps.raw_send
        if fp.encrypted and not raw:
            logger.warning("%s is encrypted but %s cannot receive raw streams: sending it "
                           "decrypted", src_fs, self.dst.label)
        compressed = not raw and src_caps.compressed and dst_caps.compressed
        resuming = s.token is not None
        what = f"{s.describe()} of {src_fs} to {self.dst.label}:{dst_fs}"
        if cancel is not None:
            cancel.check(what)
        wire = self.wire()
        shown = f" (wire: {wire.describe(raw)})" if wire_configured(self.service) else ""
        logger.info("starting %s%s%s", what, " (raw)" if raw else "", shown)

        def estimate() -> int | None:
            return self.src.estimate(src_fs, s, raw=raw, compressed=compressed)

        receive = {"incremental": s.base is not None, "resumable": self._resumable(),
                   "readonly": self._readonly_replica(dst_caps) and not resuming}
        helpers = wire.helpers(raw)
        compression = wire.for_stream(raw)
        result = pipe(self.src.send_argv(src_fs, s, raw=raw, compressed=compressed),
                      self.dst.receive_pipeline_argv(dst_fs, helpers, agent=wire.agent,
                                                     **receive)
                      if helpers else self.dst.receive_argv(dst_fs, **receive),
                      what, progress=Progress(f"{src_fs}@{s.target or '(resumed)'}",
                                              estimate=estimate if src_caps.estimate else None,
                                              concurrent=cancel is not None),
                      limit=self.service.bandwidth_limit,
                      compressor=compress_argv(compression) if compression else None,
                      cancel=cancel,
                      watchdog=Watchdog(self.service.stall_timeout,
                                        sender=f"zfs send on {self.src.label}",
                                        receiver=f"zfs receive on {self.dst.label}"))
        size = "" if result.bytes is None else f", {result.bytes} bytes"
        if result.bytes is not None and result.stream_bytes is not None:
            size += f" on the wire ({result.stream_bytes} before {compression})"
        logger.info("finished %s in %.1fs%s", what, result.seconds, size)
        self.events.sent(fp.pair, result)
        return result

    def send(self, fp: FilesystemPlan, cancel: Cancel | None = None) -> bool:
        """Send what `fp` plans, stream after stream; True when the filesystem needs
        another look (a cut stream was resumed, or a token that cannot be resumed was
        discarded). The base moves afterwards, for all filesystems at once
        (`bases_moved`). `cancel`: in a worker thread (see `_each`)."""
        if isinstance(fp.plan, plan.Resume):
            return self._resume(fp, fp.plan.sends[0], cancel)
        for s in fp.plan.sends:
            self._stream(fp, s, cancel)
        return False

    def _resume(self, fp: FilesystemPlan, s: plan.Send, cancel: Cancel | None) -> bool:
        try:
            self._stream(fp, s, cancel)
        except CommandError as exc:
            if cancel is not None and cancel.cancelled:
                raise  # stopping: the token stays for the next cycle
            if not isinstance(exc, NotResumable):
                raise  # cut again: the next attempt resumes from the new token
            self.dst.abort_resumable(fp.pair.destination)
            logger.warning("the cut transfer to %s:%s cannot be resumed (%s): discarded it "
                           "(receive -A); the transfer starts over", self.dst.label,
                           fp.pair.destination, exc)
        return True

    def bases_moved(self, moved: list[tuple[FilesystemPlan, str]]) -> None:
        """Each (fp, base): the newest replicated snapshot of fp is now `base`. On each
        side, one call holds every new base, then one releases the old bases (in that
        order: a base is never left unheld); each base is bookmarked on the source.
        Failing here fails no transfer."""
        if not moved:
            return
        for zfs, side in ((self.src, "source"), (self.dst, "destination")):
            if not zfs.capabilities().holds:
                continue
            for fp, base in self._move_holds(zfs, side, moved):
                # the old bases' holds are gone: retention may destroy them
                if side == "source":
                    fp.held_source = fp.held_source & {base}
                else:
                    fp.held_destination = fp.held_destination & {base}
        if self.src.capabilities().bookmarks:
            for fp, base in moved:
                self._bookmark(fp, base)

    def _move_holds(self, zfs: Zfs, side: str,
                    moved: list[tuple[FilesystemPlan, str]]
                    ) -> list[tuple[FilesystemPlan, str]]:
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
            zfs.hold(self.tag, new)
            if old:
                zfs.release(self.tag, old)
        except ZfsreplError as exc:
            if len(moved) > 1:
                logger.debug("batched hold/release on %s failed (%s): one at a time",
                             zfs.label, exc)
                # holding and releasing again what went through is harmless
                return [ok for one in moved for ok in self._move_holds(zfs, side, [one])]
            # an old base that is still held stays in held_*: retention releases it
            logger.warning("moving the hold to %s on %s: %s", new[0], zfs.label, exc)
            return []
        return moved

    def _bookmark(self, fp: FilesystemPlan, base: str) -> None:
        src_fs = fp.pair.source
        try:
            self.src.bookmark(src_fs, base)
            for old in retention.stale_bookmarks(list(fp.bookmarks), self.service.naming,
                                                 base):
                self.src.destroy_bookmark(src_fs, old)
        except ZfsreplError as exc:
            logger.warning("bookmarking @%s of %s: %s", base, src_fs, exc)

    def prune(self, fp: FilesystemPlan, cancel: Cancel | None = None) -> None:
        """Destroy what retention chose for `fp` on each side. `cancel`: in a worker
        thread (see `_each`); stops between two snapshots once cancelled."""
        for zfs, fs, names, held in (
                (self.src, fp.pair.source, fp.destroy_source, fp.held_source),
                (self.dst, fp.pair.destination, fp.destroy_destination, fp.held_destination)):
            for name in names:
                if cancel is not None:
                    cancel.check(f"destroying {fs}@{name} on {zfs.label}")
                if name in held:
                    zfs.release(self.tag, [f"{fs}@{name}"])  # only this service's own hold
                try:
                    zfs.destroy_snapshot(fs, name)
                except HasClones:
                    # the origin of a replica renamed aside by `doctor --fix` (repair.py):
                    # kept while that lives; the snapshots after it are pruned as usual
                    logger.info("kept %s@%s on %s: a clone of it exists (a diverged replica "
                                "renamed aside?)", fs, name, zfs.label)
                    continue
                logger.info("destroyed %s@%s on %s", fs, name, zfs.label)

    def send_and_prune(self, cp: CyclePlan) -> bool:
        """Send every filesystem, even when another one fails (up to `parallel` at
        once); then move the bases of those sent (holds batched across filesystems);
        then prune each (up to `parallel` at once). True when a filesystem needs another
        look (see `send`)."""
        failures: list[str] = []
        again = False
        moved: list[tuple[FilesystemPlan, str]] = []
        for fp, outcome in zip(cp.filesystems, self._each(cp.filesystems, self.send)):
            if isinstance(outcome, ZfsreplError):
                # its base stays where it was, held as it was
                failures.append(str(outcome))
                _prune(fp, self.service, sent_ok=False)
                continue
            again = outcome or again
            base = _new_base(fp)
            if base is not None:
                moved.append((fp, base))
        # Before any prune: retention releases only what held_* says is still held.
        self.bases_moved(moved)
        for fp, pruned in zip(cp.filesystems, self._each(cp.filesystems, self.prune)):
            if isinstance(pruned, ZfsreplError):
                # A snapshot left over is destroyed by a later cycle; it fails nothing.
                logger.warning("retention on %s: %s", fp.pair.source, pruned)
        if failures:
            raise CommandError("; ".join(failures))
        return again

    def _each(self, fps: Sequence[FilesystemPlan],
              work: Callable[[FilesystemPlan, Cancel | None], T]) -> list[T | ZfsreplError]:
        """`work(fp, cancel)` for each of `fps`, up to `parallel` at once: what each
        returned, or the ZfsreplError it raised, in the order of `fps` (one filesystem's
        failure stops no other). Any other exception (a stop request, a bug) is raised
        after the others were cut, as below.

        One at a time, it runs in this thread with no `cancel`, as it always did: a
        stop request raises right inside the transfer, whose `finally` ends it. Several
        at once, each runs in a worker thread, handed out from this one as a worker
        becomes free. A stop request (which Python raises in the main thread, here
        while it waits) cuts them all through `cancel`: every process of every stream
        in flight is terminated and nothing new starts; the workers are given time to
        unwind (each waits for its processes) before the request goes on up, where the
        ssh connection is closed."""
        width = min(self.service.parallel, len(fps))
        if width <= 1:
            return [_outcome(work, fp, None) for fp in fps]
        # What the streams need to know of both hosts is probed and kept here: the
        # workers only read it.
        self.wire()
        self.src.capabilities()
        self.dst.capabilities()
        cancel = Cancel()
        outcomes: dict[int, T | ZfsreplError] = {}
        running: dict[concurrent.futures.Future[T | ZfsreplError], int] = {}
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=width, thread_name_prefix=f"zfsrepl-{self.service.name}")
        waiting = list(enumerate(fps))[::-1]  # popped from the end: in order
        try:
            while waiting or running:
                while waiting and len(running) < width:
                    i, fp = waiting.pop()
                    try:
                        self._connected()
                    except ZfsreplError as exc:
                        outcomes[i] = exc
                        continue
                    running[pool.submit(_outcome, work, fp, cancel)] = i
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
        return [outcomes[i] for i in range(len(fps))]

    def _connected(self) -> None:
        """Have each host's ssh connection up before a filesystem is handed to a worker.
        Done here, in the main thread: a connection lost in the middle of a cycle is
        opened again once, not by each worker that finds it gone; and the new master
        dies with the process, not with the worker thread that would have started it
        (PR_SET_PDEATHSIG follows the thread that started a child)."""
        for zfs in (self.src, self.dst):
            connect = getattr(zfs.host, "connect", None)
            if connect is not None:
                connect()


def _outcome(work: Callable[[FilesystemPlan, Cancel | None], T], fp: FilesystemPlan,
             cancel: Cancel | None) -> T | ZfsreplError:
    try:
        return work(fp, cancel)
    except ZfsreplError as exc:
        return exc


def replicate(service: Service, source: Host, destination: Host,
              sleep: Callable[[float], None] = time.sleep,
              events: CycleEvents | None = None,
              capabilities: CapabilityCache | None = None) -> CyclePlan:
    """Run one cycle with up to `service.retries` attempts; ALARM when they run out.

    A snapshot is taken at most once per cycle: later attempts send what exists.
    `capabilities` keeps the hosts' probes beyond this cycle; a failed attempt clears
    it (the next attempt probes again: a host's ZFS may have changed).
    """
    cycle = cycle_class(service)(service, source, destination, events, capabilities)
    snapshot_taken = False
    attempts = service.retries
    for attempt in range(1, attempts + 1):
        try:
            cp = cycle.survey(take_snapshot=not snapshot_taken)
            cp.raise_on_conflict()
            if cp.snapshot:
                with cycle.events.snapshot_phase():
                    cycle.take_snapshots(cp)
                snapshot_taken = True
            again = cycle.send_and_prune(cp)
            for _ in range(_MAX_FOLLOW_UPS):
                if not again:
                    break
                # a resumed stream (or a discarded token): send the rest from what is there
                cp = cycle.survey(take_snapshot=False)
                cp.raise_on_conflict()
                again = cycle.send_and_prune(cp)
            logger.info("cycle of %s finished", service.name)
            return cp
        except UsageError:
            raise
        except ZfsreplError as exc:
            if capabilities is not None:
                capabilities.clear()
                cycle.forget_probes()
            cycle.events.attempt_failed(attempt, attempts, exc)
            if attempt == attempts:
                alarm("could not replicate %s after %d attempt(s): %s", service.name,
                      attempts, exc)
                raise
            logger.warning("attempt %d of %d failed: %s; retrying in %gs", attempt, attempts,
                           exc, service.retry_delay)
            sleep(service.retry_delay)
    raise AssertionError("unreachable")


def dry_run(service: Service, source: Host, destination: Host) -> CyclePlan:
    return cycle_class(service)(service, source, destination).survey(take_snapshot=True)


def cycle_class(service: Service) -> type[Cycle]:
    if service.recursive:  # one stream for the subtree
        from zfsrepl.recursive import RecursiveCycle

        return RecursiveCycle
    return Cycle
