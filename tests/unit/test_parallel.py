"""`parallel`: the sends (and prunes) of several filesystems at once.

The streams are simulated (a fake `pipe` that takes some time) on the small simulated
ZFS of test_cycle_batching; the stop test runs real pipelines of real processes."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from zfsrepl import config, interrupts, plan, service, transfer
from zfsrepl.config import FilesystemPair, Service
from zfsrepl.cycle import Cycle, CyclePlan, FilesystemPlan, replicate
from zfsrepl.errors import CommandError, ConfigError, ConnectionFailed
from zfsrepl.replication import Replication
from zfsrepl.state import StateStore
from zfsrepl.transfer import Progress, TransferResult

from .fakes import SVC, FnStreams, SimSnap, SimZfs, seq
from .test_capabilities import FUSE, OPENZFS

N = 8
PAIRS = tuple(FilesystemPair(f"tank/src/fs{i}", f"backup/dst/fs{i}") for i in range(N))


def svc(parallel: int, n: int = N, **kw: Any) -> Service:
    return dataclasses.replace(SVC, filesystems=PAIRS[:n], parallel=parallel, **kw)


# ---------------------------------------------------------------------------- config


def definition(**extra: object) -> dict[str, object]:
    return {"name": "s", "source": {"host": "a", "user": "src"},
            "destination": {"host": "b", "user": "dst"},
            "filesystem": [{"source": "tank/a", "destination": "backup/a"}], **extra}


def test_parallel_defaults_to_one_and_round_trips() -> None:
    import tomllib

    one = config.parse_service(definition())
    assert one.parallel == 1
    assert "parallel" not in config.dump_service(one)
    four = config.parse_service(definition(parallel=4))
    assert four.parallel == 4
    assert "\nparallel = 4\n" in config.dump_service(four)
    assert config.parse_service(tomllib.loads(config.dump_service(four))) == four
    assert config.parse_service(definition(parallel=16)).parallel == 16


@pytest.mark.parametrize("value", [0, 17, -1, "4", True, 2.0])
def test_a_bad_parallel_names_file_key_and_what_is_expected(value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse_service(definition(parallel=value), Path("/c/s.toml"))
    assert str(exc.value) == (f"/c/s.toml: parallel: {value!r} is not valid; "
                              "expected an integer from 1 to 16")


def test_a_misspelt_parallel_is_named() -> None:
    with pytest.raises(ConfigError, match="paralel: unknown key; did you mean 'parallel'"):
        config.parse_service(definition(paralel=2), Path("/c/s.toml"))


# ---------------------------------------------------------------------------- a world


class Journal:
    """What happened, in order, across threads; and how many streams ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, ...]] = []
        self.in_flight = 0
        self.most = 0

    def add(self, *event: str) -> None:
        with self.lock:
            self.events.append(event)

    def index(self, kind: str, last: bool = False) -> int:
        found = [i for i, e in enumerate(self.events) if e[0] == kind]
        assert found, (kind, self.events)
        return found[-1] if last else found[0]

    def of(self, kind: str) -> list[tuple[str, ...]]:
        return [e for e in self.events if e[0] == kind]


class JournaledZfs(SimZfs):
    """SimZfs whose calls go into the journal too (and one at a time: a real host's
    zfs serializes what it changes as well)."""

    def __init__(self, journal: Journal, *args: Any) -> None:
        super().__init__(*args)
        self.journal = journal
        self.mutex = threading.Lock()

    def run(self, argv: list[str], **kw: Any) -> Any:
        if argv[1:2]:
            self.journal.add(argv[1], self.label, *argv[2:])
        with self.mutex:
            return super().run(argv, **kw)


@dataclasses.dataclass
class World:
    journal: Journal
    src: JournaledZfs
    dst: JournaledZfs
    delay: Callable[[str, str], float] = lambda fs, target: 0.05
    cut: set[str] = dataclasses.field(default_factory=set)
    streams: FnStreams = dataclasses.field(
        default_factory=lambda: FnStreams(lambda *a, **kw: TransferResult(0.1, 10)))

    def cycle(self, service_: Service) -> None:
        replicate(service_, self.src, self.dst, sleep=lambda s: None, streams=self.streams)

    def new_cycle(self, service_: Service) -> Cycle:
        return Cycle(service_, self.src, self.dst, streams=self.streams)


