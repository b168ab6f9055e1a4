"""`zfsrepl status`, `zfsrepl list` and `zfsrepl metrics`: what the services are doing."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from typing import Callable, NoReturn

from zfsrepl import config, managers, status
from zfsrepl.cli.common import Context
from zfsrepl.errors import ZfsreplError
from zfsrepl.lock import probe
from zfsrepl.log import logger
from zfsrepl.metrics import MetricsServer, ServiceSample, render
from zfsrepl.state import ServicePaths


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status", parents=parents, help="show the state, lag and errors of services",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For each service (or NAME): its state (online, offline, disabled, "
                    "maintenance with its reason; replica for the definition's copy on the "
                    "destination host), its health, last successful cycle, next run, last "
                    "error, and the lag of each filesystem (age of the newest snapshot on the "
                    "destination), read from ZFS on both sides (on the destination host, "
                    "from its replicas alone).",
        epilog=EXIT_CODES)
    p.add_argument("name", nargs="?", help="service name (default: every service)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--cached", action="store_true",
                   help="do not ask ZFS: show the lag seen by the last cycle")
    p.set_defaults(handler=show_status)

    c = sub.add_parser(
        "check", parents=parents, help="one-line health check for Nagios or Icinga",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print one line `ZFSREPL OK|WARNING|CRITICAL|UNKNOWN - text | perfdata` "
                    "on the health of service NAME, read from ZFS on both sides, and exit "
                    "with the monitoring plugin code. The perfdata holds the lag of each "
                    "filesystem in seconds (warning at 2 x interval, critical at --max-lag) "
                    "and the count of failed attempts.",
        epilog=EXIT_CODES)
    c.add_argument("name", help="service name")
    c.add_argument("--max-lag", metavar="SECONDS", type=_seconds,
                   help="CRITICAL when a filesystem's lag exceeds this (default: only the "
                        "2 x interval WARNING)")
    c.add_argument("--cached", action="store_true",
                   help="do not ask ZFS: use the lag seen by the last cycle")
    c.set_defaults(handler=check)
    c.error = _nagios_usage_error(c)  # type: ignore[method-assign,assignment]

    ls = sub.add_parser("list", parents=parents, help="list the services defined here",
                        description="List the services defined in the configuration folder, "
                                    "with their state.")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=list_services)

    m = sub.add_parser(
        "metrics", parents=parents, help="print Prometheus metrics of services",
        description="Print the metrics of each service (or NAME) in the Prometheus text "
                    "format, from what the last cycles recorded. With --listen, serve them "
                    "over HTTP until stopped: unlike a service's own metrics_port, this goes "
                    "on while services are in maintenance or stopped.")
    m.add_argument("name", nargs="?", help="service name (default: every service)")
    m.add_argument("--listen", metavar="[ADDRESS:]PORT", type=_listen_address,
                   help="serve the metrics at http://ADDRESS:PORT/metrics (default address "
                        "127.0.0.1; [::]:PORT for every IPv6 and IPv4 address)")
    m.set_defaults(handler=print_metrics)


EXIT_CODES = """exit status (as monitoring plugins use it; the worst service counts):
  0  online and in sync (every lag within 2 x interval, last attempt succeeded)
  1  degraded: a lag beyond 2 x interval, nothing replicated yet, the last
     attempt failed while retries remain, or enabled but not running
  2  maintenance, or a definition that cannot be used (or a bad command line;
     for check: 3)
  3  unknown: a host could not be asked"""


def _nagios_usage_error(parser: argparse.ArgumentParser) -> Callable[[str], NoReturn]:
    """A monitoring plugin's bad command line is UNKNOWN, in its one-line format."""
    def error(message: str) -> NoReturn:
        print(f"ZFSREPL UNKNOWN - {parser.prog}: {message}")
        sys.exit(status.UNKNOWN)
    return error


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _names(ctx: Context, name: str | None) -> list[str]:
    if name is not None:
        config.load_service(ctx.config_dir, name)  # an unknown name is an error
        return [name]
    return config.list_services(ctx.config_dir)


