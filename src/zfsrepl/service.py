"""The replication service: `zfsrepl run NAME`, and the locked, recorded cycle that
`run` and `runonce` share.

The loop starts a cycle every `interval` seconds, start to start; a cycle that
overruns is followed at once by the next, never overlapped. When a cycle's
retries run out the service goes into maintenance: the reason is recorded, the
definition's `on_alarm` runs, and the process exits with EXIT_MAINTENANCE so the
service manager leaves it stopped until `zfsrepl clear NAME`.

SIGTERM and SIGINT stop it at once, cutting a transfer in flight (transfer.pipe
stops both halves as the exception unwinds through it; transfers running in the
cycle's worker threads, with `parallel`, are cut through their transfer.Cancel):
ZFS discards a partial receive, so the next cycle starts from the last common
snapshot. Hooks and snapshots are let finish first. SIGHUP re-reads the definition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Callable, ContextManager

from zfsrepl import cluster_state, config, hooks, interrupts, lock, logfile, state
from zfsrepl.chain import newest_own
from zfsrepl.config import FilesystemPair, Service
from zfsrepl.cycle import CycleEvents, destination_after, replicate
from zfsrepl.errors import UsageError, ZfsreplError
from zfsrepl.host import LocalHost, SshHost
from zfsrepl.lock import Busy, FileLock, Holder
from zfsrepl.log import alarm, logger
from zfsrepl.managers import EXIT_MAINTENANCE
from zfsrepl.metrics import MetricsServer, ServiceSample, render, write_textfile
from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot
from zfsrepl.state import Newest, ServicePaths, ServiceState, StateStore
from zfsrepl.status import derive_state
from zfsrepl.transfer import TransferResult
from zfsrepl.zfs import CapabilityCache

Sleep = Callable[[float], None]
Guard = Callable[[], ContextManager[None]]
# Runs one cycle (with its retries) and returns the newest snapshot of the service on
# each destination filesystem afterwards.
CycleRunner = Callable[[Service, CycleEvents, Sleep], Mapping[str, Newest]]


# ---------------------------------------------------------------------------- pure


def next_start(planned: float, interval: float, now: float) -> float:
    """When the cycle after the one planned for `planned` starts: `interval` later
    (start to start, so the schedule does not drift), or `now` if that has passed."""
    due = planned + interval
    return due if due > now else now


def newest_by_destination(naming: SnapshotNaming,
                          lists: Mapping[str, list[Snapshot] | None]) -> dict[str, Newest]:
    """The newest snapshot of the service on each filesystem: the lag of the metrics,
    by the rule status uses for its own (chain.newest_own)."""
    out: dict[str, Newest] = {}
    for fs, snaps in lists.items():
        top = newest_own(snaps or [], naming)
        if top is not None:
            out[fs] = Newest(top.name, top.creation)
    return out


def alarm_environment(svc: Service, reason: str, since: float,
                      log_file: Path | None) -> dict[str, str]:
    """What the on_alarm command is told of the failure."""
    env = {
        "ZFSREPL_SERVICE": svc.name,
        "ZFSREPL_PHASE": "on_alarm",
        "ZFSREPL_STATE": "maintenance",
        "ZFSREPL_REASON": reason,
        "ZFSREPL_SINCE": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)),
        "ZFSREPL_ATTEMPTS": str(svc.retries),
        "ZFSREPL_SOURCE": f"{svc.source.user}@{svc.source.host}",
        "ZFSREPL_DESTINATION": f"{svc.destination.user}@{svc.destination.host}",
        "ZFSREPL_FILESYSTEMS": "\n".join(p.source for p in svc.filesystems),
    }
    if log_file is not None:
        env["ZFSREPL_LOG_FILE"] = str(log_file)
    return env


# ---------------------------------------------------------------------------- signals


class Stopped(BaseException):
    """SIGTERM or SIGINT: unwind whatever runs. Not an Exception, so that no
    `except Exception` (nor the retry loop) swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Wake(Exception):
    """SIGHUP while waiting for the next cycle: look at the definition again now."""