@pytest.fixture
def make_world(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], World]:
    def make(usage: str) -> World:
        j = Journal()
        w = World(j, JournaledZfs(j, "src@srchost", usage, [p.source for p in PAIRS],
                                  {"tank/src"}),
                  JournaledZfs(j, "dst@desthost", usage, [], {"backup/dst"}))
        w.src.requests = []  # the sending side runs zfs itself: no agent

        def pipe(sender: list[str], receiver: list[str], what: str,
                 **kw: Any) -> TransferResult:
            src_fs, _, target = sender[-1].partition("@")
            with j.lock:
                j.in_flight += 1
                j.most = max(j.most, j.in_flight)
                j.events.append(("stream", src_fs, target, threading.current_thread().name))
            try:
                time.sleep(w.delay(src_fs, target))
                if src_fs in w.cut:
                    raise CommandError(f"{what} failed: cut", stderr="Connection reset")
                with w.src.mutex, w.dst.mutex:
                    snaps = w.src.fs[src_fs]
                    top = next(s for s in snaps if s.name == target)
                    sent = [top]
                    if "-I" in sender:
                        base = sender[sender.index("-I") + 1].partition("@")[2]
                        low = next(s.txg for s in snaps if s.name == base)
                        sent = [s for s in snaps if low < s.txg <= top.txg]
                    dst_fs = receiver[-1]
                    w.dst.fs.setdefault(dst_fs, [])
                    w.dst.marks.setdefault(dst_fs, {})
                    w.dst.fs[dst_fs] += [SimSnap(s.name, s.guid, w.dst.next_txg())
                                         for s in sent]
            finally:
                with j.lock:
                    j.in_flight -= 1
                    j.events.append(("streamed", src_fs, target))
            return TransferResult(0.1, 10)

        w.streams = FnStreams(pipe)
        return w

    return make


# ---------------------------------------------------------------------------- sends


@pytest.mark.parametrize("parallel", [1, 2, 3, 8, 16])
def test_never_more_than_parallel_streams_in_flight(make_world: Callable[[str], World],
                                                    parallel: int) -> None:
    w = make_world(FUSE)
    want = min(parallel, N)

    def once_all_are_in_flight(fs: str, target: str) -> float:
        # each stream waits until `want` ran at once (bounded: if the cycle ran fewer
        # side by side, the wait ends and `most` says so), however slow this machine
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with w.journal.lock:
                if w.journal.most >= want:
                    break
            time.sleep(0.005)
        return 0.0

    w.delay = once_all_are_in_flight
    w.cycle(svc(parallel))
    assert w.journal.most == want
    assert len(w.journal.of("streamed")) == N
    assert all([s.name for s in w.dst.fs[p.destination]] == [seq(1)] for p in PAIRS)


def test_parallel_one_sends_in_the_main_thread_in_order(
        make_world: Callable[[str], World]) -> None:
    w = make_world(FUSE)
    w.cycle(svc(1))
    streams = w.journal.of("stream")
    assert [e[1] for e in streams] == [p.source for p in PAIRS]
    assert {e[3] for e in streams} == {threading.main_thread().name}


def fs_plan(pair: FilesystemPair, targets: list[str]) -> FilesystemPlan:
    """A filesystem with one stream per target, each from the one before (`-i`)."""
    sends = tuple(plan.Send(t, base=b) for b, t in zip(["s0", *targets], targets))
    return FilesystemPlan(pair, [], [], plan.Incremental("s0", sends))


def test_each_filesystem_keeps_its_streams_in_order_one_at_a_time(
        make_world: Callable[[str], World]) -> None:
    w = make_world(FUSE)
    # streams of different lengths: the filesystems' streams interleave
    w.delay = lambda fs, target: 0.003 * ((int(fs[-1]) + int(target[1:])) % 4)
    targets = [f"s{k}" for k in range(1, 4)]
    for p in PAIRS:  # the fake pipe delivers what the source has
        w.src.fs[p.source] = [SimSnap(t, 100 + i, 10 + i) for i, t in enumerate(["s0", *targets])]
    cp = CyclePlan(Replication.forward(svc(4)), None, [fs_plan(p, targets) for p in PAIRS])
    w.new_cycle(svc(4)).send_and_prune(cp)
    events = [e for e in w.journal.events if e[0] in ("stream", "streamed")]
    for p in PAIRS:
        mine = [(e[0], e[2]) for e in events if e[1] == p.source]
        assert mine == [(kind, t) for t in targets for kind in ("stream", "streamed")]
    assert w.journal.most == 4
    order = [e[1] for e in events if e[0] == "stream"]
    assert order != sorted(order)  # interleaved across filesystems, never within one


