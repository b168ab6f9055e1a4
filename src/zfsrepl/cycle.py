"""One replication cycle of a service: survey, hooks, snapshot, send, prune.

Everything that can be known to fail is checked before anything changes: both
sides are listed (one call each), missing filesystems and parents and chain
conflicts are found, and only then are hooks run and snapshots taken.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ContextManager

from zfsrepl import diagnosis, hooks, plan, retention
from zfsrepl.config import FilesystemPair, Service
from zfsrepl.errors import CommandError, ReplicationError, UsageError, ZfsreplError
from zfsrepl.host import Host
from zfsrepl.log import alarm, logger
from zfsrepl.snapshots import Snapshot
from zfsrepl.transfer import TransferResult, pipe
from zfsrepl.zfs import Zfs


@dataclass
class FilesystemPlan:
    pair: FilesystemPair
    source: list[Snapshot]  # including the snapshot this cycle takes
    destination: list[Snapshot] | None
    plan: plan.Plan
    destroy_source: tuple[str, ...] = ()
    destroy_destination: tuple[str, ...] = ()


@dataclass
class CyclePlan:
    service: Service
    snapshot: str | None  # the snapshot this cycle takes, None when it takes none
    filesystems: list[FilesystemPlan]

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
        if self.snapshot:
            lines.append(f"snapshot @{self.snapshot} of: "
                         + ", ".join(fp.pair.source for fp in self.filesystems))
        for fp in self.filesystems:
            p = fp.plan
            if isinstance(p, (plan.NoCommonSnapshot, plan.Diverged)):
                what = "CONFLICT: " + p.explain(fp.pair.source, fp.pair.destination)
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


def _with_new_snapshot(snaps: list[Snapshot], fs: str, name: str) -> list[Snapshot]:
    top = max((s.createtxg for s in snaps), default=0)
    return [*snaps, Snapshot(filesystem=fs, name=name, guid=None, createtxg=top + 1,
                             creation=int(time.time()))]


def _prune(fp: FilesystemPlan, svc: Service, sent_ok: bool) -> None:
    """Fill in what retention destroys on each side once the sends went as planned
    (`sent_ok`), or as things stand when they did not."""
    naming = svc.naming
    if fp.destination is None:
        common = None
    else:
        c = plan.newest_common(fp.source, fp.destination)
        common = c.name if c else None
    dst_after = fp.destination
    protected = [common] if common else []
    if sent_ok and fp.plan.sends:
        received = plan.received_names(fp.plan, fp.source)
        by_name = {s.name: s for s in fp.source}
        top = max((s.createtxg for s in fp.destination or []), default=0)
        dst_after = [*(fp.destination or []),
                     *(Snapshot(fp.pair.destination, n, by_name[n].guid, top + i + 1)
                       for i, n in enumerate(received))]
        common = received[-1]
        protected = [common]
    elif not sent_ok:
        # A failed send may still have delivered part of its snapshots (one step of a
        # chain, the first streams of a -I): keep every candidate on the source so the
        # next cycle finds its common snapshot whatever arrived.
        pending = plan.received_names(fp.plan, fp.source)
        protected += pending
    fp.destroy_source = retention.decide(fp.source, naming, svc.keep_source, protected).destroy
    if dst_after is not None and common is not None:
        fp.destroy_destination = retention.decide(dst_after, naming, svc.keep_destination,
                                                  protected).destroy
    else:
        fp.destroy_destination = ()


class CycleEvents:
    """What the long-running service learns of a cycle as it goes; the defaults do nothing."""

    def attempt_failed(self, attempt: int, attempts: int, error: ZfsreplError) -> None:
        """An attempt failed (the last one too, before the error is raised)."""

    def sent(self, pair: FilesystemPair, result: TransferResult) -> None:
        """One stream reached the destination."""

    def snapshot_phase(self) -> ContextManager[None]:
        """Wraps hooks and snapshots, which a stop request must not cut in half."""
        return contextlib.nullcontext()


class Cycle:
    """The replication of one service between a source and a destination host."""

    def __init__(self, service: Service, source: Host, destination: Host,
                 events: CycleEvents | None = None) -> None:
        self.service = service
        self.events = events or CycleEvents()
        self.src = Zfs(source, service.source.zfs_argv)
        self.dst = Zfs(destination, service.destination.zfs_argv)

    # -- survey ---------------------------------------------------------------------

    def survey(self, take_snapshot: bool) -> CyclePlan:
        """List both sides and decide everything; raises before anything changes."""
        svc = self.service
        hooks.check_executable("pre_snapshot", svc.pre_snapshot)
        hooks.check_executable("post_snapshot", svc.post_snapshot)
        pairs = list(svc.filesystems)
        dst_lists, dst_roles = self.dst.listing([p.destination for p in pairs])
        # The interlock: a destination that took over by failover is never overwritten.
        taken = [p.destination for p in pairs
                 if dst_roles.get(p.destination) == diagnosis.ROLE_TAKEN_OVER]
        if taken:
            raise ReplicationError(diagnosis.interlock_problem(
                taken, svc.name, diagnosis.Side("destination", svc.destination.host,
                                                svc.destination.user)))
        src_lists = self.src.snapshots([p.source for p in pairs])

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

        snapshot = None
        if take_snapshot:
            seq = plan.next_sequence(
                svc.naming, *(s for s in src_lists.values() if s),
                *(s for s in dst_lists.values() if s))
            snapshot = svc.naming.format(seq)

        fps: list[FilesystemPlan] = []
        for pair in pairs:
            src = src_lists[pair.source] or []
            if snapshot:
                src = _with_new_snapshot(src, pair.source, snapshot)
            dst = dst_lists[pair.destination]
            fp = FilesystemPlan(pair, src, dst, plan.plan_filesystem(src, dst, svc.naming))
            _prune(fp, svc, sent_ok=True)
            fps.append(fp)
        return CyclePlan(svc, snapshot, fps)

    # -- doing ----------------------------------------------------------------------

    def take_snapshots(self, cp: CyclePlan) -> None:
        """pre hook, one snapshot per filesystem, post hook.

        The post hook runs whenever the pre hook was started, even if it or a snapshot
        failed: a database put into backup mode must always be taken out of it."""
        svc = self.service
        assert cp.snapshot is not None
        env = {"ZFSREPL_SERVICE": svc.name, "ZFSREPL_SNAPSHOT": cp.snapshot,
               "ZFSREPL_FILESYSTEMS": "\n".join(p.source for p in svc.filesystems)}
        failure: ZfsreplError | None = None
        try:
            if svc.pre_snapshot:
                hooks.run_hook("pre_snapshot", svc.pre_snapshot,
                               {**env, "ZFSREPL_PHASE": "pre_snapshot"}, svc.hook_timeout)
            for pair in svc.filesystems:
                self.src.snapshot(pair.source, cp.snapshot)
                logger.info("snapshot %s@%s taken", pair.source, cp.snapshot)
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

    def send(self, fp: FilesystemPlan) -> None:
        src_fs, dst_fs = fp.pair.source, fp.pair.destination
        for s in fp.plan.sends:
            what = f"{s.describe()} of {src_fs} to {self.dst.label}:{dst_fs}"
            logger.info("starting %s", what)
            result = pipe(self.src.send_argv(src_fs, s),
                          self.dst.receive_argv(dst_fs, incremental=s.base is not None), what)
            size = "" if result.bytes is None else f", {result.bytes} bytes"
            logger.info("finished %s in %.1fs%s", what, result.seconds, size)
            self.events.sent(fp.pair, result)

    def prune(self, fp: FilesystemPlan) -> None:
        for name in fp.destroy_source:
            self.src.destroy_snapshot(fp.pair.source, name)
            logger.info("destroyed %s@%s on %s", fp.pair.source, name, self.src.label)
        for name in fp.destroy_destination:
            self.dst.destroy_snapshot(fp.pair.destination, name)
            logger.info("destroyed %s@%s on %s", fp.pair.destination, name, self.dst.label)

    def send_and_prune(self, cp: CyclePlan) -> None:
        """Send and prune every filesystem, even when another one fails."""
        failures: list[str] = []
        for fp in cp.filesystems:
            try:
                self.send(fp)
            except ZfsreplError as exc:
                failures.append(str(exc))
                _prune(fp, self.service, sent_ok=False)
            try:
                self.prune(fp)
            except ZfsreplError as exc:
                # A snapshot left over is destroyed by a later cycle; it fails nothing.
                logger.warning("retention on %s: %s", fp.pair.source, exc)
        if failures:
            raise CommandError("; ".join(failures))


def replicate(service: Service, source: Host, destination: Host,
              sleep: Callable[[float], None] = time.sleep,
              events: CycleEvents | None = None) -> CyclePlan:
    """Run one cycle with up to `service.retries` attempts; ALARM when they run out.

    A snapshot is taken at most once per cycle: later attempts send what exists.
    """
    cycle = Cycle(service, source, destination, events)
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
            cycle.send_and_prune(cp)
            logger.info("cycle of %s finished", service.name)
            return cp
        except UsageError:
            raise
        except ZfsreplError as exc:
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
    return Cycle(service, source, destination).survey(take_snapshot=True)