class Signals:
    """SIGTERM, SIGINT and SIGHUP for the loop (Python handles signals in the main thread).

    A stop request raises `Stopped` wherever the loop is (a transfer, a retry delay,
    the wait for the next cycle, the wait for a lock), except inside `deferred()`
    blocks: state writes, hooks and snapshots finish, and it is raised right after.
    """

    def __init__(self) -> None:
        self.stop_signal: int | None = None
        self.reload_requested = False
        self._armed = False
        self._deferred = 0
        self._waiting = False  # in sleep(..., wake_on_reload=True)
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._handle)
        self._armed = True

    def restore(self) -> None:
        self._armed = False
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
            if self._waiting:
                raise _Wake()
            return
        self.stop_signal = signum
        interrupts.stop_now_or_after_shield(self.check)

    def check(self) -> None:
        """Raise Stopped if a stop was asked for and nothing holds it back."""
        if self.stop_signal is not None and self._armed and self._deferred == 0:
            # Once: a second signal must not cut the clean-up of the first.
            self._armed = False
            raise Stopped(self.stop_signal)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
        self.check()

    def take_reload(self) -> bool:
        asked, self.reload_requested = self.reload_requested, False
        return asked

    def sleep(self, seconds: float, wake_on_reload: bool = False) -> None:
        self.check()
        if not wake_on_reload:
            time.sleep(seconds)
            return
        try:
            try:
                self._waiting = True
                if not self.reload_requested:
                    time.sleep(seconds)
            finally:
                self._waiting = False
        except _Wake:
            pass


# ---------------------------------------------------------------------------- one cycle


# What each host's ZFS offers, probed once for the life of the process (`zfsrepl run`:
# once, not once per cycle and side; `runonce`: one probe per side).
CAPABILITIES = CapabilityCache()


def replicate_and_survey(svc: Service, events: CycleEvents, sleep: Sleep, *,
                         destination: SshHost | None = None) -> dict[str, Newest]:
    """One cycle over SSH (retries included); the newest snapshot on each destination
    filesystem afterwards, for the lag, derived from what the cycle listed and sent
    (no second listing of the destination). `destination`: a connection to it the
    caller opened already (and closes); otherwise one for this cycle."""
    source = LocalHost(f"{svc.source.user}@{svc.source.host}")
    with contextlib.ExitStack() as stack:
        if destination is None:
            destination = stack.enter_context(SshHost(svc.destination))
        destination.start()  # the handshake runs while the source is listed
        cp = replicate(svc, source, destination, sleep=sleep, events=events,
                       capabilities=CAPABILITIES)
    newest = newest_by_destination(
        svc.naming, {fp.pair.destination: destination_after(fp) for fp in cp.filesystems})
    if cp.unchanged_at is not None:
        # skip_unchanged: the destination held all of these filesystems' data then
        for fp in cp.filesystems:
            found = newest.get(fp.pair.destination)
            if fp.pair.source in cp.skipped and found is not None:
                newest[fp.pair.destination] = dataclasses.replace(
                    found, unchanged_at=cp.unchanged_at)
    return newest


class KeptConnection:
    """The cycle runner of `zfsrepl run`: one connection to the destination kept from
    cycle to cycle, so that a steady service pays no ssh handshake per cycle. SshHost
    opens its master again when it was lost (a cut link, a restarted sshd); a
    destination changed by SIGHUP gets a connection of its own."""

    def __init__(self) -> None:
        self._host: SshHost | None = None

    def __call__(self, svc: Service, events: CycleEvents, sleep: Sleep) -> dict[str, Newest]:
        if self._host is None or self._host.endpoint != svc.destination:
            self.close()
            self._host = SshHost(svc.destination)
        return replicate_and_survey(svc, events, sleep, destination=self._host)

    def close(self) -> None:
        host, self._host = self._host, None
        if host is not None:
            host.close()


