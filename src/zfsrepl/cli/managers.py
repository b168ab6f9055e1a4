"""Start and stop services through the host's service manager: `enable`, `disable`
(systemd), `smf-manifest` (Solaris, illumos) and `rc-script` (FreeBSD)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from zfsrepl import config, managers
from zfsrepl.cli.common import Context
from zfsrepl.errors import UsageError, ZfsreplError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    e = sub.add_parser(
        "enable", parents=parents, help="start a service now and at every boot (systemd)",
        description="Install the zfsrepl@.service template unit where needed and a drop-in "
                    "that runs zfsrepl@NAME as the definition's source user, then enable and "
                    "start zfsrepl@NAME (like `svcadm enable`).")
    e.add_argument("name", help="service name")
    e.set_defaults(handler=enable)

    d = sub.add_parser("disable", parents=parents, help="stop a service and keep it stopped",
                       description="Stop and disable zfsrepl@NAME (like `svcadm disable`).")
    d.add_argument("name", help="service name")
    d.set_defaults(handler=disable)

    s = sub.add_parser(
        "smf-manifest", parents=parents, help="write the SMF manifest of a service",
        description="Write the SMF manifest of svc:/application/zfsrepl:NAME for Solaris "
                    "and illumos: import it with svccfg, then svcadm enable it.")
    s.add_argument("name", help="service name")
    s.add_argument("--user", help="user the service runs as (default: the source user of "
                                  "the definition)")
    s.add_argument("--group", help="its group (default: the user's primary group)")
    s.add_argument("--command", metavar="CMD",
                   help="how SMF starts zfsrepl (default: this installation)")
    s.add_argument("-o", "--output", metavar="FILE", type=Path,
                   help="write here instead of standard output")
    s.set_defaults(handler=smf_manifest)

    r = sub.add_parser("rc-script", parents=parents, help="print the FreeBSD rc.d script",
                       description="Print the rc.d script that runs the services listed in "
                                   "zfsrepl_services; install it as "
                                   "/usr/local/etc/rc.d/zfsrepl.")
    r.add_argument("--command", metavar="CMD",
                   help="how rc.d starts zfsrepl (default: this installation)")
    r.set_defaults(handler=rc_script)


def _command(value: str | None) -> list[str]:
    if value is None:
        return managers.zfsrepl_command()
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise UsageError(f"--command {value!r}: {exc}") from None
    if not words or not words[0].startswith("/"):
        raise UsageError(f"--command {value!r}: give the full path of the zfsrepl command")
    return words


def _systemd_or_explain(name: str) -> None:
    manager = managers.detect()
    if manager != "systemd":
        raise ZfsreplError(managers.no_manager_help(name, manager))


def enable(args: argparse.Namespace, ctx: Context) -> int:
    svc = config.load_service(ctx.config_dir, args.name)  # nothing starts on a bad definition
    _systemd_or_explain(svc.name)
    env = managers.folder_environment(ctx.config_dir, ctx.state_dir, ctx.log_dir)
    identity = managers.service_identity(svc.source.user, svc.source.zfs_command)
    if svc.source.user != "root":
        import pwd

        entry = pwd.getpwnam(svc.source.user)  # service_identity found it
        for path in managers.prepare_folders(svc.name, entry.pw_uid, entry.pw_gid,
                                             ctx.state_dir, ctx.log_dir):
            print(f"made {path} for {svc.source.user}")
    for path in managers.Systemd().enable(svc.name, managers.zfsrepl_command(), env,
                                          identity):
        print(f"wrote {path}")
    print(f"enabled and started {managers.systemd_unit(svc.name)}")
    return 0


def disable(args: argparse.Namespace, ctx: Context) -> int:
    config.check_service_name(args.name)
    _systemd_or_explain(args.name)
    managers.Systemd().disable(args.name)
    print(f"stopped and disabled {managers.systemd_unit(args.name)}")
    return 0


def smf_manifest(args: argparse.Namespace, ctx: Context) -> int:
    svc = config.load_service(ctx.config_dir, args.name)
    managers.check_smf_instance_name(svc.name, config.list_services(ctx.config_dir))
    env = managers.folder_environment(ctx.config_dir, ctx.state_dir, ctx.log_dir)
    text = managers.smf_manifest(svc.name, _command(args.command),
                                 args.user or svc.source.user, args.group, env)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, "utf-8")
    except OSError as exc:
        raise ZfsreplError(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"wrote {args.output}; then: svccfg import {shlex.quote(str(args.output))}; "
          f"svcadm enable {managers.smf_fmri(svc.name)}")
    return 0


def rc_script(args: argparse.Namespace, ctx: Context) -> int:
    sys.stdout.write(managers.rc_script(_command(args.command)))
    return 0
