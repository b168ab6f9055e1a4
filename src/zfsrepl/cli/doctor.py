"""`zfsrepl doctor NAME [--fix]`: explain a service's chains and repair them."""

from __future__ import annotations

import argparse

from zfsrepl import config, diagnosis, doctor
from zfsrepl.cli.common import Context
from zfsrepl.cli.failover import confirm
from zfsrepl.zfs import Zfs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor", parents=parents, help="explain and repair a service's snapshot chains",
        description="For each filesystem of the service: both chains side by side (names, "
                    "GUIDs, creation), the newest common snapshot, the situation in plain "
                    "words and the commands that fix it. --fix applies the safe repairs: it "
                    "destroys only this service's snapshots, rolls back only to a common "
                    "snapshot, and touches nothing else.")
    p.add_argument("name", help="service name")
    p.add_argument("--fix", action="store_true", help="apply the safe repairs (asks first)")
    p.add_argument("--yes", action="store_true", help="do not ask before repairing")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    svc = config.load_service(ctx.config_dir, args.name)
    report, local, remote_host = doctor.examine(svc, ctx.state_dir)
    try:
        print("\n".join(report.lines()))
        repairs = report.repairs()
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
            print(f"  {diagnosis.describe_repair(r)}")
        confirm("Apply these repairs?", args.yes)
        remote = Zfs(remote_host, report.service.destination.zfs_argv)
        for line in doctor.apply(report, local, remote, ctx.state_dir):
            print(line)
        unfixed = [f for _, f in report.findings if not f.healthy and not f.repairs]
        if unfixed:
            print("some problems need you: see the steps above")
            return 1
        print(f"repaired: the next cycle of {svc.name} can run")
        return 0
    finally:
        remote_host.close()