class Recorder(CycleEvents):
    """Writes what a cycle goes through into the state file as it happens."""

    def __init__(self, store: StateStore, guard: Guard, clock: Callable[[], float]) -> None:
        self.store = store
        self.guard = guard
        self.clock = clock
        self.sent_bytes = 0
        self._lock = threading.Lock()  # sent() comes from the cycle's worker threads

    def attempt_failed(self, attempt: int, attempts: int, error: ZfsreplError) -> None:
        with self.guard():
            self.store.update(lambda s: state.attempt_failed(s, self.clock(), str(error)))

    def sent(self, pair: FilesystemPair, result: TransferResult) -> None:
        if result.bytes is not None:
            with self._lock:
                self.sent_bytes += result.bytes

    def snapshot_phase(self) -> ContextManager[None]:
        return self.guard()

    def listing_folder(self) -> Path | None:
        return self.store.paths.folder


def recorded_cycle(svc: Service, store: StateStore, runner: CycleRunner, sleep: Sleep,
                   guard: Guard = contextlib.nullcontext,
                   clock: Callable[[], float] = time.time,
                   monotonic: Callable[[], float] = time.monotonic) -> ServiceState:
    """Run one cycle and record how it went; raises what the cycle raised."""
    started = monotonic()
    with guard():
        store.update(lambda s: state.cycle_started(s, clock()))
    recorder = Recorder(store, guard, clock)
    try:
        newest = runner(svc, recorder, sleep)
    except ZfsreplError as exc:
        error = str(exc)
        with guard():
            store.update(lambda s: state.cycle_failed(s, clock(), monotonic() - started,
                                                      error, recorder.sent_bytes))
        raise
    with guard():
        return store.update(lambda s: state.cycle_succeeded(
            s, clock(), monotonic() - started, newest, recorder.sent_bytes))


def _busy_message(name: str, holder: Holder) -> str:
    return f"service {name} is busy: {holder.describe()} is replicating it"


def run_once(svc: Service, state_dir: Path, log_dir: Path, *, wait: bool,
             metrics_file: Path | None = None,
             runner: CycleRunner = replicate_and_survey) -> None:
    """`zfsrepl runonce`: one cycle under the service's lock, recorded like the loop's."""
    paths = ServicePaths(state_dir, svc.name)
    paths.create()
    # A user without a log folder of their own sees the lines on standard error anyway.
    handler = logfile.attach(log_dir, svc.name,
                             warn=log_dir.absolute() != Path(config.DEFAULT_LOG_DIR))
    store = StateStore(paths)
    try:
        st = store.load()
        if st.in_maintenance:
            logger.warning("service %s is in maintenance (%s); this cycle runs anyway, "
                           "`zfsrepl clear %s` lets the service run again", svc.name,
                           st.maintenance_reason, svc.name)
        with FileLock(paths.cycle_lock, "runonce") as cycle_lock:
            try:
                cycle_lock.acquire(
                    wait=wait, what=f"service {svc.name}",
                    on_wait=lambda h: logger.info("waiting: %s", _busy_message(svc.name, h)))
            except Busy as exc:
                raise ZfsreplError(f"{_busy_message(svc.name, exc.holder)}; try again later, "
                                   "or leave out --no-wait to wait for it") from None
            recorded_cycle(svc, store, runner, time.sleep)
    finally:
        if metrics_file is not None:
            st = store.load()
            running = lock.probe(paths.daemon_lock) is not None
            publish(metrics_file, svc, st, derive_state(st.in_maintenance, running, None))
        logfile.detach(handler)


def publish(path: Path, svc: Service, st: ServiceState, state_name: str) -> None:
    """Write the service's metrics file; a metrics file that cannot be written must not
    stop replication."""
    pairs = [(p.source, p.destination) for p in svc.filesystems]
    text = render([ServiceSample(svc.name, state_name, st, pairs)], time.time())
    try:
        write_textfile(path, text)
    except OSError as exc:
        logger.warning("cannot write the metrics file %s: %s", path, exc.strerror)


# ---------------------------------------------------------------------------- the loop


