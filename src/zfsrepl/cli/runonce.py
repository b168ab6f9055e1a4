"""`zfsrepl runonce NAME`: one replication cycle, with retries."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from zfsrepl import config
from zfsrepl.cli.common import Context
from zfsrepl.errors import ReplicationError
from zfsrepl.host import LocalHost, SshHost
from zfsrepl.interrupts import Terminated, sigterm_unwinds

# The rest of zfsrepl (the cycle, the service's state and lock, failover) is imported
# once the connection to the destination is opening: its handshake and the imports,
# each a good part of a short cycle's cost, then take the time of one.


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("runonce", parents=parents, help="run one replication cycle now",
                       description="Snapshot the service's filesystems, send them to the "
                                   "destination and apply retention, once.")
    p.add_argument("name", help="service name")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be snapshotted, sent and destroyed; change nothing")
    p.add_argument("--no-wait", action="store_true",
                   help="fail at once when another process is in a cycle of the service, "
                        "instead of waiting for it")
    p.add_argument("--metrics-file", metavar="FILE", type=Path,
                   help="also write the service's Prometheus metrics to FILE")
    p.add_argument("--yes", action="store_true",
                   help="on the destination host (failback): replicate back to the source "
                        "without asking")
    p.set_defaults(handler=run)


EXIT_TERMINATED = 128 + 15


def run(args: argparse.Namespace, ctx: Context) -> int:
    # SIGTERM (a service manager's stop, a timeout) unwinds like Ctrl-C: the ssh
    # ControlMaster is closed, not left running.
    try:
        with sigterm_unwinds():
            return _run(args, ctx)
    except Terminated:
        print("zfsrepl: terminated", file=sys.stderr)
        return EXIT_TERMINATED


def _run(args: argparse.Namespace, ctx: Context) -> int:
    svc = config.load_service(ctx.config_dir, args.name)
    if svc.is_destination_copy:
        return _failback(args, ctx, svc)
    if args.dry_run:
        return _dry_run(svc)
    with SshHost(svc.destination) as destination:
        destination.start()
        from zfsrepl import service

        # Under the service's lock (one cycle at a time, with `run` too), recorded for
        # status and metrics.
        service.run_once(svc, ctx.state_dir, ctx.log_dir, wait=not args.no_wait,
                         metrics_file=args.metrics_file,
                         runner=functools.partial(service.replicate_and_survey,
                                                  destination=destination))
    return 0


def _dry_run(svc: config.Service) -> int:
    from zfsrepl.cycle import dry_run

    source = LocalHost(f"{svc.source.user}@{svc.source.host}")
    with SshHost(svc.destination) as destination:
        cp = dry_run(svc, source, destination)
    print("\n".join(cp.describe()))
    print("dry run: nothing was changed")
    conflicts = cp.conflicts()
    if conflicts:
        raise ReplicationError("; ".join(conflicts))
    return 0


def _failback(args: argparse.Namespace, ctx: Context, svc: config.Service) -> int:
    """The destination's copy of the definition: replicate back."""
    from zfsrepl import failover, service
    from zfsrepl.cli.failover import confirm
    from zfsrepl.cycle import dry_run
    from zfsrepl.replication import Replication

    back = Replication.failback(svc)
    print(failover.failback_warning(svc), file=sys.stderr)
    if args.dry_run:
        with SshHost(back.receiving, extra_options=("BatchMode=no",)) as remote:
            cp = dry_run(back, LocalHost(svc.destination.host), remote)
        print("\n".join(cp.describe()))
        print("dry run: nothing was changed")
        return 0
    confirm(f"Replicate {svc.name} back to {svc.source.host}, overwriting its filesystems?",
            args.yes)
    service.run_once(svc, ctx.state_dir, ctx.log_dir, wait=not args.no_wait,
                     metrics_file=args.metrics_file, runner=failover.failback_runner)
    return 0
