"""What `zfsrepl status` and `zfsrepl list` show of a service.

The state comes from three places: the maintenance flag in the state file, the
lock that a running `zfsrepl run` holds, and the service manager (enabled or
not). The lag comes from ZFS itself, one listing per side for all of the
service's filesystems, and the pending snapshots from comparing the two (chain.py, as
the planner does); where a side cannot be asked, the newest snapshot the
last cycle saw (cached in the state file) stands in, marked as cached.

On the destination host the definition's copy (`role = "destination"`) shows the
service as a *replica*: the lag of the replicas is read from ZFS on this host alone,
so that the standby can watch snapshots arrive without any access to the source.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zfsrepl import cluster_state, config, lock, managers
from zfsrepl.chain import Receiver, Sender, compare, newest_own
from zfsrepl.config import FilesystemPair, Service
from zfsrepl.errors import ZfsreplError
from zfsrepl.host import LocalHost, SshHost
from zfsrepl.log import logger
from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot
from zfsrepl.state import Newest, ServicePaths, ServiceState, StateStore
from zfsrepl.zfs import FsState, Zfs

# A status must come back quickly even when the destination does not answer.
STATUS_CONNECT_TIMEOUT = 5


@dataclass(frozen=True)
class FilesystemStatus:
    source: str
    destination: str
    newest_snapshot: str | None = None  # newest snapshot of the service on the destination
    newest_snapshot_time: int | None = None
    lag_seconds: float | None = None
    newest_source_snapshot: str | None = None
    pending: int | None = None  # source snapshots of the service the destination lacks
    cached: bool = False  # from the last cycle, not from ZFS now


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # online, offline, disabled, maintenance, or replica (the destination's copy)
    enabled: bool | None = None  # started by the service manager; None: cannot be asked
    reason: str | None = None  # why it is in maintenance
    maintenance_since: float | None = None
    pid: int | None = None  # of the running `zfsrepl run`
    busy: str | None = None  # who is in a cycle right now
    source: str | None = None
    destination: str | None = None
    interval: int | None = None
    last_success: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    next_run: float | None = None
    last_cycle_seconds: float | None = None
    cycles_total: int = 0
    cycle_failures_total: int = 0
    attempt_failures_total: int = 0
    sent_bytes_total: int = 0
    filesystems: list[FilesystemStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what could not be found out
    definition_error: str | None = None  # why the definition cannot be used
    unreachable: list[str] = field(default_factory=list)  # sides ZFS could not be asked on
    role: str = "source"  # the definition's: "destination" for the copy on the destination


def derive_state(maintenance: bool, running: bool, enabled: bool | None) -> str:
    """maintenance wins (it survives restarts); a running loop is online; a service the
    service manager does not start is disabled; anything else is offline."""
    if maintenance:
        return "maintenance"
    if running:
        return "online"
    if enabled is False:
        return "disabled"
    return "offline"


def service_state(svc: Service | None, maintenance: bool, running: bool,
                  enabled: bool | None) -> str:
    """derive_state, except that the definition's copy on the destination host is a
    replica there (no `run` belongs there: the copy is for failback) unless in
    maintenance."""
    state = derive_state(maintenance, running, enabled)
    if svc is not None and svc.is_destination_copy and state != "maintenance":
        return "replica"
    return state


def filesystem_status(pair: FilesystemPair, naming: SnapshotNaming,
                      source: list[Snapshot] | None, destination: list[Snapshot] | None,
                      listed: bool, cached: Newest | None, now: float,
                      bookmarks: Sequence[Snapshot] = ()) -> FilesystemStatus:
    """Lag and pending snapshots of one filesystem.

    `listed`: the destination could be asked; `destination` is then None when the
    filesystem does not exist there yet. When it could not be asked, the newest
    snapshot the last cycle saw (`cached`) stands in. `bookmarks`: the source's, a
    common point where their snapshot is gone (as the planner counts)."""
    newest_src = newest_own(source or [], naming)
    newest_source = newest_src.name if newest_src else None
    if not listed:
        if cached is None:
            return FilesystemStatus(pair.source, pair.destination,
                                    newest_source_snapshot=newest_source)
        return FilesystemStatus(pair.source, pair.destination, cached.snapshot, cached.creation,
                                max(0.0, now - cached.creation), newest_source, cached=True)
    pending = None
    if source is not None:
        receiving = None if destination is None else Receiver.of(destination)
        pending = len(compare(Sender.of(source, bookmarks), receiving, naming).pending)
    top = newest_own(destination or [], naming)
    if top is None:
        return FilesystemStatus(pair.source, pair.destination, newest_source_snapshot=newest_source,
                                pending=pending)
    # skip_unchanged: the last cycle found the source unchanged since this very snapshot
    current = cached.current_at if cached is not None and cached.snapshot == top.name \
        else top.creation
    return FilesystemStatus(pair.source, pair.destination, top.name, top.creation,
                            max(0.0, now - max(current, top.creation)), newest_source, pending)


def read_both_sides(svc: Service) -> tuple[dict[str, FsState | None] | None,
                                           dict[str, list[Snapshot] | None] | None, list[str]]:
    """The source's filesystems (snapshots and bookmarks) and the destination's snapshot
    lists (None for a side that could not be asked), and why not (each reason starts
    with the side's name)."""
    problems: list[str] = []
    src_lists = dst_lists = None
    try:
        src = Zfs(LocalHost(f"{svc.source.user}@{svc.source.host}"), svc.source.zfs_argv)
        src_lists = src.states([p.source for p in svc.filesystems])
    except ZfsreplError as exc:
        problems.append(f"source: {exc}")
    try:
        with SshHost(svc.destination, connect_timeout=STATUS_CONNECT_TIMEOUT) as host:
            dst_lists = Zfs(host, svc.destination.zfs_argv).snapshots(
                [p.destination for p in svc.filesystems])
    except ZfsreplError as exc:
        problems.append(f"destination: {exc}")
    return src_lists, dst_lists, problems


def read_replicas(svc: Service) -> tuple[dict[str, list[Snapshot] | None] | None, list[str]]:
    """On the destination host: the replicas' snapshot lists, read here (None if ZFS
    could not be asked), and why not."""
    try:
        dst = Zfs(LocalHost(f"{svc.destination.user}@{svc.destination.host}"),
                  svc.destination.zfs_argv)
        return dst.snapshots([p.destination for p in svc.filesystems]), []
    except ZfsreplError as exc:
        return None, [f"destination: {exc}"]


def build(name: str, st: ServiceState, svc: Service | None, daemon: lock.Holder | None,
          cycle: lock.Holder | None, enabled: bool | None,
          src_lists: Mapping[str, FsState | None] | None,
          dst_lists: Mapping[str, list[Snapshot] | None] | None,
          problems: Sequence[str], now: float,
          definition_error: str | None = None) -> ServiceStatus:
    """Put together what was found (pure). `problems` from reading ZFS start with the
    side ("source: ...", "destination: ...")."""
    fs: list[FilesystemStatus] = []
    if svc is not None:
        for pair in svc.filesystems:
            src = src_lists.get(pair.source) if src_lists is not None else None
            dst = dst_lists.get(pair.destination) if dst_lists is not None else None
            fs.append(filesystem_status(pair, svc.naming, src.snapshots if src else None, dst,
                                        dst_lists is not None, st.newest.get(pair.destination),
                                        now, src.bookmarks if src else ()))
    busy = f"{cycle.describe()} is in a cycle" if cycle is not None else None
    replica = svc is not None and svc.is_destination_copy
    return ServiceStatus(
        name=name, state=service_state(svc, st.in_maintenance, daemon is not None, enabled),
        enabled=enabled,
        reason=st.maintenance_reason, maintenance_since=st.maintenance_since,
        pid=daemon.pid if daemon is not None else None, busy=busy,
        source=f"{svc.source.user}@{svc.source.host}" if svc else None,
        destination=f"{svc.destination.user}@{svc.destination.host}" if svc else None,
        interval=svc.interval if svc else None,
        last_success=st.last_success, last_attempt=st.last_attempt, last_error=st.last_error,
        last_error_time=st.last_error_time,
        next_run=st.next_run if daemon is not None else None,
        last_cycle_seconds=st.last_cycle_seconds, cycles_total=st.cycles_total,
        cycle_failures_total=st.cycle_failures_total,
        attempt_failures_total=st.attempt_failures_total,
        sent_bytes_total=st.sent_bytes_total, filesystems=fs,
        problems=[p for p in [definition_error, *problems] if p],
        definition_error=definition_error,
        unreachable=[side for side in ("source", "destination")
                     if any(p.startswith(f"{side}: ") for p in problems)],
        role="destination" if replica else "source")


def load_state(paths: ServicePaths) -> ServiceState:
    """The state file as the store reads it; one holding a number beyond what Python can
    turn into a time (hand-edited) reads as empty, with a warning: it is only a cache."""
    try:
        return StateStore(paths).load()
    except OverflowError as exc:
        logger.warning("%s: %s; showing the service as if it had no state file",
                       paths.state_file, exc)
        return ServiceState()


def gather(config_dir: Path, state_dir: Path, name: str, *, live: bool,
           manager: str | None) -> ServiceStatus:
    """The status of one service, asking ZFS on both sides when `live`."""
    paths = ServicePaths(state_dir, name)
    st = load_state(paths)
    problems: list[str] = []
    definition_error = None
    svc: Service | None = None
    try:
        svc = config.load_service(config_dir, name)
    except ZfsreplError as exc:
        definition_error = str(exc)
    src_lists = dst_lists = None
    if live and svc is not None:
        # a maintenance that came with the pool from another cluster node
        st = cluster_state.with_maintenance(st, cluster_state.read(svc), time.time())
        if svc.is_destination_copy:
            dst_lists, problems = read_replicas(svc)
        else:
            src_lists, dst_lists, problems = read_both_sides(svc)
    return build(name, st, svc, lock.probe(paths.daemon_lock), lock.probe(paths.cycle_lock),
                 managers.is_enabled(name, manager), src_lists, dst_lists, problems,
                 time.time(), definition_error)


# ---------------------------------------------------------------------------- health

# Exit codes of `status` and `check`, those of monitoring plugins (Nagios, Icinga).
OK, DEGRADED, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAGIOS_WORDS = {OK: "OK", DEGRADED: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
HEALTH_LABELS = {OK: "ok", DEGRADED: "degraded", CRITICAL: "critical", UNKNOWN: "unknown"}
# Which code wins when several apply (or several services are shown): a service known
# to be stopped outranks one whose hosts cannot be asked.
_RANK = {OK: 0, DEGRADED: 1, UNKNOWN: 2, CRITICAL: 3}
# Lag beyond this many intervals is degraded: one cycle late is normal, two is not.
LAG_INTERVALS = 2


@dataclass(frozen=True)
class Health:
    code: int
    reasons: tuple[str, ...] = ()  # worst first

    @property
    def word(self) -> str:
        return NAGIOS_WORDS[self.code]

    @property
    def label(self) -> str:
        return HEALTH_LABELS[self.code]


def worst(codes: Sequence[int]) -> int:
    return max(codes, key=lambda c: _RANK[c], default=OK)


def health(s: ServiceStatus, max_lag: float | None = None) -> Health:
    """How a monitoring check sees one service (pure): CRITICAL in maintenance, with a
    broken definition or a lag beyond `max_lag`; UNKNOWN when a host could not be
    asked; DEGRADED when a lag is beyond LAG_INTERVALS x interval, nothing is
    replicated yet, or the last attempt failed (the retries continue); else OK."""
    found: list[tuple[int, str]] = []
    if s.definition_error is not None:
        found.append((CRITICAL, f"definition unusable: {s.definition_error}"))
    if s.state == "maintenance":
        found.append((CRITICAL, f"in maintenance: {s.reason}"))
    if s.state == "offline" and s.enabled:
        found.append((DEGRADED, "enabled in the service manager but not running"))
    found += [(UNKNOWN, f"could not check the {p}") for p in s.problems
              if p.split(":", 1)[0] in s.unreachable]
    if s.definition_error is None:
        limit = LAG_INTERVALS * s.interval if s.interval else None
        for f in s.filesystems:
            if f.lag_seconds is None:
                found.append((DEGRADED, f"{f.source}: nothing replicated yet"))
            elif max_lag is not None and f.lag_seconds > max_lag:
                found.append((CRITICAL, f"{f.source}: lag {human_duration(f.lag_seconds)} "
                                        f"beyond --max-lag {max_lag:g} s"))
            elif limit is not None and f.lag_seconds > limit:
                found.append((DEGRADED, f"{f.source}: lag {human_duration(f.lag_seconds)} "
                                        f"beyond {LAG_INTERVALS} x interval ({limit} s)"))
    failed_last = s.last_error_time is not None and (
        s.last_success is None or s.last_error_time > s.last_success)
    if failed_last and s.state != "maintenance":
        found.append((DEGRADED, f"last attempt failed: {s.last_error}"))
    if not found:
        return Health(OK)
    found.sort(key=lambda item: -_RANK[item[0]])
    return Health(found[0][0], tuple(reason for _, reason in found))


def _perf_label(text: str) -> str:
    # Nagios perfdata: quoted label, no quote or '=' inside.
    return "'" + text.replace("'", "").replace("=", "_") + "'"


def check_line(s: ServiceStatus, h: Health, max_lag: float | None) -> str:
    """One line in the Nagios plugin format: `ZFSREPL STATE - text | perfdata`."""
    if h.reasons:
        text = "; ".join(h.reasons)
    else:
        lags = [f.lag_seconds for f in s.filesystems if f.lag_seconds is not None]
        text = f"{s.name} {s.state}, lag {human_duration(max(lags, default=0.0))}"
    if h.code != OK:
        text = f"{s.name}: {text}"
    warn = LAG_INTERVALS * s.interval if s.interval else None
    perf = []
    for f in s.filesystems:
        if f.lag_seconds is None or not math.isfinite(f.lag_seconds):
            continue
        thresholds = ";".join("" if t is None else f"{t:g}" for t in (warn, max_lag))
        perf.append(f"{_perf_label('lag ' + f.source)}={f.lag_seconds:.0f}s;{thresholds};0;")
    perf.append(f"failed_attempts={s.attempt_failures_total}c")
    return f"ZFSREPL {h.word} - {text.replace('|', '/')} | {' '.join(perf)}"


# ---------------------------------------------------------------------------- output

# Bumped when a field changes meaning or goes away; new fields keep it.
JSON_SCHEMA_VERSION = 1


def _json_safe(value: Any) -> Any:
    """JSON has no infinity or NaN (a hand-edited state file may hold them): null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def to_json(statuses: Sequence[ServiceStatus]) -> dict[str, Any]:
    """Times are seconds since the epoch; durations and lags are seconds. Each service
    carries its health (`exit_code`, `health`, `health_reasons`); `exit_code` at the top
    is the worst of them, the exit code of `zfsrepl status`."""
    services = []
    for s in statuses:
        h = health(s)
        services.append({**asdict(s), "exit_code": h.code, "health": h.label,
                         "health_reasons": list(h.reasons)})
    return _json_safe({"schema_version": JSON_SCHEMA_VERSION,
                       "exit_code": worst([s["exit_code"] for s in services]),
                       "services": services})


def human_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "an unknown time"
    s = round(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):  # a hand-edited state file
        return f"{ts!r} (not a valid time)"
    delta = now - ts
    rel = f"{human_duration(delta)} ago" if delta >= 0 else f"in {human_duration(-delta)}"
    return f"{stamp} ({rel})"


def format_text(s: ServiceStatus, now: float) -> list[str]:
    head = f"{s.name}: {s.state}"
    if s.state == "maintenance":
        head += f" since {_when(s.maintenance_since, now)}"
    elif s.pid is not None:
        head += f" (process {s.pid})"
    lines = [head]
    h = health(s)
    lines.append(f"  health: {h.label}" + (f" ({'; '.join(h.reasons)})" if h.reasons else ""))
    if s.state == "maintenance":
        lines += [f"  reason: {s.reason}",
                  f"  fix the cause, then: zfsrepl clear {s.name}"]
    if s.source and s.destination:
        lines.append(f"  {s.source} -> {s.destination}, every {s.interval} s")
    if s.role == "destination":
        lines.append(f"  this host holds the replicas (lag read here); the service runs on "
                     f"{s.source}; `zfsrepl runonce {s.name}` here replicates back")
    lines.append(f"  last success: {_when(s.last_success, now)}")
    if s.next_run is not None:
        lines.append(f"  next run:     {_when(s.next_run, now)}")
    if s.busy:
        lines.append(f"  now:          {s.busy}")
    if s.last_error:
        lines.append(f"  last error:   {_when(s.last_error_time, now)}: {s.last_error}")
    lines.append(f"  cycles: {s.cycles_total} ({s.cycle_failures_total} failed, "
                 f"{s.attempt_failures_total} failed attempts), "
                 f"{s.sent_bytes_total} bytes sent")
    for f in s.filesystems:
        if f.lag_seconds is None:
            what = "nothing replicated yet"
        else:
            what = f"lag {human_duration(f.lag_seconds)} (@{f.newest_snapshot})"
            if f.cached:
                what += " as of the last cycle"
        if f.pending:
            what += f", {f.pending} snapshot(s) not yet on the destination"
        lines.append(f"  {f.source} -> {f.destination}: {what}")
    lines += [f"  could not check: {p}" for p in s.problems]
    return lines


def list_line(s: ServiceStatus) -> str:
    where = f"{s.source} -> {s.destination}" if s.source else "(definition unreadable)"
    return f"{s.name}\t{s.state}\t{where}"
