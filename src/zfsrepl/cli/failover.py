"""`zfsrepl failover NAME` and `zfsrepl lockoutkey NAME`, run on the destination host."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zfsrepl import config, failover
from zfsrepl.cli.common import Context
from zfsrepl.errors import UsageError
from zfsrepl.host import LocalHost
from zfsrepl.setup import authorized_keys
from zfsrepl.zfs import Zfs


def confirm(question: str, assume_yes: bool) -> None:
    """Ask `question` on the terminal; raise unless answered yes (or `assume_yes`)."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question.rstrip('?')}: not confirmed (no terminal to ask on; "
                         "add --yes to confirm from a script)")
    answer = input(f"{question} [yes/no] ").strip().lower()
    if answer not in ("y", "yes"):
        raise UsageError("not confirmed: nothing was changed")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "failover", parents=parents, help="make the destination filesystems usable here",
        description="On the destination host: mount the service's destination filesystems "
                    "writable (mountpoints from the definition or --mountpoint) and mark them "
                    "as taken over, so that no cycle from the source overwrites them. "
                    "--end makes them replicas again.")
    p.add_argument("name", help="service name")
    p.add_argument("--mountpoint", action="append", default=[], metavar="FS=PATH",
                   help="mount FS (a destination filesystem of the service) at PATH; repeat")
    p.add_argument("--end", action="store_true",
                   help="end the failover: the next cycle from the source overwrites what "
                        "was written here")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation of --end")
    p.set_defaults(handler=run_failover)

    k = sub.add_parser(
        "lockoutkey", parents=parents, help="remove the service's key from authorized_keys",
        description="On the destination host: remove the line of the service's key from "
                    "this user's authorized_keys, so the source can no longer replicate. "
                    "Other lines are kept as they are.")
    k.add_argument("name", help="service name")
    k.add_argument("--authorized-keys", metavar="FILE", type=Path,
                   help="the file to edit (default: ~/.ssh/authorized_keys)")
    k.set_defaults(handler=run_lockoutkey)


def _local_zfs(svc: config.Service) -> Zfs:
    ep = svc.destination
    return Zfs(LocalHost(f"{ep.user}@{ep.host}"), ep.zfs_argv)


def run_failover(args: argparse.Namespace, ctx: Context) -> int:
    svc = config.load_service(ctx.config_dir, args.name)
    zfs = _local_zfs(svc)
    if args.end:
        if args.mountpoint:
            raise UsageError("--mountpoint goes with a failover, not with --end")
        confirm(f"End the failover of {svc.name}? The next cycle from {svc.source.host} "
                "overwrites everything written here since the last common snapshot", args.yes)
        for line in failover.end_failover(svc, zfs):
            print(line)
        print(f"failover of {svc.name} ended: enable the service on {svc.source.host} (or run "
              f"`zfsrepl runonce {svc.name}` there) to replicate forward again")
        return 0
    mountpoints = failover.parse_mountpoints(args.mountpoint, svc)
    for line in failover.failover(svc, zfs, mountpoints):
        print(line)
    print(f"the source's cycles of {svc.name} now refuse to overwrite these filesystems.\n"
          f"Keep the changes made here: `zfsrepl runonce {svc.name}` on this host replicates "
          f"them back to {svc.source.host}; discard them: `zfsrepl failover --end {svc.name}`.")
    return 0


def run_lockoutkey(args: argparse.Namespace, ctx: Context) -> int:
    svc = config.load_service(ctx.config_dir, args.name)
    path = args.authorized_keys or authorized_keys.default_path()
    marker = failover.lockout(svc, path)
    print(f"removed the key of service {svc.name} ({marker}) from {path}: "
          f"{svc.source.user}@{svc.source.host} can no longer replicate here")
    return 0
