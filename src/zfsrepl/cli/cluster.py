"""`zfsrepl start-all` and `zfsrepl stop-all`: start and stop every service of this
host, or of one logical host of a cluster (the successors of the Solaris Cluster
scripts sc_start_svcs and sc_stop_svcs), and `zfsrepl state NAME`, the one line a
script or a cluster resource agent reads.

start-all runs each service as `zfsrepl run NAME` in a session of its own, not
through systemd: where a cluster starts and stops the services with their
resource group, the cluster owns the processes, and the services must not be
enabled in the service manager as well. stop-all sends SIGTERM to the process
holding each service's run lock (whoever started it) and waits for it to go.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zfsrepl import cluster_state, config, lock, logfile, managers
from zfsrepl.cli.common import Context
from zfsrepl.config import Service
from zfsrepl.errors import UsageError, ZfsreplError
from zfsrepl.state import ServicePaths, StateStore

DEFAULT_TIMEOUT = 60.0
# After SIGKILL the kernel frees the lock at once; this only bounds the wait for it.
KILL_WAIT = 10.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    outcome = {"start": "every one of them runs, 1 when one could not be started (in "
                         "maintenance, a bad definition)",
               "stop": "every one of them stopped (one that does not stop within the "
                       "timeout is killed), 1 when one could not be stopped"}
    for name, verb, handler in (("start-all", "start", start_all),
                                ("stop-all", "stop", stop_all)):
        p = sub.add_parser(
            name, parents=parents, help=f"{verb} every service, or those of one logical host",
            description=f"{verb.capitalize()} every replication service defined here, or "
                        "with --host those whose source host is LOGICALNAME (the logical "
                        "host name of a cluster resource group). The services run as their "
                        "own `zfsrepl run NAME` processes, not through systemd. Exit status "
                        f"0 when {outcome[verb]}.")
        p.add_argument("--host", metavar="LOGICALNAME",
                       help="only the services whose [source] host is LOGICALNAME")
        p.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=DEFAULT_TIMEOUT,
                       help=f"how long to wait for each service (default {DEFAULT_TIMEOUT:g})"
                            + ("; a service still running then is killed"
                               if verb == "stop" else ""))
        p.set_defaults(handler=handler)

    s = sub.add_parser(
        "state", parents=parents, help="print the state of a service in one line",
        description="Print `online PID`, `offline` or `maintenance REASON` for scripts and "
                    "cluster resource agents. The maintenance may come from the state file "
                    "or, when that has none, from the service's source filesystems (it "
                    "moves with a cluster's pool). Exit status 2 when the definition does "
                    "not load.")
    s.add_argument("name", help="service name")
    s.set_defaults(handler=show_state)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 1 to 86400")
    return value


# ---------------------------------------------------------------------------- pure


@dataclass(frozen=True)
class Defined:
    name: str
    service: Service | None  # None: the definition does not load
    error: str | None = None


def select(defined: Sequence[Defined], host: str | None) -> tuple[list[Defined], list[str]]:
    """The services start-all/stop-all act on, and the definitions that could not be
    read where that matters: with --host, an unreadable definition may be one of the
    logical host's. A destination's copy of a definition (for failback) never runs."""
    chosen: list[Defined] = []
    problems: list[str] = []
    for d in defined:
        if d.service is None:
            problems.append(f"{d.name}: {d.error}")
            continue
        if d.service.is_destination_copy:
            continue
        if host is None or d.service.source.host.lower() == host.lower():
            chosen.append(d)
    return chosen, problems


@dataclass(frozen=True)
class State:
    word: str  # online, offline, maintenance
    detail: str = ""  # the pid, or the reason

    def line(self) -> str:
        return f"{self.word} {self.detail}".rstrip()


def decide_state(maintenance_reason: str | None, holder: lock.Holder | None) -> State:
    """Maintenance wins (a running service in maintenance is on its way out), as in
    `status`."""
    if maintenance_reason is not None:
        return State("maintenance", " ".join(maintenance_reason.split()))
    if holder is not None:
        return State("online", str(holder.pid) if holder.pid is not None else "")
    return State("offline")


# ---------------------------------------------------------------------------- I/O


def service_state(svc: Service, state_dir: Path) -> State:
    paths = ServicePaths(state_dir, svc.name)
    st = StateStore(paths).load()
    holder = lock.probe(paths.daemon_lock)
    if not st.in_maintenance and holder is None:
        # not running here: maybe it went into maintenance on the node before this one
        st = cluster_state.with_maintenance(st, cluster_state.read(svc), time.time())
    return decide_state(st.maintenance_reason if st.in_maintenance else None, holder)


def show_state(args: argparse.Namespace, ctx: Context) -> int:
    svc = config.load_service(ctx.config_dir, args.name)
    print(service_state(svc, ctx.state_dir).line())
    return 0


def _defined(ctx: Context) -> list[Defined]:
    out = []
    for name in config.list_services(ctx.config_dir):
        try:
            out.append(Defined(name, config.load_service(ctx.config_dir, name)))
        except ZfsreplError as exc:
            out.append(Defined(name, None, str(exc)))
    return out


def _chosen(args: argparse.Namespace, ctx: Context) -> tuple[list[Defined], list[str]]:
    defined = _defined(ctx)
    chosen, problems = select(defined, args.host)
    if args.host is not None and not chosen and not problems:
        hosts = sorted({d.service.source.host for d in defined if d.service is not None})
        known = f"; source hosts defined: {', '.join(hosts)}" if hosts else ""
        raise UsageError(f"no service in {ctx.config_dir / 'services'} has the source host "
                         f"{args.host!r}{known}")
    if not chosen and not problems:
        print(f"no services defined in {ctx.config_dir / 'services'}")
    return chosen, problems


def _last_log_line(ctx: Context, name: str) -> str:
    try:
        lines = logfile.log_path(ctx.log_dir, name).read_text("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def wait_until(done: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def _start(svc: Service, ctx: Context, timeout: float) -> str | None:
    """Start one service; None when it runs, else why not."""
    paths = ServicePaths(ctx.state_dir, svc.name)
    current = service_state(svc, ctx.state_dir)
    if current.word == "online":
        print(f"{svc.name}: already running (process {current.detail})")
        return None
    if current.word == "maintenance":
        return (f"in maintenance: {current.detail}; fix the cause, then run "
                f"`zfsrepl clear {svc.name}`")
    argv = [*managers.zfsrepl_command(), "--config-dir", str(ctx.config_dir.absolute()),
            "--state-dir", str(ctx.state_dir.absolute()),
            "--log-dir", str(ctx.log_dir.absolute()), "run", svc.name]
    # Its own session: it outlives this command and its terminal; its lines go to its
    # log file (the run lock says it runs, the log says what it does).
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    running = wait_until(lambda: proc.poll() is not None
                         or lock.probe(paths.daemon_lock) is not None, timeout)
    if proc.poll() is not None:
        if proc.returncode == managers.EXIT_MAINTENANCE:
            return f"in maintenance: {service_state(svc, ctx.state_dir).detail}"
        last = _last_log_line(ctx, svc.name)
        return f"`zfsrepl run {svc.name}` exited with status {proc.returncode}" + (
            f": {last}" if last else "")
    if not running:
        return (f"`zfsrepl run {svc.name}` (process {proc.pid}) did not take its run lock "
                f"within {timeout:g} s; see {logfile.log_path(ctx.log_dir, svc.name)}")
    print(f"{svc.name}: started (process {proc.pid})")
    return None


def start_all(args: argparse.Namespace, ctx: Context) -> int:
    chosen, problems = _chosen(args, ctx)
    for d in chosen:
        assert d.service is not None
        why = _start(d.service, ctx, args.timeout)
        if why is not None:
            problems.append(f"{d.name}: {why}")
    for line in problems:
        print(f"zfsrepl: error: {line}", file=sys.stderr)
    return 1 if problems else 0


def _signal(pid: int, sig: int) -> str | None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return None
    except PermissionError:
        return f"not allowed to signal process {pid}: run as root or as the service's user"
    return None


def stop_all(args: argparse.Namespace, ctx: Context) -> int:
    if args.host is None:
        # Stopping needs no definition: an unreadable one is stopped all the same.
        names = config.list_services(ctx.config_dir)
        problems: list[str] = []
        if not names:
            print(f"no services defined in {ctx.config_dir / 'services'}")
    else:
        chosen, problems = _chosen(args, ctx)
        names = [d.name for d in chosen]
    stopping: dict[str, int] = {}
    for name in names:
        holder = lock.probe(ServicePaths(ctx.state_dir, name).daemon_lock)
        if holder is None or holder.pid is None:
            print(f"{name}: not running")
            continue
        why = _signal(holder.pid, signal.SIGTERM)
        if why is not None:
            problems.append(f"{name}: {why}")
        else:
            stopping[name] = holder.pid

    def gone(name: str) -> bool:
        return lock.probe(ServicePaths(ctx.state_dir, name).daemon_lock) is None

    # SIGTERM cuts a transfer at once; hooks and snapshots are let finish.
    wait_until(lambda: all(gone(n) for n in stopping), args.timeout)
    for name, pid in stopping.items():
        if gone(name):
            print(f"{name}: stopped (process {pid})")
            continue
        why = _signal(pid, signal.SIGKILL)
        if why is None and wait_until(functools.partial(gone, name), KILL_WAIT):
            print(f"{name}: killed (process {pid}): it did not stop within {args.timeout:g} s")
        else:
            problems.append(f"{name}: process {pid} does not stop" + (f": {why}" if why else ""))
    for line in problems:
        print(f"zfsrepl: error: {line}", file=sys.stderr)
    return 1 if problems else 0