def show_status(args: argparse.Namespace, ctx: Context) -> int:
    names = _names(ctx, args.name)
    manager = managers.detect()
    statuses = [status.gather(ctx.config_dir, ctx.state_dir, n, live=not args.cached,
                              manager=manager) for n in names]
    code = status.worst([status.health(s).code for s in statuses])
    if args.json:
        json.dump(status.to_json(statuses), sys.stdout, indent=2)
        print()
        return code
    if not statuses:
        print(f"no services defined in {ctx.config_dir / 'services'}")
    now = time.time()
    for i, s in enumerate(statuses):
        if i:
            print()
        print("\n".join(status.format_text(s, now)))
    return code


def check(args: argparse.Namespace, ctx: Context) -> int:
    """Nagios style: always one line on standard output, never another exit code."""
    try:
        config.check_service_name(args.name)
        s = status.gather(ctx.config_dir, ctx.state_dir, args.name, live=not args.cached,
                          manager=managers.detect())
    except ZfsreplError as exc:
        print(f"ZFSREPL UNKNOWN - {args.name}: {exc}")
        return status.UNKNOWN
    h = status.health(s, args.max_lag)
    print(status.check_line(s, h, args.max_lag))
    return h.code


def list_services(args: argparse.Namespace, ctx: Context) -> int:
    manager = managers.detect()
    statuses = [status.gather(ctx.config_dir, ctx.state_dir, n, live=False, manager=manager)
                for n in config.list_services(ctx.config_dir)]
    if args.json:
        rows = [{"name": s.name, "state": s.state, "source": s.source,
                 "destination": s.destination, "interval": s.interval} for s in statuses]
        json.dump({"services": rows}, sys.stdout, indent=2)
        print()
    else:
        for s in statuses:
            print(status.list_line(s))
    return 0


def _listen_address(text: str) -> tuple[str, int]:
    address, colon, port = text.rpartition(":")
    # port 0: any free port, which the log line names
    if not port.isdigit() or not 0 <= int(port) < 65536 or (colon and not address):
        raise argparse.ArgumentTypeError(f"{text!r} is not [ADDRESS:]PORT, e.g. 9548 or "
                                         "127.0.0.1:9548")
    return (address.strip("[]") or "127.0.0.1") if colon else "127.0.0.1", int(port)


def metrics_samples(ctx: Context, name: str | None) -> list[ServiceSample]:
    """What the state files say of each service (or `name`), now."""
    samples = []
    for each in _names(ctx, name):
        paths = ServicePaths(ctx.state_dir, each)
        st = status.load_state(paths)
        try:
            svc = config.load_service(ctx.config_dir, each)
        except ZfsreplError:
            continue
        state = status.service_state(svc, st.in_maintenance,
                                     probe(paths.daemon_lock) is not None, None)
        samples.append(ServiceSample(each, state, st,
                                     [(p.source, p.destination) for p in svc.filesystems]))
    return samples


def print_metrics(args: argparse.Namespace, ctx: Context) -> int:
    if args.listen is not None:
        return serve_metrics(ctx, args.name, *args.listen)
    sys.stdout.write(render(metrics_samples(ctx, args.name), time.time()))
    return 0


def serve_metrics(ctx: Context, name: str | None, address: str, port: int,
                  stop: threading.Event | None = None) -> int:
    """Serve the metrics, read afresh for each scrape, until SIGTERM or SIGINT (or `stop`)."""
    def render_text() -> str:
        try:
            return render(metrics_samples(ctx, name), time.time())
        except ZfsreplError as exc:  # e.g. NAME's definition removed meanwhile
            logger.warning("metrics: %s", exc)
            return ""

    server = MetricsServer(address, port, render_text)
    done = stop or threading.Event()
    if stop is None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: done.set())
    server.start()
    logger.info("serving metrics on http://%s:%d/metrics", address, server.port)
    try:
        while not done.wait(1.0):
            pass
    finally:
        server.stop()
    return 0
