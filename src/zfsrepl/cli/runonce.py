"""`zfsrepl runonce NAME`: one replication cycle, with retries."""

from __future__ import annotations

import argparse

from zfsrepl import config
from zfsrepl.cli.common import Context
from zfsrepl.cycle import dry_run, replicate
from zfsrepl.errors import ReplicationError
from zfsrepl.host import LocalHost, SshHost


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("runonce", parents=parents, help="run one replication cycle now",
                       description="Snapshot the service's filesystems, send them to the "
                                   "destination and apply retention, once.")
    p.add_argument("name", help="service name")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be snapshotted, sent and destroyed; change nothing")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    svc = config.load_service(ctx.config_dir, args.name)
    source = LocalHost(f"{svc.source.user}@{svc.source.host}")
    with SshHost(svc.destination) as destination:
        if args.dry_run:
            cp = dry_run(svc, source, destination)
            print("\n".join(cp.describe()))
            print("dry run: nothing was changed")
            conflicts = cp.conflicts()
            if conflicts:
                raise ReplicationError("; ".join(conflicts))
            return 0
        replicate(svc, source, destination)
    return 0
