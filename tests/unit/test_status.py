"""`zfsrepl status` and `zfsrepl list`: state, lag and the JSON they print."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from zfsrepl import managers, state, status
from zfsrepl.cli import main
from zfsrepl.config import Endpoint, FilesystemPair, Service, dump_service
from zfsrepl.lock import FileLock, Holder
from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot
from zfsrepl.state import Newest, ServicePaths, ServiceState, StateStore

from .fakes import SimSnap, SimZfs
from .test_capabilities import OPENZFS

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


def test_pending_counts_from_a_bookmark_as_the_planner_does() -> None:
    # the destination pruned @1, the source destroyed @2 but kept its bookmark
    src = [snap("tank/a", 1, 11, 1), snap("tank/a", 3, 13, 3)]
    dst = [snap("backup/a", 2, 12, 51)]
    marks = [snap("tank/a", 2, 12, 2)]
    assert status.filesystem_status(PAIR, NAMING, src, dst, True, None, NOW, marks).pending == 1
    # without it nothing is shared: everything is pending
    assert status.filesystem_status(PAIR, NAMING, src, dst, True, None, NOW).pending == 2


def test_a_live_status_reads_the_source_bookmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    src = SimZfs("src@srchost", OPENZFS, ["tank/a"], {"tank"})
    dst = SimZfs("dst@desthost", OPENZFS, ["backup/a"], {"backup"})
    src.fs["tank/a"] = [SimSnap(NAMING.format(1), 11, 1), SimSnap(NAMING.format(3), 13, 3)]
    src.marks["tank/a"] = {NAMING.format(2): SimSnap(NAMING.format(2), 12, 2)}
    dst.fs["backup/a"] = [SimSnap(NAMING.format(2), 12, 51)]
    monkeypatch.setattr(status, "LocalHost", lambda label: src)
    monkeypatch.setattr(status, "SshHost", lambda endpoint, **kw: dst)
    src_states, dst_lists, problems = status.read_both_sides(svc())
    assert problems == []
    s = status.build("web", ServiceState(), svc(), None, None, None, src_states, dst_lists,
                     problems, NOW)
    (fs,) = s.filesystems
    assert fs.pending == 1 and fs.newest_snapshot == NAMING.format(2)


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


def test_the_destination_copy_reads_the_replicas_here_and_never_the_source(
        monkeypatch: pytest.MonkeyPatch) -> None:
    here = SimZfs("dst@desthost", OPENZFS, ["backup/a"], {"backup"})
    here.fs["backup/a"] = [SimSnap(NAMING.format(1), 11, 1), SimSnap(NAMING.format(2), 12, 2)]
    labels: list[str] = []

    def local(label: str) -> SimZfs:
        labels.append(label)
        return here

    def ssh(endpoint: Endpoint, **kw: Any) -> None:
        raise AssertionError(f"status on the destination connected to {endpoint}")

    monkeypatch.setattr(status, "LocalHost", local)
    monkeypatch.setattr(status, "SshHost", ssh)
    copy = dataclasses.replace(svc(), role="destination")
    lists, problems = status.read_replicas(copy)
    assert labels == ["dst@desthost"] and problems == []
    assert lists is not None
    now = lists["backup/a"][-1].creation + 10  # type: ignore[index]
    s = status.build("web", ServiceState(), copy, None, None, False, None, lists, problems,
                     now)
    assert (s.state, s.role) == ("replica", "destination")
    (fs,) = s.filesystems
    assert fs.newest_snapshot == NAMING.format(2) and fs.pending is None
    assert fs.lag_seconds == 10 and not fs.cached
    assert status.health(s).code == status.OK  # not "disabled": no `run` belongs here
    text = "\n".join(status.format_text(s, now))
    assert "web: replica" in text and "the service runs on src@srchost" in text
    assert "`zfsrepl runonce web` here replicates back" in text


def test_a_replica_whose_snapshots_stop_arriving_is_degraded() -> None:
    copy = dataclasses.replace(svc(), role="destination")
    old = [snap("backup/a", 1, 11, 1)]  # 900 s old, the interval is 30 s
    s = status.build("web", ServiceState(), copy, None, None, None, None, {"backup/a": old},
                     [], NOW)
    h = status.health(s)
    assert h.code == status.DEGRADED and "beyond 2 x interval" in h.reasons[0]
    failed = status.build("web", ServiceState(), copy, None, None, None, None, None,
                          ["destination: cannot open 'backup'"], NOW)
    assert status.health(failed).code == status.UNKNOWN


def test_a_destination_copy_in_maintenance_says_so() -> None:
    copy = dataclasses.replace(svc(), role="destination")
    st = state.enter_maintenance(ServiceState(), NOW - 5, "failback refused")
    s = status.build("web", st, copy, None, None, None, None, {}, [], NOW)
    assert s.state == "maintenance" and s.role == "destination"


def test_build_and_text_of_a_service_in_maintenance() -> None:
    st = state.enter_maintenance(ServiceState(last_error="refused", last_error_time=NOW - 5),
                                 NOW - 5, "could not replicate web after 3 attempt(s): refused")
    s = status.build("web", st, svc(), None, Holder(42, "runonce"), True, None, None,
                     ["destination: cannot connect"], NOW)
    assert s.state == "maintenance" and s.busy == "process 42 (runonce) is in a cycle"
    assert s.unreachable == ["destination"]
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
        assert main([*dirs, "status", "--json", "--cached"]) == status.CRITICAL
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


# ---------------------------------------------------------------------------- health


def in_sync(lag: float = 10.0, **changes: Any) -> status.ServiceStatus:
    """An online service every filesystem of which lags `lag` seconds (interval 30)."""
    st = ServiceState(last_success=NOW - 10,
                      newest={"backup/a": Newest(NAMING.format(4), int(NOW - lag))})
    base = status.build("web", st, svc(), Holder(7, "run"), None, True, None, None, [], NOW)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(("changes", "code", "reason"), [
    ({}, status.OK, None),
    ({"lag": 60.0}, status.OK, None),  # exactly 2 x interval is still in time
    ({"lag": 61.0}, status.DEGRADED, "tank/a: lag 61 s beyond 2 x interval (60 s)"),
    ({"last_error": "refused", "last_error_time": NOW - 1}, status.DEGRADED,
     "last attempt failed: refused"),
    ({"last_error": "old", "last_error_time": NOW - 100}, status.OK, None),  # success since
    ({"state": "offline", "enabled": True}, status.DEGRADED,
     "enabled in the service manager but not running"),
    ({"state": "offline", "enabled": None}, status.OK, None),  # runonce from cron
    ({"unreachable": ["destination"], "problems": ["destination: connection refused"]},
     status.UNKNOWN, "could not check the destination: connection refused"),
    ({"state": "maintenance", "reason": "retries ran out", "unreachable": ["source"]},
     status.CRITICAL, "in maintenance: retries ran out"),
    ({"definition_error": "web.toml: interval: missing"}, status.CRITICAL,
     "definition unusable: web.toml: interval: missing"),
])
def test_health(changes: dict[str, Any], code: int, reason: str | None) -> None:
    h = status.health(in_sync(**changes))
    assert h.code == code
    assert (h.reasons[0] if h.reasons else None) == reason


def test_nothing_replicated_yet_is_degraded() -> None:
    s = status.build("web", ServiceState(), svc(), Holder(7, "run"), None, True, None, None,
                     [], NOW)
    assert status.health(s).reasons == ("tank/a: nothing replicated yet",)


def test_worst_puts_critical_above_unknown_above_degraded() -> None:
    assert status.worst([]) == status.OK
    assert status.worst([status.OK, status.DEGRADED]) == status.DEGRADED
    assert status.worst([status.DEGRADED, status.UNKNOWN]) == status.UNKNOWN
    assert status.worst([status.UNKNOWN, status.CRITICAL, status.OK]) == status.CRITICAL


def test_max_lag_makes_a_lag_critical_and_goes_into_the_perfdata() -> None:
    s = in_sync(lag=500.0)
    h = status.health(s, max_lag=400)
    assert h.code == status.CRITICAL
    line = status.check_line(s, h, 400)
    assert line == ("ZFSREPL CRITICAL - web: tank/a: lag 8 min beyond --max-lag 400 s | "
                    "'lag tank/a'=500s;60;400;0; failed_attempts=0c")
    ok = in_sync(lag=5.0)
    assert status.check_line(ok, status.health(ok, 400), 400) == \
        "ZFSREPL OK - web online, lag 5 s | 'lag tank/a'=5s;60;400;0; failed_attempts=0c"


def test_the_text_shows_the_health() -> None:
    text = status.format_text(in_sync(lag=61.0), NOW)
    assert "  health: degraded (tank/a: lag 61 s beyond 2 x interval (60 s))" in text
    assert "  health: ok" in status.format_text(in_sync(), NOW)


def test_json_carries_a_schema_version_and_the_health() -> None:
    data = status.to_json([in_sync(), in_sync(lag=61.0)])
    assert data["schema_version"] == status.JSON_SCHEMA_VERSION == 1
    assert data["exit_code"] == status.DEGRADED
    assert [s["health"] for s in data["services"]] == ["ok", "degraded"]
    assert data["services"][1]["exit_code"] == status.DEGRADED


def test_huge_numbers_in_the_state_file_do_not_crash_the_output() -> None:
    st = ServiceState(last_success=1e300, last_error="x", last_error_time=float("inf"),
                      maintenance_since=1e300, maintenance_reason="r",
                      newest={"backup/a": Newest(NAMING.format(1), 10**30)})
    s = status.build("web", st, svc(), None, None, None, None, None, [], NOW)
    text = "\n".join(status.format_text(s, NOW))
    assert "1e+300 (not a valid time)" in text
    assert json.loads(json.dumps(status.to_json([s]), allow_nan=False))
    assert status.human_duration(float("inf")) == "an unknown time"


def write_state(tmp_path: Path, name: str, text: str) -> None:
    paths = ServicePaths(tmp_path / "state", name)
    paths.create()
    paths.state_file.write_text(text)


def test_status_cached_reads_a_hand_edited_state_file_with_huge_numbers(
        dirs: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_state(tmp_path, "web", json.dumps({"last_success": 1e308, "next_run": 1e308,
                                             "last_error_time": 10**40, "last_error": "x",
                                             "cycles_total": 10**40}))
    code = main([*dirs, "status", "web", "--cached"])
    out = capsys.readouterr().out
    assert code == status.DEGRADED and "web: offline" in out
    assert main([*dirs, "status", "web", "--cached", "--json"]) == status.DEGRADED
    json.loads(capsys.readouterr().out)
    assert main([*dirs, "metrics", "web"]) == 0
    assert "zfsrepl_cycles_total" in capsys.readouterr().out
    # 1e400 is infinity to JSON readers: no time, no integer can be made of it
    write_state(tmp_path, "web", '{"newest": {"backup/web": {"snapshot": "s", '
                                 '"creation": 1e400}}, "last_success": 1e400}')
    assert main([*dirs, "status", "web", "--cached"]) == status.DEGRADED
    assert "web: offline" in capsys.readouterr().out
    assert main([*dirs, "metrics", "web"]) == 0


def test_status_exit_codes_of_the_command(dirs: list[str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # db never replicated: degraded; web in maintenance: critical, the worst of both
    assert main([*dirs, "status", "db", "--cached"]) == status.DEGRADED
    StateStore(ServicePaths(tmp_path / "state", "web")).update(
        lambda s: state.enter_maintenance(s, NOW, "broken pipe"))
    assert main([*dirs, "status", "web", "--cached"]) == status.CRITICAL
    assert main([*dirs, "status", "--cached"]) == status.CRITICAL
    (Path(dirs[1]) / "services" / "db.toml").write_text('name = "db"\n')
    capsys.readouterr()
    assert main([*dirs, "status", "db", "--cached"]) == status.CRITICAL
    assert "db.toml: source: missing" in capsys.readouterr().err
    assert main([*dirs, "status", "--cached"]) == status.CRITICAL  # every service
    assert "health: critical (definition unusable: " in capsys.readouterr().out


def test_status_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    out = capsys.readouterr().out
    for line in ("0  online and in sync", "1  degraded", "2  maintenance", "3  unknown"):
        assert line in out


def test_check_is_one_nagios_line(dirs: list[str], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    write_state(tmp_path, "web", json.dumps({
        "last_success": NOW, "newest": {"backup/web": {"snapshot": "s", "creation": 1000}}}))
    code = main([*dirs, "check", "web", "--cached", "--max-lag", "3600"])
    out = capsys.readouterr().out
    assert code == status.CRITICAL and out.count("\n") == 1
    assert out.startswith("ZFSREPL CRITICAL - web: tank/web: lag ")
    assert "| 'lag tank/web'=" in out and ";120;3600;0;" in out
    assert main([*dirs, "check", "nosuch", "--cached"]) == status.CRITICAL
    assert capsys.readouterr().out.startswith("ZFSREPL CRITICAL - nosuch: definition unusable")
    assert main([*dirs, "check", "bad/name"]) == status.UNKNOWN
    assert capsys.readouterr().out.startswith("ZFSREPL UNKNOWN - bad/name: invalid service")


def test_check_refuses_a_max_lag_that_is_not_seconds(
        dirs: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*dirs, "check", "web", "--max-lag", "1e400"])
    assert exc.value.code == status.UNKNOWN  # a monitoring plugin's usage error
    assert capsys.readouterr().out == (
        "ZFSREPL UNKNOWN - zfsrepl check: argument --max-lag: '1e400' is not a number of "
        "seconds above 0\n")


def test_the_check_line_of_the_readme() -> None:
    web = Service("web", Endpoint("srchost", "src"), Endpoint("desthost", "dst"),
                  (FilesystemPair("tank/web", "backup/web"),), interval=60)
    st = ServiceState(last_success=NOW - 10,
                      newest={"backup/web": Newest(NAMING.format(4), int(NOW - 185))})
    s = status.build("web", st, web, Holder(7, "run"), None, True, None, None, [], NOW)
    assert status.check_line(s, status.health(s, 3600), 3600) == (
        "ZFSREPL WARNING - web: tank/web: lag 3 min beyond 2 x interval (120 s) | "
        "'lag tank/web'=185s;120;3600;0; failed_attempts=0c")
