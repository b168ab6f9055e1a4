"""One replication cycle of a service: survey, hooks, snapshot, send, prune.

The survey (survey.py) lists both sides and the pure planner (cycleplan.py) decides
the whole cycle from that; the executor (executor.py) carries the plan out, its
streams through a seam (cyclehosts.Streams) that tests replace; what retention
destroys and where the bases move follows from the sends' outcomes
(cycleplan.after). This module puts them together, with the retries.

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

import time
from collections.abc import Callable
from typing import Any

from zfsrepl.capabilities import Capabilities
from zfsrepl.config import Service
from zfsrepl.cyclehosts import CycleEvents, CycleHosts, Streams
from zfsrepl.cycleplan import (
    CyclePlan,
    FilesystemPlan,
    destination_after,
    wire_configured,
    wire_text,
)
from zfsrepl.errors import UsageError, ZfsreplError
from zfsrepl.executor import Executor, Prune
from zfsrepl.host import Host, LocalHost, SshHost
from zfsrepl.log import alarm, logger
from zfsrepl.replication import Replication
from zfsrepl.survey import Survey
from zfsrepl.transfer import Cancel, TransferResult, Wire, pipe
from zfsrepl.zfs import CapabilityCache, Zfs

__all__ = ["MIN_COMMAND_TIMEOUT", "Cycle", "CycleEvents", "CyclePlan", "FilesystemPlan",
           "Streams", "command_timeout", "destination_after", "dry_run", "hold_tag",
           "replicate", "wire_configured", "wire_text"]

# How often one attempt continues after a resumed stream (each resume may reveal
# another cut stream only if something else cut it meanwhile).
_MAX_FOLLOW_UPS = 3
# A command other than a stream (a listing, a snapshot, a destroy, a hold) shows no
# progress while it runs: it may take stall_timeout, and never less than this (a busy
# host lists thousands of snapshots, or frees a large one, in tens of seconds).
MIN_COMMAND_TIMEOUT = 60


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


class PipeStreams:
    """The streams of a real cycle: transfer.pipe (looked up here at each stream)."""

    def pipe(self, sender: list[str], receiver: list[str], what: str,
             **options: Any) -> TransferResult:
        return pipe(sender, receiver, what, **options)


class Cycle:
    """The replication of one service between a source and a destination host: its
    survey and its executor over the same two hosts."""

    def __init__(self, replication: Replication | Service, source: Host, destination: Host,
                 events: CycleEvents | None = None,
                 capabilities: CapabilityCache | None = None,
                 streams: Streams | None = None) -> None:
        rep = _replication(replication)
        self.service = service = rep.service
        for host in (source, destination):
            _bound_commands(host, command_timeout(service))
        self.hosts = CycleHosts(
            rep, Zfs(source, rep.sending.zfs_argv, capabilities),
            Zfs(destination, rep.receiving.zfs_argv, capabilities), hold_tag(service.name),
            events or CycleEvents(), streams or PipeStreams())
        self.surveyor = Survey(self.hosts)
        self.executor = Executor(self.hosts)

    # the hosts, as the parts see them (a test may put a fake in their place)
    @property
    def src(self) -> Zfs:
        return self.hosts.src

    @src.setter
    def src(self, zfs: Zfs) -> None:
        self.hosts.src = zfs

    @property
    def dst(self) -> Zfs:
        return self.hosts.dst

    @dst.setter
    def dst(self, zfs: Zfs) -> None:
        self.hosts.dst = zfs

    @property
    def rep(self) -> Replication:
        return self.hosts.rep

    @rep.setter
    def rep(self, rep: Replication) -> None:
        self.hosts.rep = rep

    @property
    def events(self) -> CycleEvents:
        return self.hosts.events

    def survey(self, take_snapshot: bool) -> CyclePlan:
        """List both sides and decide everything; raises before anything changes."""
        return self.surveyor.survey(take_snapshot)

    def take_snapshots(self, cp: CyclePlan) -> CyclePlan:
        return self.executor.snapshots.take(cp)

    def send(self, fp: FilesystemPlan, cancel: Cancel | None = None) -> bool:
        return self.executor.transfers.send(fp, cancel)

    def prune(self, fp: FilesystemPlan, cancel: Cancel | None = None) -> None:
        """Destroy what retention chose for `fp` (if its sends went as planned)."""
        self.executor.prune(Prune.planned(fp), cancel)

    def send_and_prune(self, cp: CyclePlan) -> bool:
        return self.executor.send_and_prune(cp)

    def wire(self) -> Wire:
        return self.hosts.wire()

    def forget_probes(self) -> None:
        self.hosts.forget_probes()

    def _readonly_replica(self, dst_caps: Capabilities) -> bool:
        return self.hosts.readonly_replica(dst_caps)


def _replication(what: Replication | Service) -> Replication:
    """A definition alone replicates forward: only `runonce` and `doctor` on the
    destination host turn it around (Replication.of)."""
    return what if isinstance(what, Replication) else Replication.forward(what)


def replicate(replication: Replication | Service, source: Host, destination: Host,
              sleep: Callable[[float], None] = time.sleep,
              events: CycleEvents | None = None,
              capabilities: CapabilityCache | None = None,
              streams: Streams | None = None) -> CyclePlan:
    """Run one cycle with up to `service.retries` attempts; ALARM when they run out.

    A snapshot is taken at most once per cycle: later attempts send what exists.
    `capabilities` keeps the hosts' probes beyond this cycle; a failed attempt clears
    it (the next attempt probes again: a host's ZFS may have changed).
    """
    rep = _replication(replication)
    cycle = cycle_class(rep)(rep, source, destination, events, capabilities, streams)
    service = cycle.service
    snapshot_taken = False
    attempts = service.retries
    for attempt in range(1, attempts + 1):
        try:
            cp = cycle.survey(take_snapshot=not snapshot_taken)
            cp.raise_on_conflict()
            if cp.snapshot:
                with cycle.events.snapshot_phase():
                    cp = cycle.take_snapshots(cp)
                snapshot_taken = True
            cp = _send_with_follow_ups(cycle, cp)
            cycle.hosts.listings.cycle_done(cp)
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


def _send_with_follow_ups(cycle: Cycle, cp: CyclePlan) -> CyclePlan:
    """Send and prune; while a resumed stream (or a discarded token) asks for another
    look, send the rest from what is there. The last plan carried out."""
    again = cycle.send_and_prune(cp)
    for _ in range(_MAX_FOLLOW_UPS):
        if not again:
            break
        cp = cycle.survey(take_snapshot=False)
        cp.raise_on_conflict()
        again = cycle.send_and_prune(cp)
    return cp


def dry_run(replication: Replication | Service, source: Host, destination: Host
            ) -> CyclePlan:
    rep = _replication(replication)
    return cycle_class(rep)(rep, source, destination).survey(take_snapshot=True)


def cycle_class(rep: Replication) -> type[Cycle]:
    if rep.service.recursive:  # one stream for the subtree
        from zfsrepl.recursive import RecursiveCycle

        return RecursiveCycle
    return Cycle
