"""`zfsrepl agent ...`: the forced command of a service key (see zfsrepl.agent).

`cli.main` hands `agent` to zfsrepl.agent before building the rest of the command
line; this registration only lists it in the help.
"""

from __future__ import annotations

import argparse

from zfsrepl.cli.common import Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", add_help=False,
                       help="the destination's forced command for a service key "
                            "(written into authorized_keys by setup)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from zfsrepl import agent

    return agent.main(args.args)
