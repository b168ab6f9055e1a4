"""Maintenance that moves with the pool: the ZFS user property beside the state file.

ZFS is a fake here: a host that answers `zfs get/set/inherit` of user properties from
a dict, as a node that imported the pool would."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zfsrepl import cluster_state, log, state
from zfsrepl.cli import main
from zfsrepl.cluster_state import Maintenance, combine, decode, encode, property_name
from zfsrepl.config import SERVICE_NAME_RE, Endpoint, FilesystemPair, Service, dump_service
from zfsrepl.cycle import CycleEvents
from zfsrepl.errors import CommandError
from zfsrepl.host import Result
from zfsrepl.managers import EXIT_MAINTENANCE
from zfsrepl.service import Daemon
from zfsrepl.state import Newest, ServicePaths, StateStore
from zfsrepl.zfs import Zfs

NAME = "Web-1"
FS = ("tank/a", "tank/b")
USERPROP_RE = r"[a-z0-9:._-]+"


class FakeZfsHost:
    """`zfs get -H -s local -o name,value`, `zfs set P=V FS` and `zfs inherit P FS` over
    `props` (filesystem -> {property: value}); `refuse_set`: the user lacks userprop."""

    label = "src@node1"

    def __init__(self, filesystems: tuple[str, ...] = FS, *, refuse_set: bool = False,
                 down: bool = False) -> None:
        self.props: dict[str, dict[str, str]] = {fs: {} for fs in filesystems}
        self.refuse_set = refuse_set
        self.down = down  # the pool is not imported on this node
        self.calls: list[list[str]] = []

    def command(self, argv: list[str]) -> list[str]:
        return argv

    def close(self) -> None:
        pass

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        self.calls.append(argv)
        assert argv[0] == "zfs"
        if self.down:
            raise CommandError("src@node1: command not found: zfs")
        sub = argv[1]
        if sub == "get":
            assert argv[2:8] == ["-H", "-s", "local", "-o", "name,value", argv[7]]
            prop, names = argv[7], argv[8:]
            out, err = [], []
            for fs in names:
                if fs not in self.props:
                    err.append(f"cannot open '{fs}': dataset does not exist")
                elif prop in self.props[fs]:
                    out.append(f"{fs}\t{self.props[fs][prop]}")
            return Result(argv, 1 if err else 0, "".join(f"{ln}\n" for ln in out),
                          "\n".join(err))
        if sub == "set":
            if self.refuse_set:
                return Result(argv, 1, "", "cannot set property for 'tank/a': permission "
                                           "denied\n")
            prop, _, value = argv[2].partition("=")
            self.props[argv[3]][prop] = value
            return Result(argv, 0, "", "")
        if sub == "inherit":
            self.props[argv[3]].pop(argv[2], None)
            return Result(argv, 0, "", "")
        raise AssertionError(f"unexpected zfs call {argv}")


def make_service(name: str = NAME, filesystems: tuple[str, ...] = FS) -> Service:
    return Service(name, Endpoint("src-cluster", "src"), Endpoint("dst-cluster", "dst"),
                   tuple(FilesystemPair(fs, fs.replace("tank", "backup")) for fs in filesystems),
                   interval=10, retries=1, retry_delay=0.0)


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() and log.setup() take the logger off the root: give it back to later tests
    for attr in ("propagate", "handlers", "level"):
        monkeypatch.setattr(log.logger, attr, getattr(log.logger, attr))
    monkeypatch.setattr(log.logger, "handlers", list(log.logger.handlers))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeZfsHost:
    host = FakeZfsHost()
    monkeypatch.setattr(cluster_state, "source_zfs",
                        lambda svc: Zfs(host, ["zfs"]))
    return host


# ---------------------------------------------------------------------------- pure


def test_the_property_names_the_service_in_what_zfs_allows() -> None:
    assert property_name("web") == "zfsrepl:maintenance:web"
    assert property_name("Web-1.x_y") == "zfsrepl:maintenance::web-1.x_y"


@given(st.from_regex(SERVICE_NAME_RE, fullmatch=True), st.from_regex(SERVICE_NAME_RE,
                                                                     fullmatch=True))
def test_property_names_are_valid_and_one_to_one(a: str, b: str) -> None:
    import re

    assert re.fullmatch(USERPROP_RE, property_name(a))
    assert (property_name(a) == property_name(b)) == (a == b)


@given(st.floats(min_value=0, max_value=4e9), st.text())
def test_a_value_reads_back_as_one_line_within_what_zfs_stores(since: float,
                                                                reason: str) -> None:
    value = encode(since, reason)
    assert "\n" not in value and "\t" not in value
    assert len(value.encode("utf-8")) <= cluster_state.MAX_VALUE_BYTES
    found = decode(value)
    assert found is not None and found.since == int(since)


def test_decode() -> None:
    assert decode("-") is None and decode("") is None
    assert decode("1700000000 destination unreachable") == Maintenance(
        1700000000.0, "destination unreachable")
    assert decode("set by hand") == Maintenance(None, "set by hand")
    assert encode(5, "a\tb\nc") == "5 a b c"


def test_combine_takes_the_earliest() -> None:
    assert combine({}) is None
    assert combine({"tank/a": "-"}) is None
    assert combine({"tank/a": "20 later", "tank/b": "10 first", "tank/c": "by hand"}) == \
        Maintenance(10.0, "first")


def test_the_state_file_wins_and_zfs_fills_in() -> None:
    empty = state.ServiceState()
    assert cluster_state.with_maintenance(empty, None, 5.0) == empty
    moved = cluster_state.with_maintenance(empty, Maintenance(7.0, "moved"), 5.0)
    assert moved.maintenance_since == 7.0 and moved.maintenance_reason == "moved"
    undated = cluster_state.with_maintenance(empty, Maintenance(None, "by hand"), 5.0)
    assert undated.maintenance_since == 5.0
    local = state.enter_maintenance(empty, 1.0, "local")
    assert cluster_state.with_maintenance(local, Maintenance(7.0, "moved"), 5.0) == local


# ---------------------------------------------------------------------------- ZFS


def test_mark_read_clear(fake: FakeZfsHost) -> None:
    svc = make_service()
    assert cluster_state.read(svc) is None
    cluster_state.mark(svc, 1700000000.5, "cannot connect to dst@dst-cluster")
    prop = property_name(NAME)
    assert fake.props["tank/a"][prop] == "1700000000 cannot connect to dst@dst-cluster"
    assert fake.props["tank/b"][prop] == fake.props["tank/a"][prop]
    assert cluster_state.read(svc) == Maintenance(1700000000.0,
                                                  "cannot connect to dst@dst-cluster")
    cluster_state.clear(svc)
    assert fake.props == {"tank/a": {}, "tank/b": {}}


def test_one_filesystem_missing_here_does_not_hide_the_others(fake: FakeZfsHost) -> None:
    svc = make_service(filesystems=("tank/a", "tank/gone"))
    fake.props["tank/a"][property_name(NAME)] = "9 moved"
    assert cluster_state.read(svc) == Maintenance(9.0, "moved")


def test_a_node_without_the_pool_reads_no_maintenance(fake: FakeZfsHost) -> None:
    fake.down = True
    assert cluster_state.read(make_service()) is None


def test_a_refused_set_is_a_warning_not_a_failure(fake: FakeZfsHost,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    fake.refuse_set = True
    cluster_state.mark(make_service(), 1.0, "broken")
    text = caplog.text
    assert "cannot record the maintenance of Web-1 in ZFS on tank/a: cannot set property" in text
    assert "userprop" in text


# ---------------------------------------------------------------------------- run, status, clear


class Dirs:
    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "config"
        self.state = tmp_path / "state"
        self.log = tmp_path / "log"
        (self.config / "services").mkdir(parents=True)
        (self.config / "services" / f"{NAME}.toml").write_text(dump_service(make_service()))
        self.args = ["--config-dir", str(self.config), "--state-dir", str(self.state),
                     "--log-dir", str(self.log)]

    @property
    def store(self) -> StateStore:
        return StateStore(ServicePaths(self.state, NAME))


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dirs:
    log.setup()
    from zfsrepl import managers

    monkeypatch.setattr(managers, "detect", lambda: None)
    return Dirs(tmp_path)


def never_run(svc: Service, events: CycleEvents, sleep: Callable[[float], None]
              ) -> dict[str, Newest]:
    raise AssertionError("no cycle may run in maintenance")


def test_run_on_the_node_that_took_over_finds_the_maintenance(
        dirs: Dirs, fake: FakeZfsHost) -> None:
    fake.props["tank/b"][property_name(NAME)] = "1700000000 destination unreachable"
    daemon = Daemon(dirs.config, dirs.state, dirs.log, NAME, runner=never_run,
                    pool_state=True)
    assert daemon.run() == EXIT_MAINTENANCE
    st_ = dirs.store.load()
    assert st_.maintenance_reason == "destination unreachable"
    assert st_.maintenance_since == 1700000000.0
    assert "destination unreachable" in (dirs.log / f"{NAME}.log").read_text()


def test_entering_maintenance_writes_it_into_zfs(dirs: Dirs, fake: FakeZfsHost) -> None:
    def failing(svc: Service, events: CycleEvents, sleep: Callable[[float], None]
                ) -> dict[str, Newest]:
        raise CommandError("cannot connect to dst@dst-cluster: Connection refused")

    daemon = Daemon(dirs.config, dirs.state, dirs.log, NAME, runner=failing,
                    pool_state=True)
    daemon.signals.install = lambda: None  # type: ignore[method-assign]
    daemon.signals.restore = lambda: None  # type: ignore[method-assign]
    assert daemon.run() == EXIT_MAINTENANCE
    found = cluster_state.read(make_service())
    assert found is not None
    assert "Connection refused" in found.reason


def test_status_shows_the_moved_maintenance_and_clear_clears_both(
        dirs: Dirs, fake: FakeZfsHost, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from zfsrepl import status

    monkeypatch.setattr(status, "read_both_sides", lambda svc: (None, None, []))
    fake.props["tank/a"][property_name(NAME)] = "1700000000 destination unreachable"
    assert main([*dirs.args, "status", NAME]) == 2  # maintenance: critical
    out = capsys.readouterr().out
    assert f"{NAME}: maintenance since" in out and "reason: destination unreachable" in out

    assert main([*dirs.args, "clear", NAME]) == 0
    assert fake.props["tank/a"] == {}
    assert not dirs.store.load().in_maintenance
    assert "(it was: destination unreachable)" in (dirs.log / f"{NAME}.log").read_text()
    capsys.readouterr()
    assert main([*dirs.args, "clear", NAME]) == 0
    assert capsys.readouterr().out == f"service {NAME} is not in maintenance\n"


def test_clear_removes_the_property_set_beside_a_local_maintenance(
        dirs: Dirs, fake: FakeZfsHost) -> None:
    dirs.store.update(lambda s: state.enter_maintenance(s, 3.0, "local"))
    fake.props["tank/a"][property_name(NAME)] = "3 local"
    assert main([*dirs.args, "clear", NAME]) == 0
    assert fake.props["tank/a"] == {}
    assert shlex.join(fake.calls[-1]) == f"zfs inherit {property_name(NAME)} tank/a"
