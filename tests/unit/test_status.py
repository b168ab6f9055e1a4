"""`zfsrepl status` and `zfsrepl list`: state, lag and the JSON they print."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from zfsrepl import managers, state, status
from zfsrepl.cli import main
from zfsrepl.config import Endpoint, FilesystemPair, Service, dump_service
from zfsrepl.lock import FileLock, Holder
from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot
from zfsrepl.state import Newest, ServicePaths, ServiceState, StateStore

NAMING = SnapshotNaming("src", "dst", "desthost")
PAIR = FilesystemPair("tank/a", "backup/a")
NOW = 10_000.0


def snap(fs: str, seq: int, guid: int, txg: int) -> Snapshot:
    return Snapshot(fs, NAMING.format(seq), guid, txg, creation=int(NOW) - 1000 + seq * 100)


@pytest.mark.parametrize("maintenance,running,enabled,expected", [
    (True, True, True, "maintenance"), (True, False, False, "maintenance"),
    (False, True, False, "online"), (False, False, False, "disabled"),
    (False, False, True, "offline"), (False, False, None, "offline")])
def test_derive_state(maintenance: bool, running: bool, enabled: bool | None,
                      expected: str) -> None:
    assert status.derive_state(maintenance, running, enabled) == expected


def test_lag_is_the_age_of_the_newest_own_snapshot_on_the_destination() -> None:
    src = [snap("tank/a", 1, 11, 1), snap("tank/a", 2, 12, 2), snap("tank/a", 3, 13, 3)]
    dst = [snap("backup/a", 1, 11, 50), snap("backup/a", 2, 12, 51),
           Snapshot("backup/a", "by-hand", 99, 52, creation=int(NOW))]
    fs = status.filesystem_status(PAIR, NAMING, src, dst, True, None, NOW)
    assert fs.newest_snapshot == NAMING.format(2)
    assert fs.lag_seconds == 800.0  # creation NOW - 1000 + 200
    assert fs.newest_source_snapshot == NAMING.format(3)
    assert fs.pending == 1 and not fs.cached


def test_unreachable_destination_falls_back_to_the_cached_newest() -> None:
    cached = Newest(NAMING.format(5), int(NOW) - 60)
    fs = status.filesystem_status(PAIR, NAMING, None, None, False, cached, NOW)
    assert (fs.newest_snapshot, fs.lag_seconds, fs.cached) == (NAMING.format(5), 60.0, True)
    empty = status.filesystem_status(PAIR, NAMING, None, None, False, None, NOW)
    assert empty.lag_seconds is None


def test_missing_destination_is_not_replicated_yet_whatever_the_cache_says() -> None:
    src = [snap("tank/a", 1, 11, 1)]
    fs = status.filesystem_status(PAIR, NAMING, src, None, True, Newest("old", 1), NOW)
    assert fs.lag_seconds is None and fs.pending == 1 and not fs.cached


def svc() -> Service:
    return Service("web", Endpoint("srchost", "src"), Endpoint("desthost", "dst"), (PAIR,),
                   interval=30)


def test_build_and_text_of_a_service_in_maintenance() -> None:
    st = state.enter_maintenance(ServiceState(last_error="refused", last_error_time=NOW - 5),
                                 NOW - 5, "could not replicate web after 3 attempt(s): refused")
    s = status.build("web", st, svc(), None, Holder(42, "runonce"), True, None, None,
                     ["destination: cannot connect"], NOW)
    assert s.state == "maintenance" and s.busy == "process 42 (runonce) is in a cycle"
    text = "\n".join(status.format_text(s, NOW))
    assert "web: maintenance since" in text
    assert "reason: could not replicate web after 3 attempt(s): refused" in text
    assert "zfsrepl clear web" in text
    assert "could not check: destination: cannot connect" in text


def test_json_holds_the_fields() -> None:
    st = ServiceState(last_success=NOW - 10, next_run=NOW + 20, cycles_total=4,
                      newest={"backup/a": Newest(NAMING.format(4), int(NOW) - 10)})
    s = status.build("web", st, svc(), Holder(7, "run"), None, True, None, None, [], NOW)
    data = json.loads(json.dumps(status.to_json([s])))
    (one,) = data["services"]
    assert one["state"] == "online" and one["pid"] == 7
    for key in ("reason", "last_success", "last_error", "next_run", "interval", "filesystems"):
        assert key in one
    (fs,) = one["filesystems"]
    assert fs["lag_seconds"] == 10.0 and fs["cached"] is True
    assert fs["source"] == "tank/a" and fs["destination"] == "backup/a"


def test_human_duration() -> None:
    assert [status.human_duration(x) for x in (5, 119, 600, 7300, 200_000)] == \
        ["5 s", "119 s", "10 min", "2 h 1 min", "2 d 7 h"]


# ---------------------------------------------------------------------------- commands


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(managers, "detect", lambda: None)
    confdir = tmp_path / "config"
    (confdir / "services").mkdir(parents=True)
    for name in ("web", "db"):
        (confdir / "services" / f"{name}.toml").write_text(
            dump_service(Service(name, Endpoint("srchost", "src"), Endpoint("desthost", "dst"),
                                 (FilesystemPair(f"tank/{name}", f"backup/{name}"),))))
    return ["--config-dir", str(confdir), "--state-dir", str(tmp_path / "state"),
            "--log-dir", str(tmp_path / "log")]


def test_status_json_cached_for_every_service(dirs: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    paths = ServicePaths(tmp_path / "state", "web")
    StateStore(paths).update(lambda s: state.enter_maintenance(s, NOW, "broken pipe"))
    paths.create()
    with FileLock(paths.daemon_lock, "run") as lk:  # as if `run` were serving "db"... and web
        assert lk.try_acquire()
        assert main([*dirs, "status", "--json", "--cached"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {s["name"]: s for s in data["services"]}
    assert by_name["web"]["state"] == "maintenance"
    assert by_name["web"]["reason"] == "broken pipe"
    assert by_name["web"]["pid"] == os.getpid()
    assert by_name["db"]["state"] == "offline" and by_name["db"]["pid"] is None


def test_status_of_an_unknown_service_is_one_line(dirs: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*dirs, "status", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no service 'nosuch'" in err and "db, web" in err


def test_list_and_clear(dirs: list[str], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    StateStore(ServicePaths(tmp_path / "state", "web")).update(
        lambda s: state.enter_maintenance(s, NOW, "broken pipe"))
    assert main([*dirs, "list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "db\toffline\tsrc@srchost -> dst@desthost", "web\tmaintenance\tsrc@srchost -> dst@desthost"]

    assert main([*dirs, "clear", "web"]) == 0
    out = capsys.readouterr().out
    assert "start `zfsrepl run web` again" in out
    assert not StateStore(ServicePaths(tmp_path / "state", "web")).load().in_maintenance
    assert "maintenance of web cleared (it was: broken pipe)" in \
        (tmp_path / "log" / "web.log").read_text()

    assert main([*dirs, "clear", "web"]) == 0
    assert capsys.readouterr().out == "service web is not in maintenance\n"
    assert main([*dirs, "list", "--json"]) == 0
    assert {s["state"] for s in json.loads(capsys.readouterr().out)["services"]} == {"offline"}
