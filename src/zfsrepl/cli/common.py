"""Options every command takes, and the context they give the handlers."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from zfsrepl import config


def add_common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--config-dir and friends, accepted before and after the command name."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config-dir", metavar="DIR", default=default,
                        help="service definitions (default: $ZFSREPL_CONFIG_DIR or "
                             f"{config.DEFAULT_CONFIG_DIR})")
    parser.add_argument("--state-dir", metavar="DIR", default=default,
                        help="state not kept in ZFS (default: $ZFSREPL_STATE_DIR or "
                             f"{config.DEFAULT_STATE_DIR})")
    parser.add_argument("--log-dir", metavar="DIR", default=default,
                        help="per-service log files (default: $ZFSREPL_LOG_DIR or "
                             f"{config.DEFAULT_LOG_DIR})")
    flag = argparse.SUPPRESS if suppress else False
    parser.add_argument("-v", "--verbose", action="store_true", default=flag,
                        help="log details too (DEBUG lines)")
    parser.add_argument("-q", "--quiet", action="store_true", default=flag,
                        help="log only warnings and errors")
    parser.add_argument("--debug", action="store_true", default=flag,
                        help="log details and each zfs and ssh command run")


@dataclass(frozen=True)
class Context:
    config_dir: Path
    state_dir: Path
    log_dir: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        return cls(config.config_dir(args.config_dir), config.state_dir(args.state_dir),
                   config.log_dir(args.log_dir))
