"""The `zfsrepl` command line: one module per command group, registered here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zfsrepl import __version__, log
from zfsrepl.cli import agent, doctor, failover, managers, runonce, service, setup, status
from zfsrepl.cli.common import Context, add_common_options
from zfsrepl.errors import ZfsreplError

# Each module has register(subparsers, parents) adding its commands; a command's
# handler is stored as the parser default `handler(args, ctx) -> exit code`.
COMMAND_MODULES = [runonce, setup, agent, service, status, managers, failover, doctor]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zfsrepl",
        description="Replicate ZFS filesystems to another host over SSH, as named services.")
    parser.add_argument("--version", action="version", version=f"zfsrepl {__version__}")
    add_common_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["agent"]:
        # The forced command of a service key: the agent parses its own arguments and
        # must not depend on the rest of the command line (nor log setup, nor TOML).
        from zfsrepl import agent as remote_agent

        return remote_agent.main(words[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup()
    ctx = Context.from_args(args)
    try:
        code: int = args.handler(args, ctx)
        return code
    except ZfsreplError as exc:
        print(f"zfsrepl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("zfsrepl: interrupted", file=sys.stderr)
        return 130
