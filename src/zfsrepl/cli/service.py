"""`zfsrepl run NAME` (the service loop) and `zfsrepl clear NAME` (leave maintenance)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from zfsrepl import cluster_state, config, logfile, managers, state
from zfsrepl.cli.common import Context
from zfsrepl.log import logger
from zfsrepl.service import Daemon, publish
from zfsrepl.state import ServicePaths, StateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run", parents=parents, help="run a replication service in the foreground",
        description="Replicate the service every `interval` seconds until stopped. Meant for "
                    "a service manager (see `zfsrepl enable`): exit status 0 after SIGTERM or "
                    f"SIGINT, {managers.EXIT_MAINTENANCE} when the service went into "
                    "maintenance (do not restart it), 2 for a bad definition. SIGHUP re-reads "
                    "the definition.")
    p.add_argument("name", help="service name")
    p.add_argument("--metrics-file", metavar="FILE", type=Path,
                   help="where to write Prometheus metrics (default: "
                        "STATE_DIR/metrics/NAME.prom, for the node exporter's textfile "
                        "collector)")
    p.set_defaults(handler=run)

    c = sub.add_parser(
        "clear", parents=parents, help="take a service out of maintenance",
        description="Clear the maintenance state of a service after fixing its cause, and "
                    "start it again where the service manager has it enabled "
                    "(like `svcadm clear`).")
    c.add_argument("name", help="service name")
    c.set_defaults(handler=clear)


def run(args: argparse.Namespace, ctx: Context) -> int:
    return Daemon(ctx.config_dir, ctx.state_dir, ctx.log_dir, args.name,
                  metrics_file=args.metrics_file).run()


def clear(args: argparse.Namespace, ctx: Context) -> int:
    svc = config.load_service(ctx.config_dir, args.name)
    paths = ServicePaths(ctx.state_dir, svc.name)
    store = StateStore(paths)
    in_zfs = cluster_state.read(svc)  # moved with the pool from another cluster node
    before = cluster_state.with_maintenance(store.load(), in_zfs, 0.0)
    if not before.in_maintenance:
        print(f"service {svc.name} is not in maintenance")
        return 0

    def leave() -> int:
        handler = logfile.attach(ctx.log_dir, svc.name)
        try:
            after = store.update(state.clear_maintenance)
            if in_zfs is not None:
                cluster_state.clear(svc)
            logger.info("maintenance of %s cleared (it was: %s)", svc.name,
                        before.maintenance_reason)
        finally:
            logfile.detach(handler)
        if paths.metrics_file.exists():
            publish(paths.metrics_file, svc, after, "offline")
        return 0

    # Root clearing a service that runs as its definition's user (systemd, SMF) changes
    # that user's files as that user; then starts the service, which needs root.
    owner = managers.folder_owner(paths.folder)
    uid = managers.acting_uid(os.geteuid(), owner[0] if owner else None)
    code = leave() if uid is None or owner is None else managers.as_user(uid, owner[1], leave)
    if code != 0:
        return code
    print(managers.start_again(svc.name, managers.detect()))
    return 0