class Daemon:
    """`zfsrepl run NAME`."""

    def __init__(self, config_dir: Path, state_dir: Path, log_dir: Path, name: str, *,
                 metrics_file: Path | None = None, runner: CycleRunner | None = None,
                 signals: Signals | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 pool_state: bool | None = None) -> None:
        self.config_dir = config_dir
        self.log_dir = log_dir
        self.name = name
        self.paths = ServicePaths(state_dir, name)
        self.store = StateStore(self.paths)
        self.metrics_file = metrics_file or self.paths.metrics_file
        self._kept: KeptConnection | None = None
        if runner is None:
            self._kept = runner = KeptConnection()
        self.runner = runner
        # Maintenance also kept in ZFS, to move with the pool (cluster_state); by default
        # only beside the real cycle: a cycle given by the caller brings its own ZFS.
        self.pool_state = self._kept is not None if pool_state is None else pool_state
        self.signals = signals or Signals()
        self.monotonic = monotonic
        self.st = ServiceState()
        self.state_name = "online"
        self.svc: Service | None = None
        self.log_file: Path | None = None
        self._server: MetricsServer | None = None
        self._in_cycle = False

    # -- start and stop -------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped (0) or in maintenance (EXIT_MAINTENANCE)."""
        svc = self.load()
        self.paths.create()
        handler = logfile.attach(self.log_dir, self.name)
        self.log_file = logfile.log_path(self.log_dir, self.name) if handler else None
        try:
            with FileLock(self.paths.daemon_lock, "run") as daemon_lock:
                try:
                    daemon_lock.acquire(wait=False, what=f"service {self.name}")
                except Busy as exc:
                    raise ZfsreplError(f"service {self.name} is already running: "
                                       f"{exc.holder.describe()}") from None
                return self._serve(svc)
        finally:
            logfile.detach(handler)

    def load(self) -> Service:
        svc = config.load_service(self.config_dir, self.name)
        if svc.is_destination_copy:
            # it would replicate forward from the replica's host, over its own chain
            raise UsageError(
                f"{svc.path or svc.name} is the destination's copy of service {svc.name} "
                f"(role = \"destination\"): the service runs on its source host "
                f"{svc.source.host}; here `zfsrepl runonce {svc.name}` replicates back "
                "(failback)")
        hooks.check_executable("on_alarm", svc.on_alarm, svc.path)
        return svc

    def _serve(self, svc: Service) -> int:
        self.svc = svc
        self.st = self.store.load()
        if self.pool_state:
            self.st = cluster_state.adopt(svc, self.store, self.st, time.time())
        if self.st.in_maintenance:
            logger.warning("service %s is in maintenance since %s: %s; fix the cause, then "
                           "run `zfsrepl clear %s`", self.name,
                           time.strftime("%Y-%m-%d %H:%M:%S",
                                         time.localtime(self.st.maintenance_since or 0)),
                           self.st.maintenance_reason, self.name)
            self.state_name = "maintenance"
            self._publish()
            return EXIT_MAINTENANCE
        self.signals.install()
        try:
            self._start_server(svc)
            logger.info("service %s running as process %d: a cycle every %d s", self.name,
                        os.getpid(), svc.interval)
            return self._loop()
        except Stopped as stop:
            cut = "; the cycle it cut short is completed by the next one" if self._in_cycle else ""
            logger.info("service %s stopped by %s%s", self.name, stop, cut)
            return 0
        finally:
            self.signals.restore()
            if self.state_name != "maintenance":
                self.state_name = "offline"
            self._update(lambda s: state.scheduled(s, None))
            self._publish()
            self._stop_server()
            if self._kept is not None:
                self._kept.close()

    # -- the loop -------------------------------------------------------------------

    def _loop(self) -> int:
        planned = previous = self.monotonic()  # the first cycle starts at once
        first = True
        while True:
            # Wait for the planned start; a SIGHUP meanwhile re-reads the definition,
            # whose interval may move the start.
            while True:
                if self.signals.take_reload():
                    self._reload()
                    if not first:
                        planned = next_start(previous, self._svc.interval, self.monotonic())
                        self._schedule(planned)
                remaining = planned - self.monotonic()
                if remaining <= 0:
                    break
                self.signals.sleep(remaining, wake_on_reload=True)
            self.signals.check()
            previous, first = planned, False
            if not self._cycle():
                return EXIT_MAINTENANCE
            planned = next_start(previous, self._svc.interval, self.monotonic())
            self._schedule(planned)

    @property
    def _svc(self) -> Service:
        assert self.svc is not None
        return self.svc

    def _cycle(self) -> bool:
        """One cycle under the service's lock; False when the service went into maintenance."""
        svc = self._svc
        with FileLock(self.paths.cycle_lock, "run") as cycle_lock:
            cycle_lock.acquire(
                wait=True, sleep=self.signals.sleep, what=f"service {self.name}",
                on_wait=lambda h: logger.info("waiting: %s", _busy_message(self.name, h)))
            self._in_cycle = True  # stays set when a stop cuts the cycle short
            try:
                self.st = recorded_cycle(svc, self.store, self.runner, self.signals.sleep,
                                         self.signals.deferred, monotonic=self.monotonic)
            except UsageError as exc:
                # The definition no longer works (e.g. a hook was removed): no retry helps.
                alarm("service %s cannot run a cycle: %s", self.name, exc)
                failure: ZfsreplError = exc
            except ZfsreplError as exc:
                failure = exc  # replicate() has written the ALARM line
            else:
                self._in_cycle = False
                with self.signals.deferred():
                    self._publish()
                return True
            self._in_cycle = False
        self._enter_maintenance(str(failure))
        return False

    def _enter_maintenance(self, reason: str) -> None:
        svc = self._svc
        with self.signals.deferred():
            now = time.time()
            self._update(lambda s: state.enter_maintenance(s, now, reason))
            if self.pool_state:
                cluster_state.mark(svc, now, reason)
            self.state_name = "maintenance"
            self._publish()
            logger.warning("service %s is now in maintenance: fix the cause, then run "
                           "`zfsrepl clear %s`", self.name, self.name)
            if svc.on_alarm:
                try:
                    hooks.run_hook("on_alarm", svc.on_alarm,
                                   alarm_environment(svc, reason, now, self.log_file),
                                   svc.hook_timeout)
                except ZfsreplError as exc:
                    logger.warning("%s", exc)

    def _schedule(self, planned: float) -> None:
        next_run = time.time() + max(0.0, planned - self.monotonic())
        with self.signals.deferred():
            self._update(lambda s: state.scheduled(s, next_run))
            self._publish()

    def _reload(self) -> None:
        try:
            new = self.load()
        except ZfsreplError as exc:
            logger.warning("SIGHUP: keeping the definition in use: %s", exc)
            return
        old = self._svc
        self.svc = new
        logger.info("SIGHUP: re-read the definition of %s: a cycle every %d s", self.name,
                    new.interval)
        if (old.metrics_address, old.metrics_port) != (new.metrics_address, new.metrics_port):
            self._stop_server()
            try:
                self._start_server(new)
            except ZfsreplError as exc:
                logger.warning("%s; serving no metrics over HTTP", exc)

    # -- state and metrics ----------------------------------------------------------

    def _update(self, change: Callable[[ServiceState], ServiceState]) -> None:
        self.st = self.store.update(change)

    def _sample(self) -> ServiceSample:
        pairs = [(p.source, p.destination) for p in self._svc.filesystems]
        return ServiceSample(self.name, self.state_name, self.st, pairs)

    def _publish(self) -> None:
        publish(self.metrics_file, self._svc, self.st, self.state_name)

    def _start_server(self, svc: Service) -> None:
        if svc.metrics_port is None:
            return
        server = MetricsServer(svc.metrics_address, svc.metrics_port,
                               lambda: render([self._sample()], time.time()))
        server.start()
        self._server = server
        logger.info("serving metrics on http://%s:%d/metrics", svc.metrics_address,
                    server.port)

    def _stop_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
