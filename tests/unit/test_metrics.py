"""The Prometheus text output, parsed with the reference client's parser."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zfsrepl import metrics
from zfsrepl.errors import ZfsreplError
from zfsrepl.metrics import MetricsServer, ServiceSample, render
from zfsrepl.state import Newest, ServiceState

NOW = 1_800_000_000.0


def sample(name: str = "web", state: str = "online") -> ServiceSample:
    st = ServiceState(last_success=NOW - 30, last_cycle_seconds=2.5, next_run=NOW + 30,
                      cycles_total=7, cycle_failures_total=1, attempt_failures_total=3,
                      sent_bytes_total=123456,
                      newest={"backup/a": Newest("zfsrepl-src-dst-b-7", int(NOW) - 45)})
    return ServiceSample(name, state, st, [("tank/a", "backup/a"), ("tank/b", "backup/b")])


def parse(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = [(s.name, s.labels, s.value) for s in fam.samples]
    return out


def test_render_parses_and_holds_every_metric() -> None:
    fams = parse(render([sample(), sample("db", "maintenance")], NOW))
    state = {(s[1]["service"], s[1]["state"]): s[2] for s in fams["zfsrepl_service_state"]}
    assert state[("web", "online")] == 1 and state[("web", "maintenance")] == 0
    assert state[("db", "maintenance")] == 1 and sum(state.values()) == 2
    assert ("zfsrepl_last_success_timestamp_seconds", {"service": "web"}, NOW - 30) in \
        fams["zfsrepl_last_success_timestamp_seconds"]
    assert ("zfsrepl_cycles_total", {"service": "web"}, 7) in fams["zfsrepl_cycles"]
    assert ("zfsrepl_cycle_failures_total", {"service": "web"}, 1) in \
        fams["zfsrepl_cycle_failures"]
    assert ("zfsrepl_sent_bytes_total", {"service": "web"}, 123456) in fams["zfsrepl_sent_bytes"]
    assert ("zfsrepl_last_cycle_duration_seconds", {"service": "web"}, 2.5) in \
        fams["zfsrepl_last_cycle_duration_seconds"]
    lag = [s for s in fams["zfsrepl_lag_seconds"] if s[1]["service"] == "web"]
    # Only the filesystem that has a replica has a lag.
    assert lag == [("zfsrepl_lag_seconds",
                    {"service": "web", "filesystem": "tank/a", "destination": "backup/a"}, 45)]
    assert fams["zfsrepl_next_run_timestamp_seconds"]


def test_label_values_are_escaped() -> None:
    odd = ServiceSample('we"b\\x', "offline", ServiceState(
        newest={'b/"q"\n': Newest("s", int(NOW))}), [("t/a\\b", 'b/"q"\n')])
    fams = parse(render([odd], NOW))
    (lag,) = fams["zfsrepl_lag_seconds"]
    assert lag[1] == {"service": 'we"b\\x', "filesystem": "t/a\\b", "destination": 'b/"q"\n'}


def test_nothing_to_say_is_an_empty_text() -> None:
    assert render([], NOW) == ""


def test_textfile_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "web.prom"
    metrics.write_textfile(path, render([sample()], NOW))
    metrics.write_textfile(path, render([sample(state="maintenance")], NOW))
    assert [p.name for p in path.parent.iterdir()] == ["web.prom"]
    assert 'state="maintenance"} 1' in path.read_text()


def test_http_server_serves_the_metrics() -> None:
    server = MetricsServer("127.0.0.1", 0, lambda: render([sample()], NOW))
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            assert resp.headers["Content-Type"] == metrics.CONTENT_TYPE
            assert "zfsrepl_cycles" in parse(resp.read().decode())
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/other", timeout=10)
        assert err.value.code == 404
    finally:
        server.stop()


def test_a_port_in_use_is_one_clear_error() -> None:
    first = MetricsServer("127.0.0.1", 0, lambda: "")
    try:
        with pytest.raises(ZfsreplError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            MetricsServer("127.0.0.1", first.port, lambda: "")
    finally:
        first.stop()


def test_numbers_beyond_a_float_from_a_hand_edited_state_file_render() -> None:
    st = ServiceState(cycles_total=10**400, last_success=float("inf"))
    text = render([ServiceSample("web", "online", st, [])], 0.0)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["zfsrepl_cycles"].samples[0].value == float("inf")
    assert 'zfsrepl_last_success_timestamp_seconds{service="web"} +Inf' in text


def test_metrics_listen_serves_a_service_in_maintenance(tmp_path: Path) -> None:
    """A service in maintenance has no process of its own to serve its metrics_port:
    `zfsrepl metrics --listen` serves it from the state files all the same."""
    import json
    import os
    import re
    import signal
    import subprocess
    import sys

    from zfsrepl.config import Endpoint, FilesystemPair, Service, dump_service

    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "web.toml").write_text(dump_service(Service(
        "web", Endpoint("srchost", "src"), Endpoint("desthost", "dst"),
        (FilesystemPair("tank/web", "backup/web"),))))
    state_file = tmp_path / "state" / "services" / "web" / "state.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(json.dumps({"maintenance_since": 1.0, "maintenance_reason": "x"}))
    env = {**os.environ, "PYTHONPATH": str(Path(metrics.__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zfsrepl", "--config-dir", str(tmp_path), "--state-dir",
         str(tmp_path / "state"), "--log-dir", str(tmp_path / "log"), "metrics", "--listen",
         "127.0.0.1:0"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"serving metrics on (http://127\.0\.0\.1:\d+/metrics)", line)
        assert found, line
        with urllib.request.urlopen(found.group(1), timeout=30) as response:
            text = response.read().decode()
        assert 'zfsrepl_service_state{service="web",state="maintenance"} 1' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_the_destination_copy_is_a_replica_in_the_metrics(tmp_path: Path) -> None:
    """On the destination host the definition's copy is not a service that should be
    running: its state is replica, never offline (which an alert would take for down)."""
    from zfsrepl.cli.common import Context
    from zfsrepl.cli.status import metrics_samples
    from zfsrepl.config import Endpoint, FilesystemPair, Service, dump_service

    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "web.toml").write_text(dump_service(Service(
        "web", Endpoint("srchost", "src"), Endpoint("desthost", "dst"),
        (FilesystemPair("tank/web", "backup/web"),), role="destination")))
    ctx = Context(tmp_path, tmp_path / "state", tmp_path / "log")
    (sample,) = metrics_samples(ctx, None)
    assert sample.state == "replica"
    text = render([sample], 0.0)
    assert 'zfsrepl_service_state{service="web",state="replica"} 1' in text
    assert 'zfsrepl_service_state{service="web",state="offline"} 0' in text