def test_a_failure_stops_no_other_filesystem_and_is_reported(
        make_world: Callable[[str], World]) -> None:
    w = make_world(OPENZFS)
    w.cycle(svc(3))
    w.cycle(svc(3))
    broken = PAIRS[2]
    w.cut.add(broken.source)
    w.delay = lambda fs, target: 0.0 if fs == broken.source else 0.02  # fails first
    with pytest.raises(CommandError) as exc:
        w.cycle(svc(3))
    assert f"of {broken.source} to" in str(exc.value) and "cut" in str(exc.value)
    for p in PAIRS:
        names = [s.name for s in w.dst.fs[p.destination]]
        if p == broken:
            assert names == [seq(2)]
            # its base did not move: still held on both sides
            assert w.src.held(p.source) == [seq(2)] == w.dst.held(p.destination)
            assert seq(3) in [s.name for s in w.src.fs[p.source]]  # kept for the next cycle
        else:
            assert names == [seq(3)]
            assert w.src.held(p.source) == [seq(3)] == w.dst.held(p.destination)
    # the link is back: the next cycle catches up
    w.cut.clear()
    w.cycle(svc(3))
    assert all(w.src.held(p.source) == [seq(4)] == w.dst.held(p.destination) for p in PAIRS)


def test_several_failures_are_all_reported_in_the_filesystems_order(
        make_world: Callable[[str], World]) -> None:
    w = make_world(FUSE)
    w.cut |= {PAIRS[5].source, PAIRS[1].source}
    w.delay = lambda fs, target: 0.05 if fs == PAIRS[1].source else 0.0  # 5 fails first
    with pytest.raises(CommandError) as exc:
        w.cycle(svc(4))
    text = str(exc.value)
    assert text.index(PAIRS[1].source + " ") < text.index(PAIRS[5].source + " ")
    assert sum(1 for p in PAIRS if w.dst.fs.get(p.destination)) == N - 2


def test_holds_are_batched_after_all_sends_and_prunes_come_after_them(
        make_world: Callable[[str], World]) -> None:
    w = make_world(OPENZFS)
    w.cycle(svc(3))
    w.cycle(svc(3))
    w.journal.events.clear()
    w.cycle(svc(3))
    j = w.journal
    last_stream = j.index("streamed", last=True)
    assert len(j.of("hold")) == 2 and len(j.of("release")) == 2  # one per side
    assert j.index("hold") > last_stream
    assert j.index("bookmark") > last_stream
    holds_done = max(j.index("release", last=True), j.index("bookmark", last=True))
    destroys = [i for i, e in enumerate(j.events) if e[0] == "destroy" and "@" in e[2]]
    # keep = 1: the old base on each side; the destination's all in one request
    assert len(destroys) == N + 1
    assert min(destroys) > holds_done


