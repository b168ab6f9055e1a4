"""Metrics in the Prometheus text format (version 0.0.4).

`render` is pure. The text goes to a file for the node exporter's textfile
collector (written atomically, so the collector never reads half a file) and,
when the definition asks for it, to an HTTP port.

The lag of a filesystem is the age of the newest snapshot of the service on the
destination. `zfsrepl_lag_seconds` is that age when the text was made; the
timestamp it is computed from is exported too, so `time() -
zfsrepl_replicated_snapshot_timestamp_seconds` gives the live lag from a file
written at the last cycle. With `skip_unchanged`, a filesystem that a cycle found
unchanged since that snapshot is as current as that cycle: both count from then.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from zfsrepl.errors import ZfsreplError
from zfsrepl.fileio import write_atomically
from zfsrepl.state import ServiceState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# replica: the definition's copy on the destination host, where no `run` belongs
STATES = ("online", "offline", "disabled", "maintenance", "replica")


@dataclass(frozen=True)
class ServiceSample:
    """What is known of one service when the metrics are made."""

    name: str
    state: str  # one of STATES
    st: ServiceState
    filesystems: Sequence[tuple[str, str]]  # (source, destination)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(v: float) -> str:
    # An integer beyond any float (a hand-edited state file) must not stop the metrics.
    if isinstance(v, int) and abs(v) >= 1e15:
        v = math.inf if v > 1e308 else -math.inf if v < -1e308 else float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[str] = []

    def add(self, labels: dict[str, str], value: float | None) -> None:
        if value is None:
            return
        text = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
        self.samples.append(f"{self.name}{{{text}}} {_value(value)}")

    def lines(self) -> list[str]:
        if not self.samples:
            return []
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}",
                *self.samples]


def render(services: Sequence[ServiceSample], now: float) -> str:
    fam = {f.name: f for f in (
        _Family("zfsrepl_service_state", "gauge",
                "1 for the state the service is in (online, offline, disabled, maintenance; "
                "replica for the definition's copy on the destination host)."),
        _Family("zfsrepl_last_success_timestamp_seconds", "gauge",
                "When the last successful cycle ended."),
        _Family("zfsrepl_last_cycle_duration_seconds", "gauge",
                "How long the last cycle took, retries included."),
        _Family("zfsrepl_next_run_timestamp_seconds", "gauge",
                "When the running service starts its next cycle."),
        _Family("zfsrepl_cycles_total", "counter", "Cycles run, successful or not."),
        _Family("zfsrepl_cycle_failures_total", "counter",
                "Cycles that failed after all their retries."),
        _Family("zfsrepl_attempt_failures_total", "counter",
                "Attempts that failed, retried ones included."),
        _Family("zfsrepl_sent_bytes_total", "counter", "Stream bytes sent to the destination."),
        _Family("zfsrepl_replicated_snapshot_timestamp_seconds", "gauge",
                "Creation time of the newest snapshot of the service on the destination "
                "(with skip_unchanged, the last cycle that found the source unchanged "
                "since, if later)."),
        _Family("zfsrepl_lag_seconds", "gauge",
                "Age of the newest snapshot of the service on the destination (with "
                "skip_unchanged, of the last cycle that found the source unchanged since)."),
    )}
    for s in services:
        svc = {"service": s.name}
        for state in STATES:
            fam["zfsrepl_service_state"].add({**svc, "state": state},
                                             1 if s.state == state else 0)
        st = s.st
        fam["zfsrepl_last_success_timestamp_seconds"].add(svc, st.last_success)
        fam["zfsrepl_last_cycle_duration_seconds"].add(svc, st.last_cycle_seconds)
        fam["zfsrepl_next_run_timestamp_seconds"].add(svc, st.next_run)
        fam["zfsrepl_cycles_total"].add(svc, st.cycles_total)
        fam["zfsrepl_cycle_failures_total"].add(svc, st.cycle_failures_total)
        fam["zfsrepl_attempt_failures_total"].add(svc, st.attempt_failures_total)
        fam["zfsrepl_sent_bytes_total"].add(svc, st.sent_bytes_total)
        for source, destination in s.filesystems:
            newest = st.newest.get(destination)
            if newest is None:
                continue
            labels = {**svc, "filesystem": source, "destination": destination}
            fam["zfsrepl_replicated_snapshot_timestamp_seconds"].add(labels, newest.current_at)
            fam["zfsrepl_lag_seconds"].add(labels, max(0.0, now - newest.current_at))
    lines = [line for f in fam.values() for line in f.lines()]
    return "\n".join(lines) + "\n" if lines else ""


def write_textfile(path: Path, text: str) -> None:
    """Write the metrics for the textfile collector; it reads only `*.prom` files, so the
    temporary file (`.NAME.prom.XXXX.tmp`) is never read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text)


class MetricsServer:
    """Serves `render_text()` at /metrics on a port, from a background thread."""

    def __init__(self, address: str, port: int, render_text: Callable[[], str]) -> None:
        # here, not at the top: only a service with metrics_port pays for http.server
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "try /metrics")
                    return
                body = outer.render_text().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would drown the service log

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

        self.render_text = render_text
        try:
            self._server = Server((address.strip("[]"), port), Handler)
        except OSError as exc:
            raise ZfsreplError(f"metrics_port: cannot listen on {address}:{port}: "
                               f"{exc.strerror}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="zfsrepl-metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
