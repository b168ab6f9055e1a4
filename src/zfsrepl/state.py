"""What a service remembers between cycles that ZFS cannot hold.

ZFS is the database: this file only caches the maintenance flag and its reason,
the last success and error, counters for metrics and the newest snapshot seen on
each destination. It is written atomically (temporary file, then rename) and
may be deleted at any time: the next cycle still finds its chain in ZFS.

The transitions are pure functions over `ServiceState`; `StateStore` is the only
place that reads or writes the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from zfsrepl.errors import UsageError
from zfsrepl.fileio import UnsafePath, check_folder, open_file, read_file, write_atomically
from zfsrepl.log import logger

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ServicePaths:
    """Where one service keeps its local state, locks and metrics file."""

    state_dir: Path
    name: str

    @property
    def folder(self) -> Path:
        return self.state_dir / "services" / self.name

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    @property
    def state_lock(self) -> Path:
        return self.folder / "state.lock"

    @property
    def cycle_lock(self) -> Path:
        """Held during a cycle, by `run` and `runonce` alike."""
        return self.folder / "cycle.lock"

    @property
    def daemon_lock(self) -> Path:
        """Held by `zfsrepl run` for as long as it runs."""
        return self.folder / "run.lock"

    @property
    def metrics_file(self) -> Path:
        # One folder for all services: point the node exporter's textfile collector at it.
        return self.state_dir / "metrics" / f"{self.name}.prom"

    def create(self) -> None:
        """Make the service's state folder, or say how to choose another one; refuse one
        that is not safe to write in as this user (see fileio.folder_problem)."""
        try:
            self.folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create the state folder {self.folder}: {exc.strerror}; give "
                "--state-dir DIR or set ZFSREPL_STATE_DIR to a folder you can write") from None
        try:
            check_folder(self.folder)
        except UnsafePath as exc:
            raise UsageError(f"refusing the state folder: {exc.strerror}") from None


@dataclass(frozen=True)
class Newest:
    """The newest snapshot of this service on one destination filesystem."""

    snapshot: str
    creation: int  # seconds since the epoch, as ZFS reports it (kept by send/receive)
    # skip_unchanged: when a cycle last found the source filesystem unchanged since this
    # snapshot, so the destination held all of its data then (None: not found so).
    unchanged_at: int | None = None

    @property
    def current_at(self) -> int:
        """Up to when the destination is known to hold the source's data: the lag
        counts from here."""
        return max(self.creation, self.unchanged_at or 0)


@dataclass(frozen=True)
class ServiceState:
    maintenance_since: float | None = None
    maintenance_reason: str | None = None
    last_success: float | None = None
    last_attempt: float | None = None  # when the last cycle started
    last_error: str | None = None
    last_error_time: float | None = None
    last_cycle_seconds: float | None = None
    next_run: float | None = None  # set while `run` waits for its next cycle
    cycles_total: int = 0
    cycle_failures_total: int = 0
    attempt_failures_total: int = 0
    sent_bytes_total: int = 0
    # destination filesystem -> newest snapshot of this service seen there
    newest: Mapping[str, Newest] = field(default_factory=dict)

    @property
    def in_maintenance(self) -> bool:
        return self.maintenance_since is not None


# ---------------------------------------------------------------------------- transitions


def cycle_started(st: ServiceState, now: float) -> ServiceState:
    return replace(st, last_attempt=now, next_run=None)


def attempt_failed(st: ServiceState, now: float, error: str) -> ServiceState:
    return replace(st, attempt_failures_total=st.attempt_failures_total + 1,
                   last_error=error, last_error_time=now)


def cycle_succeeded(st: ServiceState, now: float, seconds: float,
                    newest: Mapping[str, Newest], sent_bytes: int) -> ServiceState:
    merged = {**st.newest, **newest}
    return replace(st, last_success=now, last_cycle_seconds=seconds,
                   cycles_total=st.cycles_total + 1,
                   sent_bytes_total=st.sent_bytes_total + sent_bytes, newest=merged)


def cycle_failed(st: ServiceState, now: float, seconds: float, error: str,
                 sent_bytes: int) -> ServiceState:
    return replace(st, last_cycle_seconds=seconds, cycles_total=st.cycles_total + 1,
                   cycle_failures_total=st.cycle_failures_total + 1,
                   sent_bytes_total=st.sent_bytes_total + sent_bytes,
                   last_error=error, last_error_time=now)


def enter_maintenance(st: ServiceState, now: float, reason: str) -> ServiceState:
    return replace(st, maintenance_since=now, maintenance_reason=reason, next_run=None)


def clear_maintenance(st: ServiceState) -> ServiceState:
    return replace(st, maintenance_since=None, maintenance_reason=None)


def scheduled(st: ServiceState, next_run: float | None) -> ServiceState:
    return replace(st, next_run=next_run)


# ---------------------------------------------------------------------------- JSON


def to_json(st: ServiceState) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "maintenance_since": st.maintenance_since,
        "maintenance_reason": st.maintenance_reason,
        "last_success": st.last_success,
        "last_attempt": st.last_attempt,
        "last_error": st.last_error,
        "last_error_time": st.last_error_time,
        "last_cycle_seconds": st.last_cycle_seconds,
        "next_run": st.next_run,
        "cycles_total": st.cycles_total,
        "cycle_failures_total": st.cycle_failures_total,
        "attempt_failures_total": st.attempt_failures_total,
        "sent_bytes_total": st.sent_bytes_total,
        "newest": {fs: {"snapshot": n.snapshot, "creation": n.creation,
                        **({"unchanged_at": n.unchanged_at} if n.unchanged_at else {})}
                   for fs, n in sorted(st.newest.items())},
    }


def _number(value: Any) -> float | None:
    """A finite number, or None (JSON from a hand may hold 1e400, which reads as inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def from_json(data: Any) -> ServiceState:
    """Read what can be read; a key that is missing or of the wrong type gets its default
    (the file is a cache, never a reason to stop)."""
    if not isinstance(data, dict):
        return ServiceState()
    newest: dict[str, Newest] = {}
    raw_newest = data.get("newest")
    if isinstance(raw_newest, dict):
        for fs, item in raw_newest.items():
            if isinstance(item, dict) and isinstance(item.get("snapshot"), str) \
                    and _number(item.get("creation")) is not None:
                unchanged_at = _number(item.get("unchanged_at"))
                newest[str(fs)] = Newest(item["snapshot"], int(item["creation"]),
                                         int(unchanged_at) if unchanged_at else None)
    since = _number(data.get("maintenance_since"))
    return ServiceState(
        maintenance_since=since,
        maintenance_reason=(_text(data.get("maintenance_reason")) or "unknown")
        if since is not None else None,
        last_success=_number(data.get("last_success")),
        last_attempt=_number(data.get("last_attempt")),
        last_error=_text(data.get("last_error")),
        last_error_time=_number(data.get("last_error_time")),
        last_cycle_seconds=_number(data.get("last_cycle_seconds")),
        next_run=_number(data.get("next_run")),
        cycles_total=_count(data.get("cycles_total")),
        cycle_failures_total=_count(data.get("cycle_failures_total")),
        attempt_failures_total=_count(data.get("attempt_failures_total")),
        sent_bytes_total=_count(data.get("sent_bytes_total")),
        newest=newest,
    )


# ---------------------------------------------------------------------------- the file


class StateStore:
    """Reads and updates one service's state file."""

    def __init__(self, paths: ServicePaths) -> None:
        self.paths = paths

    def load(self) -> ServiceState:
        path = self.paths.state_file
        try:
            raw = read_file(path).decode("utf-8")
        except FileNotFoundError:
            return ServiceState()
        except OSError as exc:
            logger.warning("cannot read %s: %s; starting from an empty state", path,
                           exc.strerror)
            return ServiceState()
        except UnicodeDecodeError:
            raw = ""
        try:
            return from_json(json.loads(raw))
        except ValueError:
            logger.warning("%s is not valid JSON; starting from an empty state", path)
            return ServiceState()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # run, runonce and clear may update the file at once: one at a time, briefly.
        self.paths.create()
        path = self.paths.state_lock
        try:
            fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        except UnsafePath as exc:
            raise UsageError(f"refusing the lock: {exc.strerror}") from None
        except OSError as exc:
            raise UsageError(f"cannot open {path}: {exc.strerror}; the state folder must be "
                             "writable (--state-dir DIR or ZFSREPL_STATE_DIR chooses "
                             "another)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def update(self, change: Callable[[ServiceState], ServiceState]) -> ServiceState:
        """Apply `change` to the stored state and store the result; returns it."""
        with self._locked():
            new = change(self.load())
            text = json.dumps(to_json(new), indent=2, sort_keys=True) + "\n"
            try:
                write_atomically(self.paths.state_file, text)
            except OSError as exc:
                # A cache that cannot be written must not stop replication.
                logger.warning("cannot write %s: %s", self.paths.state_file, exc.strerror)
        return new
