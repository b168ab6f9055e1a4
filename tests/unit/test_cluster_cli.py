"""`zfsrepl start-all`, `stop-all` and `state`: which services, and the processes.

The processes are real but the service is a stand-in: a small program that takes the
service's run lock the way `zfsrepl run` does and waits for SIGTERM (or ignores it)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from zfsrepl import cluster_state, lock, log, managers, state
from zfsrepl.cli import cluster as cli_cluster
from zfsrepl.cli import main
from zfsrepl.cli.cluster import Defined, State, decide_state, select
from zfsrepl.config import Endpoint, FilesystemPair, Service, dump_service
from zfsrepl.state import ServicePaths, StateStore

STAND_IN = r"""
import os, signal, sys, time
from pathlib import Path
from zfsrepl.lock import FileLock
args = sys.argv[1:]
state_dir = Path(args[args.index("--state-dir") + 1])
name = args[-1]
if os.environ.get("STAND_IN_EXIT"):
    sys.exit(int(os.environ["STAND_IN_EXIT"]))
if os.environ.get("STAND_IN_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
folder = state_dir / "services" / name
folder.mkdir(parents=True, exist_ok=True)
with FileLock(folder / "run.lock", "run") as lk:
    lk.try_acquire()
    while True:
        time.sleep(0.05)
"""


def service(name: str, host: str = "node-a", role: str = "source") -> Service:
    return Service(name, Endpoint(host, "src"), Endpoint("dst-cluster", "dst"),
                   (FilesystemPair(f"tank/{name}", f"backup/{name}"),), role=role)


# ---------------------------------------------------------------------------- pure


def test_select_by_logical_host_leaves_out_destination_copies_and_names_broken_ones() -> None:
    defined = [Defined("a", service("a", "SRC-CLUSTER")), Defined("b", service("b", "other")),
               Defined("c", service("c", "src-cluster", role="destination")),
               Defined("d", None, "d.toml: interval: missing")]
    chosen, problems = select(defined, "src-cluster")
    assert [d.name for d in chosen] == ["a"]
    assert problems == ["d: d.toml: interval: missing"]
    chosen, _ = select(defined, None)
    assert [d.name for d in chosen] == ["a", "b"]


def test_decide_state() -> None:
    assert decide_state(None, None) == State("offline")
    assert decide_state(None, lock.Holder(42, "run")).line() == "online 42"
    assert decide_state("link\ndown", lock.Holder(42, "run")).line() == "maintenance link down"


# ---------------------------------------------------------------------------- processes


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "config"
        self.state = tmp_path / "state"
        self.log = tmp_path / "log"
        (self.config / "services").mkdir(parents=True)
        self.args = ["--config-dir", str(self.config), "--state-dir", str(self.state),
                     "--log-dir", str(self.log)]

    def define(self, svc: Service) -> None:
        (self.config / "services" / f"{svc.name}.toml").write_text(dump_service(svc))

    def holder(self, name: str) -> lock.Holder | None:
        return lock.probe(ServicePaths(self.state, name).daemon_lock)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    for attr in ("propagate", "level"):
        monkeypatch.setattr(log.logger, attr, getattr(log.logger, attr))
    monkeypatch.setattr(log.logger, "handlers", list(log.logger.handlers))
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    monkeypatch.setattr(managers, "zfsrepl_command", lambda: [sys.executable, str(script)])
    # no ZFS in unit tests: nothing recorded there
    monkeypatch.setattr(cluster_state, "read", lambda svc, zfs=None: None)
    monkeypatch.setattr(cli_cluster, "DEFAULT_TIMEOUT", 30.0)
    s = Setup(tmp_path)
    yield s
    for name in os.listdir(s.state / "services") if (s.state / "services").exists() else []:
        holder = s.holder(name)
        if holder is not None and holder.pid is not None:
            os.kill(holder.pid, signal.SIGKILL)


def test_start_all_state_and_stop_all(world: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    world.define(service("web", "src-cluster"))
    world.define(service("db", "src-cluster"))
    world.define(service("elsewhere", "node-b"))

    assert main([*world.args, "start-all", "--host", "src-cluster"]) == 0
    out = capsys.readouterr().out
    assert "web: started (process" in out and "db: started (process" in out
    web = world.holder("web")
    assert web is not None and world.holder("elsewhere") is None

    assert main([*world.args, "state", "web"]) == 0
    assert capsys.readouterr().out == f"online {web.pid}\n"

    assert main([*world.args, "start-all", "--host", "src-cluster"]) == 0
    assert f"web: already running (process {web.pid})" in capsys.readouterr().out

    assert main([*world.args, "stop-all", "--host", "src-cluster"]) == 0
    out = capsys.readouterr().out
    assert f"web: stopped (process {web.pid})" in out and "db: stopped" in out
    assert world.holder("web") is None and world.holder("db") is None
    assert main([*world.args, "state", "web"]) == 0
    assert capsys.readouterr().out == "offline\n"


def test_a_service_in_maintenance_is_not_started_and_says_why(
        world: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    world.define(service("web"))
    world.define(service("db"))
    StateStore(ServicePaths(world.state, "web")).update(
        lambda s: state.enter_maintenance(s, 1.0, "destination unreachable"))
    assert main([*world.args, "start-all"]) == 1
    captured = capsys.readouterr()
    assert "db: started" in captured.out
    assert captured.err == ("zfsrepl: error: web: in maintenance: destination unreachable; "
                            "fix the cause, then run `zfsrepl clear web`\n")
    assert world.holder("web") is None
    assert main([*world.args, "state", "web"]) == 0
    assert capsys.readouterr().out == "maintenance destination unreachable\n"


def test_a_run_that_exits_at_once_is_reported_with_its_log(
        world: Setup, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    world.define(service("web"))
    world.log.mkdir()
    (world.log / "web.log").write_text("2026-01-01 00:00:00 ERROR cannot write the state\n")
    monkeypatch.setenv("STAND_IN_EXIT", "1")
    assert main([*world.args, "start-all"]) == 1
    assert capsys.readouterr().err == (
        "zfsrepl: error: web: `zfsrepl run web` exited with status 1: "
        "2026-01-01 00:00:00 ERROR cannot write the state\n")


def test_stop_all_kills_what_does_not_stop_in_time(
        world: Setup, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    world.define(service("web"))
    monkeypatch.setenv("STAND_IN_IGNORE_TERM", "1")
    assert main([*world.args, "start-all"]) == 0
    holder = world.holder("web")
    assert holder is not None
    capsys.readouterr()
    assert main([*world.args, "stop-all", "--timeout", "1"]) == 0
    assert f"web: killed (process {holder.pid}): it did not stop within 1 s" in \
        capsys.readouterr().out
    assert world.holder("web") is None


def test_stop_all_stops_a_service_whose_definition_broke(
        world: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    world.define(service("web"))
    assert main([*world.args, "start-all"]) == 0
    (world.config / "services" / "web.toml").write_text("name = \n")
    capsys.readouterr()
    assert main([*world.args, "stop-all"]) == 0
    assert "web: stopped" in capsys.readouterr().out


def test_bad_input_is_one_line(world: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    world.define(service("web", "src-cluster"))
    assert main([*world.args, "start-all", "--host", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no service" in err and "'nosuch'" in err \
        and "source hosts defined: src-cluster" in err
    assert main([*world.args, "state", "nosuch"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit):
        main([*world.args, "stop-all", "--timeout", "soon"])
    assert "'soon' is not a number of seconds" in capsys.readouterr().err
    assert main([*world.args, "stop-all"]) == 0
    assert capsys.readouterr().out == "web: not running\n"
