"""`zfsrepl doctor NAME [--fix]`: explain a service's chains and repair them."""

from __future__ import annotations

import argparse

from zfsrepl import config, doctor
from zfsrepl.cli.common import Context
from zfsrepl.cli.failover import confirm
from zfsrepl.errors import UsageError
from zfsrepl.zfs import Zfs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor", parents=parents, help="explain and repair a service's snapshot chains",
        description="For each filesystem of the service: both chains side by side (names, "
                    "GUIDs, creation), the newest common snapshot, the situation in plain "
                    "words and the commands that fix it. --fix applies the safe repairs: a "
                    "diverged replica is renamed aside (FS.diverged-DATE, nothing "
                    "destroyed) and its common snapshot cloned back under its name; "
                    "otherwise it destroys only this service's snapshots, rolls back only "
                    "to a common snapshot, and touches nothing else.")
    p.add_argument("name", help="service name")
    p.add_argument("--fix", action="store_true", help="apply the safe repairs (asks first)")
    p.add_argument("--destroy", action="store_true",
                   help="with --fix: repair a diverged replica by destroying its extra "
                        "snapshots and rolling back instead (what was written there is lost)")
    p.add_argument("--yes", action="store_true", help="do not ask before repairing")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.destroy and not args.fix:
        raise UsageError("--destroy chooses how --fix repairs: give both, or neither")
    svc = config.load_service(ctx.config_dir, args.name)
    report, local, remote_host = doctor.examine(svc, ctx.state_dir)
    try:
        print("\n".join(report.lines()))
        repairs = report.repairs(args.destroy)
        if not args.fix:
            if repairs:
                print(f"\nrun `zfsrepl doctor {svc.name} --fix` to apply the repairs above")
            return 0 if report.healthy else 1
        if not repairs:
            print("\nnothing doctor may repair by itself" +
                  ("" if report.healthy else ": follow the steps above"))
            return 0 if report.healthy else 1
        print("\n--fix will:")
        for r in repairs:
            print(f"  {doctor.describe(r)}")
        discards = args.destroy and any(report.asides)
        confirm("Apply these repairs? What was written on the diverged replicas is lost"
                if discards else "Apply these repairs?", args.yes)
        remote = Zfs(remote_host, report.replication.receiving.zfs_argv)
        for line in doctor.apply(report, local, remote, ctx.state_dir, destroy=args.destroy):
            print(line)
        if report.unfixed(args.destroy):
            print("some problems need you: see the steps above")
            return 1
        print(f"repaired: the next cycle of {svc.name} can run")
        return 0
    finally:
        remote_host.close()
