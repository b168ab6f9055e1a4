"""`zfsrepl failover NAME` and `zfsrepl lockoutkey NAME`, run on the destination host."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zfsrepl import config, failover
from zfsrepl.cli.common import Context
from zfsrepl.errors import UsageError, ZfsreplError
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
                    "writable (mountpoints from the definition or --mountpoint). For tests: "
                    "enabling the service on the source again overwrites the changes made "
                    "here, `zfsrepl runonce NAME` here replicates them back. The interlock "
                    "(set by lockoutkey, or by --takeover) makes the source's cycles refuse "
                    "to overwrite them; --end clears it and makes them replicas again.")
    p.add_argument("name", help="service name")
    p.add_argument("--mountpoint", action="append", default=[], metavar="FS=PATH",
                   help="mount FS (a destination filesystem of the service) at PATH; repeat")
    p.add_argument("--takeover", action="store_true",
                   help="a disaster where the key cannot be locked out: set the interlock, "
                        "so that no cycle from the source overwrites these filesystems")
    p.add_argument("--end", action="store_true",
                   help="end the failover: the next cycle from the source overwrites what "
                        "was written here")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation of --end")
    p.set_defaults(handler=run_failover)

    k = sub.add_parser(
        "lockoutkey", parents=parents, help="remove the service's key from authorized_keys",
        description="On the destination host, in a disaster: remove the line of the "
                    "service's key from this user's authorized_keys, so the source can no "
                    "longer replicate (other lines are kept as they are), and set the "
                    "interlock on the service's destination filesystems here, so that a "
                    "returning source cannot overwrite them even with its key reinstalled. "
                    "Then `zfsrepl failover NAME`.")
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
        if args.takeover:
            raise UsageError("--takeover goes with a failover, not with --end")
        confirm(f"End the failover of {svc.name}? The next cycle from {svc.source.host} "
                "overwrites everything written here since the last common snapshot", args.yes)
        for line in failover.end_failover(svc, zfs):
            print(line)
        print(f"failover of {svc.name} ended: enable the service on {svc.source.host} (or run "
              f"`zfsrepl runonce {svc.name}` there) to replicate forward again")
        return 0
    mountpoints = failover.parse_mountpoints(args.mountpoint, svc)
    result = failover.failover(svc, zfs, mountpoints, takeover=args.takeover)
    for line in result.lines:
        print(line)
    src, name = svc.source.host, svc.name
    if result.interlocked:
        print(f"Taken over: the interlock is set, the source's cycles of {name} refuse to "
              "overwrite these filesystems.\n"
              f"Keep the changes made here: `zfsrepl runonce {name}` on this host replicates "
              f"them back to {src} (as often as needed).\n"
              f"End the failover: `zfsrepl failover --end {name}` here clears the interlock; "
              f"then enabling the service on {src} again overwrites what changed here since "
              "the last common snapshot.")
    else:
        print(f"Failover for tests: keep the service disabled on {src}, or its next cycle "
              "overwrites the changes made here. End it either way:\n"
              f"- discard the changes made here: enable the service on {src} again (or run "
              f"`zfsrepl runonce {name}` there): it overwrites them;\n"
              f"- keep them: `zfsrepl runonce {name}` on this host replicates them back to "
              f"{src}.\n"
              f"In a disaster, lock the source out with `zfsrepl lockoutkey {name}` (or "
              f"`zfsrepl failover --takeover {name}`): that sets the interlock, which "
              f"`zfsrepl failover --end {name}` ends.")
    return 0


def run_lockoutkey(args: argparse.Namespace, ctx: Context) -> int:
    svc = config.load_service(ctx.config_dir, args.name)
    path = args.authorized_keys or authorized_keys.default_path()
    problems: list[str] = []
    try:
        marker = failover.lockout(svc, path)
        print(f"removed the key of service {svc.name} ({marker}) from {path}: "
              f"{svc.source.user}@{svc.source.host} can no longer replicate here")
    except ZfsreplError as exc:
        # Locked out by hand or already: the interlock is set all the same.
        problems.append(str(exc))
    zfs = _local_zfs(svc)
    lines, missing = failover.set_interlock(svc, zfs)
    for line in lines:
        print(line)
    if missing:
        problems.append(f"{', '.join(missing)} does not exist on {zfs.label}: no interlock "
                        "set there (nothing of the service was received here to protect)")
    if lines:
        print(f"the source's cycles of {svc.name} now refuse to overwrite "
              f"{'this filesystem' if len(lines) == 1 else 'these filesystems'}, even with "
              f"the key reinstalled. Next: `zfsrepl failover {svc.name}` makes them usable; "
              f"`zfsrepl failover --end {svc.name}` ends the interlock.")
    if problems:
        raise ZfsreplError("\n".join(problems))
    return 0
