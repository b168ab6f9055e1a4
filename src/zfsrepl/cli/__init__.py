"""The `zfsrepl` command line: one module per command group, registered here."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from zfsrepl import __version__
from zfsrepl.errors import ZfsreplError

# typing.TYPE_CHECKING, without importing typing: `zfsrepl agent` comes through here on
# every remote command, and the agent's start leaves typing out (see zfsrepl.record).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from zfsrepl.cli.common import Context

# Each module of zfsrepl.cli has register(subparsers, parents) adding its commands; a
# command's handler is stored as the parser default `handler(args, ctx) -> exit code`.
# The modules, in the order of the help, with the commands each registers: a command
# line imports only its command's module, because importing all of them costs more
# than the Python start itself, on every `runonce` and every remote agent call.
COMMANDS: dict[str, tuple[str, ...]] = {
    "runonce": ("runonce",),
    "setup": ("setup", "setup-remote"),
    "agent": ("agent",),
    "service": ("run", "clear"),
    "status": ("status", "check", "list", "metrics"),
    "managers": ("enable", "disable", "smf-manifest", "rc-script"),
    "failover": ("failover", "lockoutkey"),
    "doctor": ("doctor",),
    "cluster": ("start-all", "stop-all", "state"),
}
MODULE_OF = {command: module for module, names in COMMANDS.items() for command in names}


def command_word(argv: Sequence[str]) -> str | None:
    """The command `argv` names, found the way the full parser would find it (the same
    options before it); None when there is none."""
    from zfsrepl.cli.common import add_common_options

    pre = argparse.ArgumentParser(add_help=False)
    add_common_options(pre, suppress=False)
    pre.add_argument("-h", "--help", action="store_true")
    pre.add_argument("--version", action="store_true")
    pre.add_argument("command", nargs="?")
    try:
        known, _ = pre.parse_known_args(argv)
    except SystemExit:  # a malformed option: the full parser says what is wrong
        return None
    command: str | None = known.command
    return command


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for `command` (only its module), or for every command."""
    from zfsrepl.cli.common import add_common_options

    parser = argparse.ArgumentParser(
        prog="zfsrepl",
        description="Replicate ZFS filesystems to another host over SSH, as named services.")
    parser.add_argument("--version", action="version", version=f"zfsrepl {__version__}")
    add_common_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = [MODULE_OF[command]] if command in MODULE_OF else list(COMMANDS)
    for name in wanted:
        module = importlib.import_module(f"zfsrepl.cli.{name}")
        module.register(sub, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["agent"]:
        # The forced command of a service key: the agent parses its own arguments and
        # must not depend on the rest of the command line (nor log setup, nor TOML).
        from zfsrepl import agent as remote_agent

        return remote_agent.main(words[1:])
    # Imported here, after the agent has gone its way: it needs neither.
    from zfsrepl import log
    from zfsrepl.cli.common import Context

    parser = build_parser(command_word(words))
    args = parser.parse_args(words)
    log.setup(level=log.level_for(quiet=args.quiet, verbose=args.verbose, debug=args.debug),
              commands=args.debug)
    ctx = Context.from_args(args)
    code = _handle(args, ctx)
    try:
        sys.stdout.flush()  # here, so that a closed pipe is seen while it can be handled
    except BrokenPipeError:
        _drop_stdout()
    return code


def _drop_stdout() -> None:
    """The reader of standard output went away (`zfsrepl status | head -1`): say
    nothing more there, and let the exit not complain of a broken pipe either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _handle(args: argparse.Namespace, ctx: Context) -> int:
    try:
        code: int = args.handler(args, ctx)
        return code
    except BrokenPipeError:
        _drop_stdout()
        return 141  # as a shell reports a command ended by SIGPIPE
    except ZfsreplError as exc:
        print(f"zfsrepl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("zfsrepl: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # What the system refused (a full disk, a permission) where no message names it
        # better: one line, not a traceback.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"zfsrepl: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