class SideBySide:
    """How many `zfs SUB` calls of one side ran at once (`most`): each waits until
    `want` were seen together (bounded: if the cycle ran fewer side by side, the wait
    ends and `most` says so), however slow this machine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, zfs: SimZfs, sub: str,
                 want: int) -> None:
        self.most = 0
        in_flight = 0
        changed = threading.Condition()
        real = zfs.run

        def run(argv: list[str], **kw: Any) -> Any:
            nonlocal in_flight
            if argv[1:2] != [sub]:
                return real(argv, **kw)
            with changed:
                in_flight += 1
                self.most = max(self.most, in_flight)
                changed.notify_all()
                changed.wait_for(lambda: self.most >= want, timeout=15)
            try:
                return real(argv, **kw)
            finally:
                with changed:
                    in_flight -= 1

        monkeypatch.setattr(zfs, "run", run)


def test_bookmarks_are_made_side_by_side_too(make_world: Callable[[str], World],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # each `zfs bookmark` waits for its transaction group: they overlap like streams
    w = make_world(OPENZFS)
    w.cycle(svc(4))
    seen = SideBySide(monkeypatch, w.src, "bookmark", 4)
    w.cycle(svc(4))
    assert seen.most == 4
    assert all(seq(2) in w.src.marks[p.source] for p in PAIRS)


def test_prunes_run_side_by_side_too(make_world: Callable[[str], World],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    w = make_world(FUSE)
    w.dst.requests = []  # an agent from before destroy-many: a destroy each, side by side
    w.cycle(svc(4))
    seen = SideBySide(monkeypatch, w.dst, "destroy", 4)
    w.cycle(svc(4))
    w.cycle(svc(4))
    assert seen.most == 4
    assert all([s.name for s in w.dst.fs[p.destination]] == [seq(3)] for p in PAIRS)


def test_a_resumed_stream_asks_for_another_look(make_world: Callable[[str], World]) -> None:
    w = make_world(OPENZFS)
    sent: list[str] = []

    def stream(sender: list[str], receiver: list[str], what: str, **kw: Any) -> TransferResult:
        sent.append(what.rsplit(" of ", 1)[1].split(" to ", 1)[0])
        return TransferResult(0.1, 10)

    c = Cycle(svc(3), w.src, w.dst, streams=FnStreams(stream))
    fps = [FilesystemPlan(p, [], [], plan.UpToDate(seq(1))) for p in PAIRS]
    fps[4] = FilesystemPlan(PAIRS[4], [], [], plan.Resume("token-1"))
    assert c.send_and_prune(CyclePlan(Replication.forward(svc(3)), None, fps)) is True
    assert sent == [PAIRS[4].source]
    fps[4] = FilesystemPlan(PAIRS[4], [], [], plan.UpToDate(seq(1)))
    assert c.send_and_prune(CyclePlan(Replication.forward(svc(3)), None, fps)) is False


# ---------------------------------------------------------------------------- threads


def test_the_recorder_counts_bytes_sent_from_many_threads(tmp_path: Path) -> None:
    from zfsrepl.state import ServicePaths

    paths = ServicePaths(tmp_path, "s")
    paths.create()
    rec = service.Recorder(StateStore(paths), contextlib.nullcontext, time.time)
    pair = PAIRS[0]

    def hammer() -> None:
        for _ in range(20000):
            rec.sent(pair, TransferResult(0.0, 3))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rec.sent_bytes == 8 * 20000 * 3


def test_concurrent_progress_logs_lines_instead_of_redrawing_one(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    out = io.StringIO()
    p = Progress("tank/src/fs1@snap", 1000, interactive=True, stream=out, concurrent=True,
                 clock=lambda: now[0])
    assert not p.interactive and p.interval == transfer.CONCURRENT_TTY_PROGRESS_INTERVAL
    caplog.set_level(logging.INFO, logger="zfsrepl")
    for t in (1.0, 5.0, 10.5, 12.0, 21.0):
        now[0] = t
        p.update(int(t * 10))
    p.finish()
    assert out.getvalue() == ""  # nothing drawn on the terminal
    lines = [r.message for r in caplog.records]
    assert len(lines) == 2 and all(m.startswith("progress of tank/src/fs1@snap: ")
                                   for m in lines)
    # a daemon keeps its interval, concurrent or not
    quiet = Progress("x", interactive=False, stream=out, concurrent=True)
    assert quiet.interval == transfer.DAEMON_PROGRESS_INTERVAL
    # one stream on a terminal is still redrawn
    assert Progress("x", interactive=True, stream=out).interactive


def test_streams_in_workers_get_concurrent_progress(make_world: Callable[[str], World],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    w = make_world(FUSE)
    seen: list[tuple[str, bool, bool]] = []
    fake = w.streams.pipe

    def pipe(sender: list[str], receiver: list[str], what: str, **kw: Any) -> TransferResult:
        seen.append((what, kw["progress"].interactive is False and kw["cancel"] is not None,
                     kw["progress"].what.startswith(sender[-1].partition("@")[0])))
        return fake(sender, receiver, what, **kw)

    w.streams.pipe = pipe
    monkeypatch.setattr(transfer.sys, "stderr", _Tty())
    w.cycle(svc(3))
    assert len(seen) == N and all(concurrent and named for _, concurrent, named in seen)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_dry_run_says_how_many_go_at_once() -> None:
    cp = CyclePlan(Replication.forward(svc(4)), None, [])
    assert "parallel: up to 4 filesystems sent at once" in cp.describe()
    one = CyclePlan(Replication.forward(svc(1)), None, [])
    assert not any("parallel" in line for line in one.describe())


# ---------------------------------------------------------------------------- stopping


class _Recorded(subprocess.Popen[bytes]):
    started: ClassVar[list[subprocess.Popen[bytes]]] = []

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        _Recorded.started.append(self)


@pytest.fixture
def recorded_popen(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    _Recorded.started = []
    monkeypatch.setattr(transfer.subprocess, "Popen", _Recorded)
    yield _Recorded.started
    for proc in _Recorded.started:  # never leave one behind, whatever the test did
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_stop_cuts_every_stream_in_flight_and_starts_no_other(
        make_world: Callable[[str], World], monkeypatch: pytest.MonkeyPatch,
        recorded_popen: list[subprocess.Popen[bytes]]) -> None:
    w = make_world(FUSE)
    # Real pipelines of real processes that would run for a minute: a sender that
    # writes a little and then waits, a receiver that reads until the end.
    w.streams.pipe = lambda sender, receiver, what, **kw: transfer.pipe(
        ["sh", "-c", "echo data; exec sleep 60"], ["sh", "-c", "exec cat >/dev/null"], what,
        **kw)
    cycle = w.new_cycle(svc(3))
    cp = cycle.survey(take_snapshot=True)
    cycle.take_snapshots(cp)

    def stop_when_three_run() -> None:
        deadline = time.monotonic() + 120  # a bound against hanging, wide for a loaded machine
        while time.monotonic() < deadline:
            if sum(1 for p in list(recorded_popen) if p.poll() is None) >= 6:
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=stop_when_three_run)
    with interrupts.sigterm_unwinds(), pytest.raises(interrupts.Terminated):
        killer.start()
        try:
            cycle.send_and_prune(cp)
        finally:
            killer.join()
    assert len(recorded_popen) == 6  # three streams, two processes each; none after
    assert all(p.returncode is not None for p in recorded_popen)  # ended and waited for
    # the senders were cut by a signal: none waited out its minute
    senders = [p for p in recorded_popen if "sleep 60" in str(p.args)]
    assert len(senders) == 3 and all(p.returncode < 0 for p in senders), \
        [(p.args, p.returncode) for p in recorded_popen]
    assert not any(w.dst.fs.get(p.destination) for p in PAIRS)
    deadline = time.monotonic() + 60
    while [t for t in threading.enumerate() if t.name.startswith("zfsrepl-")]:
        assert time.monotonic() < deadline, threading.enumerate()
        time.sleep(0.01)


def test_a_cancel_refuses_new_pipelines_and_ends_processes_started_late() -> None:
    cancel = transfer.Cancel()
    proc = subprocess.Popen(["sleep", "60"])
    try:
        cancel.cancel()
        cancel.track(proc)  # started just as the stop came: ended at once
        assert proc.wait(timeout=120) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(transfer.TransferStopped, match=r"^send of x: not started: stopping$"):
        transfer.pipe(["true"], ["true"], "send of x", cancel=cancel)


def test_a_cancelled_pipeline_reports_the_stop(
        recorded_popen: list[subprocess.Popen[bytes]]) -> None:
    cancel = transfer.Cancel()
    result: list[BaseException] = []

    def run() -> None:
        try:
            transfer.pipe(["sh", "-c", "echo x; exec sleep 60"], ["sh", "-c", "exec cat"],
                          "full send of tank/fs@s1", cancel=cancel)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120  # bounds against hanging, wide for a loaded machine
    while cancel.running() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cancel.cancel() == 2
    t.join(120)
    assert not t.is_alive()
    assert isinstance(result[0], transfer.TransferStopped)
    assert str(result[0]) == "full send of tank/fs@s1 failed: cut: stopping"
    assert cancel.running() == 0
    assert all(p.returncode is not None for p in recorded_popen)


def test_connections_are_opened_again_from_the_main_thread_only(
        make_world: Callable[[str], World], monkeypatch: pytest.MonkeyPatch) -> None:
    # A master started by a worker thread would die with that thread (PR_SET_PDEATHSIG).
    w = make_world(FUSE)
    threads: list[str] = []
    lost = [True]  # the connection is gone when the sends begin: the first fails

    def connect() -> None:
        threads.append(threading.current_thread().name)
        if lost[0] and len(threads) > 2:
            lost[0] = False
            raise ConnectionFailed("cannot connect to dst@desthost: connection refused")

    monkeypatch.setattr(w.dst, "connect", connect, raising=False)
    with pytest.raises(CommandError, match=r"^cannot connect to dst@desthost"):
        w.cycle(svc(3))
    assert threads and set(threads) == {threading.main_thread().name}
    # one filesystem failed to connect; the connection came back for the others
    assert sum(1 for p in PAIRS if w.dst.fs.get(p.destination)) == N - 1


def test_an_unexpected_error_in_a_worker_cuts_the_others_and_is_raised(
        make_world: Callable[[str], World]) -> None:
    w = make_world(FUSE)
    w.delay = lambda fs, target: 0.0 if fs == PAIRS[0].source else 0.05
    cycle = w.new_cycle(svc(3))
    cp = cycle.survey(take_snapshot=True)
    cycle.take_snapshots(cp)
    real = w.streams.pipe

    def send(sender: list[str], receiver: list[str], what: str, **kw: Any) -> TransferResult:
        if sender[-1].startswith(PAIRS[0].source + "@"):
            raise RuntimeError("a bug")
        return real(sender, receiver, what, **kw)

    w.streams.pipe = send
    with pytest.raises(RuntimeError, match="a bug"):
        cycle.send_and_prune(cp)
    # nothing was handed out after it: at most the two in flight beside it streamed
    assert len(w.journal.of("stream")) <= 2
