"""`zfsrepl setup -i` (the wizard) and `zfsrepl setup -r FILE` (replay a response file).

`setup-remote` is not for people: it is what setup runs on the destination, as the
destination user over setup's own login, with its data as JSON on standard input.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from zfsrepl import config
from zfsrepl.cli.common import Context
from zfsrepl.config import Endpoint
from zfsrepl.errors import UsageError
from zfsrepl.setup import authorized_keys, probe, rootscript
from zfsrepl.setup.apply import POLL_SECONDS, Places, apply
from zfsrepl.setup.files import write_if_changed
from zfsrepl.setup.remote import Destination, LoginHost
from zfsrepl.setup.wizard import TerminalConsole, Wizard


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "setup", parents=parents, help="set a replication service up (wizard or response file)",
        description="Set a replication service up as the source user: -i asks the questions "
                    "and writes a response file; -r replays one, asking only passwords and "
                    "for the root steps.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("-i", "--interactive", action="store_true", help="ask the questions")
    mode.add_argument("-r", "--response-file", metavar="FILE",
                      help="replay a response file (a service definition)")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPTION",
                   help="ssh -o option for setup's own login to the destination "
                        "(e.g. PubkeyAuthentication=no); repeatable")
    p.add_argument("--destination-config-dir", metavar="DIR",
                   help="the configuration folder on the destination host, for the "
                        "definition's copy (default: the same path as --config-dir)")
    p.add_argument("--poll", type=float, default=POLL_SECONDS, help=argparse.SUPPRESS)
    p.set_defaults(handler=run)

    r = sub.add_parser("setup-remote", parents=parents, add_help=False)
    r.add_argument("action", choices=["probe", "install-key", "write-file", "check-root"])
    r.set_defaults(handler=run_remote)


def _places(args: argparse.Namespace, ctx: Context) -> Places:
    shown = ""
    for option, value, default in (
            ("--config-dir", ctx.config_dir, config.DEFAULT_CONFIG_DIR),
            ("--state-dir", ctx.state_dir, config.DEFAULT_STATE_DIR),
            ("--log-dir", ctx.log_dir, config.DEFAULT_LOG_DIR)):
        if value != Path(default):
            shown += f" {option} {shlex.quote(str(value.absolute()))}"
    return Places(config_dir=ctx.config_dir.absolute(), log_dir=ctx.log_dir.absolute(),
                  state_dir=ctx.state_dir.absolute(), options=shown,
                  destination_config_dir=Path(args.destination_config_dir).absolute()
                  if args.destination_config_dir else None)


def _login(endpoint: Endpoint, options: list[str]) -> Destination:
    return Destination(LoginHost(endpoint, tuple(options)))


def run(args: argparse.Namespace, ctx: Context) -> int:
    console = TerminalConsole()
    places = _places(args, ctx)
    for opt in args.ssh_option:
        if "=" not in opt:
            raise UsageError(f"--ssh-option {opt!r}: expected NAME=VALUE")
    if args.interactive:
        wizard = Wizard(console, places.config_dir,
                        connect=lambda ep: _login(ep, args.ssh_option))
        result = wizard.run()
        write_if_changed(result.response_file, config.dump_service(result.service), 0o644)
        console.say(f"The answers are saved in {result.response_file}.")
        if not result.go:
            result.destination.close()
            console.say(f"Nothing was changed. To make the changes later: zfsrepl setup -r "
                        f"{result.response_file}")
            return 0
        svc, dest = result.service, result.destination
    else:
        svc = config.load_service_file(Path(args.response_file))
        console.say(f"Setting up service {svc.name} from {args.response_file}.")
        console.say(f"Connecting to {svc.destination.user}@{svc.destination.host}: please "
                    "enter the password of the destination user if asked...")
        dest = _login(svc.destination, args.ssh_option)
        try:
            dest.probe()
        except BaseException:
            dest.close()
            raise
    try:
        return apply(svc, places, console, dest, poll=args.poll)
    finally:
        dest.close()


# ---------------------------------------------------------------------------- remote side


def _data() -> dict[str, Any]:
    try:
        data = json.loads(sys.stdin.buffer.read() or b"{}")
    except ValueError:
        raise UsageError("setup-remote: standard input is not JSON") from None
    if not isinstance(data, dict):
        raise UsageError("setup-remote: expected a JSON object")
    return data


def run_remote(args: argparse.Namespace, ctx: Context) -> int:
    out: dict[str, Any]
    if args.action == "probe":
        out = probe.probe().to_json()
    elif args.action == "install-key":
        data = _data()
        line, marker = str(data.get("line", "")), str(data.get("marker", ""))
        if (not line.startswith('restrict,command="') or not line.endswith(" " + marker)
                or not marker.startswith(authorized_keys.MARKER_PREFIX) or "\n" in line):
            raise UsageError("setup-remote install-key: not a zfsrepl key line")
        changed = authorized_keys.update(
            authorized_keys.default_path(),
            lambda content: authorized_keys.with_line(content, line, marker))
        out = {"changed": changed}
    elif args.action == "write-file":
        data = _data()
        name = str(data.get("name", ""))
        if not name or "/" in name or name.startswith("."):
            raise UsageError(f"setup-remote write-file: bad file name {name!r}")
        path = Path.home() / name
        changed = write_if_changed(path, str(data.get("content", "")), int(data.get("mode", 0o600)))
        out = {"path": str(path), "changed": changed}
    else:
        step = rootscript.RootStep.from_json(_data())
        out = {"problems": rootscript.problems(step)}
    print(json.dumps(out))
    return 0
