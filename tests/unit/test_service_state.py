"""The state file: pure transitions, tolerant reading, atomic writing."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from zfsrepl import state
from zfsrepl.state import Newest, ServicePaths, ServiceState, StateStore


def store(tmp_path: Path) -> StateStore:
    return StateStore(ServicePaths(tmp_path / "state", "svc"))


def test_transitions_count_and_remember() -> None:
    s = state.cycle_started(ServiceState(next_run=5.0), 100.0)
    assert s.last_attempt == 100.0 and s.next_run is None
    s = state.attempt_failed(s, 101.0, "timeout")
    s = state.cycle_succeeded(s, 102.0, 2.0, {"b/x": Newest("snap-1", 99)}, 10)
    assert (s.cycles_total, s.attempt_failures_total, s.cycle_failures_total) == (1, 1, 0)
    assert s.last_success == 102.0 and s.sent_bytes_total == 10
    assert s.last_error == "timeout"  # the last error stays visible after a success
    s = state.cycle_failed(s, 103.0, 1.0, "refused", 5)
    assert (s.cycles_total, s.cycle_failures_total, s.sent_bytes_total) == (2, 1, 15)
    s = state.cycle_succeeded(s, 104.0, 1.0, {"b/y": Newest("snap-2", 103)}, 0)
    assert set(s.newest) == {"b/x", "b/y"}  # a filesystem that was not listed keeps its cache
    s = state.enter_maintenance(s, 105.0, "refused")
    assert s.in_maintenance and s.maintenance_reason == "refused"
    s = state.clear_maintenance(s)
    assert not s.in_maintenance and s.maintenance_reason is None
    assert s.cycles_total == 3  # clearing keeps the counters


newest = st.dictionaries(st.text(min_size=1), st.builds(Newest, st.text(), st.integers(0, 2**40)))
opt_time = st.one_of(st.none(), st.floats(0, 2e9))
# In maintenance (since, reason) or not (None, None): the loop never writes one alone.
maintenance = st.one_of(st.just((None, None)), st.tuples(st.floats(0, 2e9), st.text(min_size=1)))


@st.composite
def states(draw: st.DrawFn) -> ServiceState:
    since, reason = draw(maintenance)
    return ServiceState(
        maintenance_since=since, maintenance_reason=reason, last_success=draw(opt_time),
        last_attempt=draw(opt_time), last_error=draw(st.one_of(st.none(), st.text())),
        last_error_time=draw(opt_time), last_cycle_seconds=draw(opt_time),
        next_run=draw(opt_time), cycles_total=draw(st.integers(0, 2**40)),
        cycle_failures_total=draw(st.integers(0, 2**40)),
        attempt_failures_total=draw(st.integers(0, 2**40)),
        sent_bytes_total=draw(st.integers(0, 2**60)), newest=draw(newest))


@given(states())
def test_json_round_trip(s: ServiceState) -> None:
    assert state.from_json(json.loads(json.dumps(state.to_json(s)))) == s


def test_wrong_types_fall_back_to_defaults() -> None:
    s = state.from_json({"cycles_total": "many", "last_success": True, "last_error": 3,
                         "newest": {"a/b": {"snapshot": 1}}, "maintenance_since": 7})
    assert s == ServiceState(maintenance_since=7.0, maintenance_reason="unknown")
    assert state.from_json([1, 2]) == ServiceState()


def test_update_writes_atomically_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.update(lambda x: state.enter_maintenance(x, 1.0, "why"))
    folder = s.paths.folder
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "state.lock"]
    assert json.loads(s.paths.state_file.read_text())["maintenance_reason"] == "why"
    assert s.load().in_maintenance


def test_a_deleted_or_damaged_file_is_an_empty_state(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.load() == ServiceState()
    s.update(lambda x: state.cycle_started(x, 1.0))
    s.paths.state_file.write_text("{not json")
    assert s.load() == ServiceState()
    s.paths.state_file.unlink()
    assert s.load() == ServiceState()


def test_paths_of_a_service(tmp_path: Path) -> None:
    p = ServicePaths(tmp_path, "web")
    assert p.state_file == tmp_path / "services" / "web" / "state.json"
    assert p.metrics_file == tmp_path / "metrics" / "web.prom"
    assert p.cycle_lock.parent == p.daemon_lock.parent == p.folder


def test_numbers_beyond_a_float_read_as_missing() -> None:
    s = state.from_json({"last_success": float("inf"), "cycles_total": 3,
                         "newest": {"b/a": {"snapshot": "x", "creation": float("inf")},
                                    "b/c": {"snapshot": "y", "creation": 10 ** 400}}})
    assert s.last_success is None and s.cycles_total == 3 and s.newest == {}
