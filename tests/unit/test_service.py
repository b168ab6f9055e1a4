"""The service loop (`zfsrepl run`) and the recorded, locked cycle of `runonce`.

The loop runs on a fake clock with a fake cycle: no ZFS, no waiting. The signal
tests send real signals to this process and cut a real pipeline.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zfsrepl import interrupts, lock, log, service, state
from zfsrepl.config import Endpoint, FilesystemPair, Service, dump_service
from zfsrepl.cycle import CycleEvents
from zfsrepl.errors import CommandError, ConfigError, UsageError, ZfsreplError
from zfsrepl.lock import FileLock
from zfsrepl.managers import EXIT_MAINTENANCE
from zfsrepl.service import Daemon, Signals, Stopped, next_start
from zfsrepl.snapshots import Snapshot
from zfsrepl.state import Newest, ServicePaths, StateStore
from zfsrepl.transfer import TransferResult, pipe

NAME = "svc1"
DST_FS = "backup/a"


@pytest.fixture(autouse=True)
def setup(monkeypatch: pytest.MonkeyPatch) -> None:
    log.setup()  # INFO lines, as the command line has them
    # Nothing probes the locks in these tests: report a holder at once.
    monkeypatch.setattr(lock, "PROBE_GRACE", 0.0)


def make_service(**fields: object) -> Service:
    base: dict[str, object] = dict(
        name=NAME, source=Endpoint("srchost", "src"), destination=Endpoint("dsthost", "dst"),
        filesystems=(FilesystemPair("tank/a", DST_FS),), interval=10, retries=2,
        retry_delay=0.0)
    base.update(fields)
    return Service(**base)  # type: ignore[arg-type]


class Dirs:
    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "config"
        self.state = tmp_path / "state"
        self.log = tmp_path / "log"
        (self.config / "services").mkdir(parents=True)

    def write(self, svc: Service) -> None:
        (self.config / "services" / f"{svc.name}.toml").write_text(dump_service(svc))

    @property
    def paths(self) -> ServicePaths:
        return ServicePaths(self.state, NAME)

    def stored(self) -> state.ServiceState:
        return StateStore(self.paths).load()

    def log_text(self) -> str:
        path = self.log / f"{NAME}.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    d = Dirs(tmp_path)
    d.write(make_service())
    return d


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSignals(Signals):
    """Sleeps on the fake clock (plus `overshoot`); `on_sleep` acts while the loop waits."""

    def __init__(self, clock: Clock, on_sleep: Callable[[FakeSignals], None] | None = None,
                 overshoot: float = 0.0) -> None:
        super().__init__()
        self.clock = clock
        self.on_sleep = on_sleep
        self.overshoot = overshoot

    def install(self) -> None:
        self._armed = True

    def restore(self) -> None:
        self._armed = False

    def sleep(self, seconds: float, wake_on_reload: bool = False) -> None:
        self.check()
        if self.on_sleep is not None:
            self.on_sleep(self)
        if wake_on_reload and self.reload_requested:
            return
        self.clock.now += seconds + self.overshoot


class FakeCycle:
    """Stands in for replicate_and_survey: takes `durations` on the clock, fails where
    told, and stops the loop (as SIGTERM would) after `stop_after` cycles."""

    def __init__(self, clock: Clock, durations: list[float] | None = None, *,
                 fail: type[ZfsreplError] | None = None, stop_after: int = 3) -> None:
        self.clock = clock
        self.durations = durations or [1.0]
        self.fail = fail
        self.stop_after = stop_after
        self.starts: list[float] = []
        self.intervals: list[int] = []

    def __call__(self, svc: Service, events: CycleEvents,
                 sleep: Callable[[float], None]) -> dict[str, Newest]:
        i = len(self.starts)
        if i >= self.stop_after:
            raise Stopped(signal.SIGTERM)
        self.starts.append(self.clock.now)
        self.intervals.append(svc.interval)
        self.clock.now += self.durations[i % len(self.durations)]
        if self.fail is not None:
            raise self.fail("destination unreachable")
        events.sent(svc.filesystems[0], TransferResult(seconds=0.1, bytes=100))
        return {DST_FS: Newest(f"zfsrepl-src-dst-dsthost-{i + 1}", int(time.time()))}

    def relative_starts(self) -> list[float]:
        return [s - self.starts[0] for s in self.starts]


def daemon(dirs: Dirs, clock: Clock, cycle: FakeCycle, signals: Signals | None = None,
           ) -> Daemon:
    return Daemon(dirs.config, dirs.state, dirs.log, NAME, runner=cycle,
                  signals=signals or FakeSignals(clock), monotonic=clock)


# ---------------------------------------------------------------------------- schedule


def test_next_start_is_start_to_start_and_an_overrun_starts_at_once() -> None:
    assert next_start(100.0, 10, 103.0) == 110.0
    assert next_start(100.0, 10, 125.0) == 125.0


@given(planned=st.floats(0, 1e6), interval=st.integers(1, 86400), ran=st.floats(0, 1e6))
def test_next_start_never_overlaps_nor_comes_early(planned: float, interval: int,
                                                   ran: float) -> None:
    now = planned + ran
    nxt = next_start(planned, interval, now)
    assert nxt >= now
    assert nxt >= planned + interval or nxt == now


def test_cycles_run_start_to_start_and_an_overrunning_one_is_followed_at_once(
        dirs: Dirs) -> None:
    clock = Clock()
    cycle = FakeCycle(clock, [3, 12, 1, 1], stop_after=4)
    assert daemon(dirs, clock, cycle).run() == 0
    assert cycle.relative_starts() == [0, 10, 22, 32]


def test_the_schedule_does_not_drift_when_sleeps_overshoot(dirs: Dirs) -> None:
    clock = Clock()
    cycle = FakeCycle(clock, [1], stop_after=5)
    assert daemon(dirs, clock, cycle, FakeSignals(clock, overshoot=0.25)).run() == 0
    # Each start is late by one overshoot at most, never by the sum of them.
    for k, start in enumerate(cycle.relative_starts()):
        assert k * 10 <= start <= k * 10 + 0.25


def test_a_running_service_records_its_cycles_and_next_run(dirs: Dirs) -> None:
    clock = Clock()
    cycle = FakeCycle(clock, stop_after=2)
    assert daemon(dirs, clock, cycle).run() == 0
    st_ = dirs.stored()
    assert st_.cycles_total == 2 and st_.cycle_failures_total == 0
    assert st_.sent_bytes_total == 200
    assert st_.last_success is not None and st_.newest[DST_FS].snapshot.endswith("-2")
    assert st_.next_run is None  # it stopped: there is no next run
    assert not st_.in_maintenance
    metrics = dirs.paths.metrics_file.read_text()
    assert 'zfsrepl_service_state{service="svc1",state="offline"} 1' in metrics
    assert "service svc1 stopped by SIGTERM" in dirs.log_text()


def test_run_keeps_one_destination_connection_across_cycles_and_closes_it_at_stop(
        dirs: Dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    fake = FakeCycle(clock, stop_after=4)
    used: list[object] = []
    closed: list[object] = []

    def survey(svc: Service, events: CycleEvents, sleep: Callable[[float], None], *,
               destination: object = None) -> dict[str, Newest]:
        used.append(destination)
        if len(used) == 2:  # a SIGHUP between cycles moved the destination
            dirs.write(make_service(destination=Endpoint("otherhost", "dst")))
            signals.reload_requested = True
        return fake(svc, events, sleep)

    monkeypatch.setattr(service, "replicate_and_survey", survey)
    monkeypatch.setattr(service.SshHost, "close", lambda self: closed.append(self))
    signals = FakeSignals(clock)
    code = Daemon(dirs.config, dirs.state, dirs.log, NAME, signals=signals,
                  monotonic=clock).run()
    assert code == 0 and len(used) == 5  # the fifth was stopped
    first, second = used[0], used[2]
    assert isinstance(first, service.SshHost) and isinstance(second, service.SshHost)
    assert used[:2] == [first, first]  # no new connection for a steady service
    assert used[2:] == [second] * 3 and second.endpoint.host == "otherhost"
    assert closed == [first, second]  # the old one when replaced, the new one at the stop


# ---------------------------------------------------------------------------- maintenance


def write_alarm_hook(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "alarm.env"
    hook = tmp_path / "on_alarm.sh"
    hook.write_text(f"#!/bin/sh\nenv | grep ^ZFSREPL_ > {out}\n")
    hook.chmod(0o755)
    return hook, out


def test_failed_cycle_enters_maintenance_runs_on_alarm_and_exits_with_its_status(
        dirs: Dirs, tmp_path: Path) -> None:
    hook, out = write_alarm_hook(tmp_path)
    dirs.write(make_service(on_alarm=str(hook)))
    clock = Clock()
    cycle = FakeCycle(clock, fail=CommandError)
    assert daemon(dirs, clock, cycle).run() == EXIT_MAINTENANCE
    assert len(cycle.starts) == 1

    st_ = dirs.stored()
    assert st_.in_maintenance and st_.maintenance_reason == "destination unreachable"
    assert st_.cycle_failures_total == 1
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert env["ZFSREPL_SERVICE"] == NAME
    assert env["ZFSREPL_STATE"] == "maintenance"
    assert env["ZFSREPL_REASON"] == "destination unreachable"
    assert env["ZFSREPL_DESTINATION"] == "dst@dsthost"
    assert env["ZFSREPL_LOG_FILE"] == str(dirs.log / f"{NAME}.log")
    assert 'state="maintenance"} 1' in dirs.paths.metrics_file.read_text()
    assert f"run `zfsrepl clear {NAME}`" in dirs.log_text()


def test_a_service_in_maintenance_does_not_start_until_cleared(dirs: Dirs) -> None:
    StateStore(dirs.paths).update(lambda s: state.enter_maintenance(s, 1.0, "it broke"))
    clock = Clock()
    cycle = FakeCycle(clock)
    assert daemon(dirs, clock, cycle).run() == EXIT_MAINTENANCE
    assert cycle.starts == []
    assert "in maintenance since" in dirs.log_text() and "it broke" in dirs.log_text()

    StateStore(dirs.paths).update(state.clear_maintenance)
    assert daemon(dirs, clock, cycle).run() == 0
    assert len(cycle.starts) == 3


def test_a_definition_that_stopped_working_is_maintenance_with_an_alarm(dirs: Dirs) -> None:
    clock = Clock()
    cycle = FakeCycle(clock, fail=ConfigError)
    assert daemon(dirs, clock, cycle).run() == EXIT_MAINTENANCE
    assert f" ALARM service {NAME} cannot run a cycle: destination unreachable" in \
        dirs.log_text()


def test_on_alarm_failing_is_a_warning_only(dirs: Dirs, tmp_path: Path) -> None:
    hook = tmp_path / "fails.sh"
    hook.write_text("#!/bin/sh\necho no mail today\nexit 3\n")
    hook.chmod(0o755)
    dirs.write(make_service(on_alarm=str(hook)))
    clock = Clock()
    assert daemon(dirs, clock, FakeCycle(clock, fail=CommandError)).run() == EXIT_MAINTENANCE
    assert "on_alarm hook" in dirs.log_text() and "exit code 3" in dirs.log_text()


def test_a_missing_on_alarm_executable_stops_the_start(dirs: Dirs, tmp_path: Path) -> None:
    dirs.write(make_service(on_alarm=str(tmp_path / "nothing-here")))
    clock = Clock()
    with pytest.raises(ConfigError, match="on_alarm"):
        daemon(dirs, clock, FakeCycle(clock)).run()


# ---------------------------------------------------------------------------- locks


def test_a_second_daemon_says_which_process_runs_the_service(dirs: Dirs) -> None:
    dirs.paths.create()
    with FileLock(dirs.paths.daemon_lock, "run") as held:
        assert held.try_acquire()
        clock = Clock()
        with pytest.raises(ZfsreplError, match=rf"already running: process {os.getpid()} \(run\)"):
            daemon(dirs, clock, FakeCycle(clock)).run()


def test_the_loop_waits_for_a_runonce_in_progress(dirs: Dirs) -> None:
    dirs.paths.create()
    other = FileLock(dirs.paths.cycle_lock, "runonce")
    assert other.try_acquire()
    waited: list[int] = []

    def release_after_a_while(sig: FakeSignals) -> None:
        if other.held:
            waited.append(1)
            if len(waited) == 3:
                other.release()

    clock = Clock()
    cycle = FakeCycle(clock, stop_after=1)
    assert daemon(dirs, clock, cycle, FakeSignals(clock, release_after_a_while)).run() == 0
    assert len(waited) == 3 and len(cycle.starts) == 1
    assert f"waiting: service {NAME} is busy: process {os.getpid()} (runonce)" in \
        dirs.log_text()


# ---------------------------------------------------------------------------- SIGHUP


def test_sighup_rereads_the_definition_and_its_interval_moves_the_next_start(
        dirs: Dirs) -> None:
    def reload_once(sig: FakeSignals) -> None:
        if not getattr(sig, "done", False):
            dirs.write(make_service(interval=4))
            sig.reload_requested = True
            sig.done = True  # type: ignore[attr-defined]

    clock = Clock()
    cycle = FakeCycle(clock, stop_after=3)
    assert daemon(dirs, clock, cycle, FakeSignals(clock, reload_once)).run() == 0
    assert cycle.relative_starts() == [0, 4, 8]
    assert cycle.intervals == [10, 4, 4]
    assert "re-read the definition of svc1: a cycle every 4 s" in dirs.log_text()


def test_a_bad_definition_on_sighup_keeps_the_running_one(dirs: Dirs) -> None:
    def break_it(sig: FakeSignals) -> None:
        if not getattr(sig, "done", False):
            (dirs.config / "services" / f"{NAME}.toml").write_text("interval = [\n")
            sig.reload_requested = True
            sig.done = True  # type: ignore[attr-defined]

    clock = Clock()
    cycle = FakeCycle(clock, stop_after=2)
    assert daemon(dirs, clock, cycle, FakeSignals(clock, break_it)).run() == 0
    assert cycle.relative_starts() == [0, 10]
    assert "keeping the definition in use" in dirs.log_text()
    assert "not valid TOML" in dirs.log_text()


# ---------------------------------------------------------------------------- real signals


def signal_when(condition: Callable[[], bool], signum: int,
                delay: float = 0.0) -> threading.Thread:
    """Send `signum` to this process once `condition` holds (bounded wait), `delay`
    seconds later."""
    def go() -> None:
        # bounded against hanging, and wide: a loaded machine may take seconds to fork
        deadline = time.monotonic() + 120
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(os.getpid(), signum)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigterm_cuts_a_transfer_in_flight_and_exits_zero(dirs: Dirs, tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    def endless_transfer(svc: Service, events: CycleEvents,
                         sleep: Callable[[float], None]) -> dict[str, Newest]:
        pipe(["sh", "-c", f"echo $$ >> {pids}; exec sleep 60"],
             ["sh", "-c", f"echo $$ >> {pids}; exec cat > /dev/null"], "test stream")
        raise AssertionError("the transfer was not cut")

    def both_started() -> bool:
        return pids.exists() and len(pids.read_text().split()) == 2

    t = signal_when(both_started, signal.SIGTERM)
    code = Daemon(dirs.config, dirs.state, dirs.log, NAME, runner=endless_transfer).run()
    t.join()
    assert code == 0
    assert "stopped by SIGTERM; the cycle it cut short is completed by the next one" in \
        dirs.log_text()
    assert all(gone(int(p)) for p in pids.read_text().split())
    st_ = dirs.stored()
    assert st_.cycle_failures_total == 0 and not st_.in_maintenance  # a stop is no failure
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back


def test_a_stop_waits_for_hooks_and_snapshots_to_finish(dirs: Dirs) -> None:
    steps: list[str] = []

    def cycle(svc: Service, events: CycleEvents,
              sleep: Callable[[float], None]) -> dict[str, Newest]:
        with events.snapshot_phase():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here, and must not raise yet
            steps.append("post hook ran")
        steps.append("sent")
        return {}

    code = Daemon(dirs.config, dirs.state, dirs.log, NAME, runner=cycle).run()
    assert code == 0
    assert steps == ["post hook ran"]


def test_sigterm_while_waiting_for_the_next_cycle(dirs: Dirs) -> None:
    cycles: list[int] = []

    def cycle(svc: Service, events: CycleEvents,
              sleep: Callable[[float], None]) -> dict[str, Newest]:
        cycles.append(1)
        return {}

    # the delay: the runner has returned and the loop waits (interval 10 s)
    t = signal_when(lambda: bool(cycles), signal.SIGTERM, delay=0.5)
    assert Daemon(dirs.config, dirs.state, dirs.log, NAME, runner=cycle).run() == 0
    t.join()
    assert cycles == [1]
    assert "stopped by SIGTERM\n" in dirs.log_text()  # no cycle was cut short


def test_sighup_wakes_the_wait_for_the_next_cycle() -> None:
    sig = Signals()
    sig.install()
    try:
        t = signal_when(lambda: True, signal.SIGHUP)
        sig.sleep(30, wake_on_reload=True)
        t.join()
        assert sig.take_reload()
        assert not sig.take_reload()
    finally:
        sig.restore()


# ---------------------------------------------------------------------------- runonce


def fake_cycle(result: dict[str, Newest] | None = None,
               error: ZfsreplError | None = None) -> service.CycleRunner:
    def run(svc: Service, events: CycleEvents,
            sleep: Callable[[float], None]) -> dict[str, Newest]:
        events.attempt_failed(1, 2, CommandError("first try failed"))
        events.sent(svc.filesystems[0], TransferResult(seconds=1.0, bytes=4096))
        if error is not None:
            raise error
        return result or {}
    return run


def test_runonce_records_its_cycle(dirs: Dirs) -> None:
    svc = make_service()
    newest = {DST_FS: Newest("zfsrepl-src-dst-dsthost-7", 1_700_000_000)}
    service.run_once(svc, dirs.state, dirs.log, wait=True, runner=fake_cycle(newest))
    st_ = dirs.stored()
    assert st_.cycles_total == 1 and st_.attempt_failures_total == 1
    assert st_.sent_bytes_total == 4096 and st_.newest == newest
    assert st_.last_error == "first try failed" and st_.last_success is not None
    assert not dirs.paths.metrics_file.exists()  # only `run` keeps the textfile


def test_runonce_failure_is_recorded_and_raised(dirs: Dirs, tmp_path: Path) -> None:
    metrics = tmp_path / "m.prom"
    with pytest.raises(CommandError, match="gone"):
        service.run_once(make_service(), dirs.state, dirs.log, wait=True, metrics_file=metrics,
                         runner=fake_cycle(error=CommandError("gone")))
    st_ = dirs.stored()
    assert st_.cycle_failures_total == 1 and st_.last_error == "gone"
    assert not st_.in_maintenance  # runonce reports; only the service goes to maintenance
    assert "zfsrepl_cycle_failures_total" in metrics.read_text()


def test_runonce_no_wait_names_the_process_in_a_cycle(dirs: Dirs) -> None:
    dirs.paths.create()
    with FileLock(dirs.paths.cycle_lock, "run") as held:
        assert held.try_acquire()
        with pytest.raises(ZfsreplError) as err:
            service.run_once(make_service(), dirs.state, dirs.log, wait=False,
                             runner=fake_cycle())
    assert f"service {NAME} is busy: process {os.getpid()} (run) is replicating it" in \
        str(err.value)
    assert "--no-wait" in str(err.value)


def test_runonce_waits_for_the_cycle_in_progress(dirs: Dirs) -> None:
    dirs.paths.create()
    held = FileLock(dirs.paths.cycle_lock, "run")
    assert held.try_acquire()
    timer = threading.Timer(0.3, held.release)
    timer.start()
    service.run_once(make_service(), dirs.state, dirs.log, wait=True, runner=fake_cycle())
    timer.join()
    assert dirs.stored().cycles_total == 1
    assert "waiting: service svc1 is busy" in dirs.log_text()


def test_runonce_in_maintenance_runs_and_says_so(dirs: Dirs) -> None:
    StateStore(dirs.paths).update(lambda s: state.enter_maintenance(s, 1.0, "old trouble"))
    service.run_once(make_service(), dirs.state, dirs.log, wait=True, runner=fake_cycle())
    assert dirs.stored().in_maintenance  # only `clear` clears it
    assert "is in maintenance (old trouble); this cycle runs anyway" in dirs.log_text()


def test_state_folder_that_cannot_be_made_says_how_to_choose_one(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ZfsreplError, match="--state-dir"):
        service.run_once(make_service(), blocker / "state", tmp_path / "log", wait=True,
                         runner=fake_cycle())


# ---------------------------------------------------------------------------- pure helpers


def test_newest_by_destination_takes_the_newest_own_snapshot() -> None:
    svc = make_service()
    lists: dict[str, list[Snapshot] | None] = {
        DST_FS: [Snapshot(DST_FS, svc.naming.format(2), 2, 20, creation=200),
                 Snapshot(DST_FS, "manual", 3, 30, creation=300),
                 Snapshot(DST_FS, svc.naming.format(1), 1, 10, creation=100)],
        "backup/missing": None,
        "backup/empty": [],
    }
    assert service.newest_by_destination(svc.naming, lists) == {
        DST_FS: Newest(svc.naming.format(2), 200)}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_port_serves_while_the_service_runs(dirs: Dirs) -> None:
    import urllib.request

    port = free_port()
    dirs.write(make_service(metrics_port=port))
    scraped: list[str] = []

    def scrape(sig: FakeSignals) -> None:
        if not scraped:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                scraped.append(resp.read().decode())

    clock = Clock()
    assert daemon(dirs, clock, FakeCycle(clock, stop_after=1), FakeSignals(clock, scrape)).run() \
        == 0
    assert 'zfsrepl_service_state{service="svc1",state="online"} 1' in scraped[0]
    assert 'zfsrepl_cycles_total{service="svc1"} 1' in scraped[0]
    assert f"serving metrics on http://127.0.0.1:{port}/metrics" in dirs.log_text()


# ---------------------------------------------------------------------------- runonce: SIGTERM


class ClosableHost:
    def __init__(self) -> None:
        self.closed = False

    def __enter__(self) -> ClosableHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True


def test_sigterm_in_runonce_unwinds_through_every_with_and_gives_the_handler_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    host = ClosableHost()
    with pytest.raises(interrupts.Terminated), interrupts.sigterm_unwinds(), host:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
        raise AssertionError("SIGTERM did not unwind")
    assert host.closed
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_sigterm_does_not_cut_the_clean_up_of_the_first() -> None:
    cleaned: list[str] = []
    with pytest.raises(interrupts.Terminated), interrupts.sigterm_unwinds():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # ignored while cleaning up
            time.sleep(0.05)
            cleaned.append("closed")
    assert cleaned == ["closed"]


def test_terminated_is_a_keyboard_interrupt_not_an_error() -> None:
    # No `except Exception` (nor the retry loop) may swallow it.
    assert issubclass(interrupts.Terminated, KeyboardInterrupt)
    assert not issubclass(interrupts.Terminated, Exception)


def test_runonce_exits_143_on_sigterm_while_waiting_for_the_lock(
        dirs: Dirs, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from zfsrepl.cli import runonce
    from zfsrepl.cli.common import Context

    paths = ServicePaths(dirs.state, NAME)
    paths.create()
    args = argparse.Namespace(name=NAME, dry_run=False, no_wait=False, metrics_file=None,
                              yes=False)
    ctx = Context(config_dir=dirs.config, state_dir=dirs.state, log_dir=dirs.log)
    before = signal.getsignal(signal.SIGTERM)
    with FileLock(paths.cycle_lock, "run") as held:
        held.acquire(wait=False, what="test")
        # only once runonce handles SIGTERM: sent before, the signal would be lost (or
        # end pytest) and runonce would wait for the lock for ever
        t = signal_when(lambda: signal.getsignal(signal.SIGTERM) is not before,
                        signal.SIGTERM, delay=0.5)
        code = runonce.run(args, ctx)
        t.join()
    assert code == runonce.EXIT_TERMINATED == 143
    assert "terminated" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_run_refuses_the_destinations_copy_and_changes_nothing(dirs: Dirs) -> None:
    dirs.write(dataclasses.replace(make_service(), role="destination"))
    cycles: list[int] = []

    def cycle(svc: Service, events: CycleEvents,
              sleep: Callable[[float], None]) -> dict[str, Newest]:
        cycles.append(1)
        return {}

    with pytest.raises(UsageError, match=r"destination's copy .* runonce .* \(failback\)"):
        Daemon(dirs.config, dirs.state, dirs.log, NAME, runner=cycle).run()
    assert cycles == []
    assert not dirs.paths.folder.exists()
