"""Log lines in the original format: `YYYY-MM-DD HH:MM:SS LEVEL message`.

Under systemd (standard error connected to the journal, as JOURNAL_STREAM says) a
line carries no time of its own, the journal stamps it, but a `<N>` prefix
(sd-daemon(3)) that gives it its syslog priority: ALARM is `alert`, so
`journalctl -p err` shows it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

ALARM = 45
logging.addLevelName(ALARM, "ALARM")

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"
JOURNAL_FORMAT = "%(levelname)s %(message)s"

logger = logging.getLogger("zfsrepl")
# Each command run on a host, at DEBUG: shown by --debug only, not by --verbose.
commands_logger = logging.getLogger("zfsrepl.commands")

# syslog priorities (sd-daemon(3)): the highest level at or below a record's wins.
_PRIORITIES = ((ALARM, 1), (logging.CRITICAL, 2), (logging.ERROR, 3),
               (logging.WARNING, 4), (logging.INFO, 6), (logging.DEBUG, 7))


def priority(levelno: int) -> int:
    """The syslog priority of a log level: ALARM alert (1), ERROR err (3), WARNING
    warning (4), INFO info (6), DEBUG debug (7)."""
    for level, prio in sorted(_PRIORITIES, reverse=True):
        if levelno >= level:
            return prio
    return 7


class JournalFormatter(logging.Formatter):
    """`<N>LEVEL message`; a message of several lines gets the prefix on each, since
    the journal takes each line as an entry of its own."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def to_journal(environ: Mapping[str, str], fd: int) -> bool:
    """Whether `fd` is the stream systemd connected to the journal: JOURNAL_STREAM holds
    its device and inode (a command run from a unit with its error output redirected
    elsewhere keeps the variable, but not the inode)."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def level_for(*, quiet: bool = False, verbose: bool = False, debug: bool = False) -> int:
    """-q: warnings and worse; -v and --debug: details (--debug also each command)."""
    if debug or verbose:
        return logging.DEBUG
    return logging.WARNING if quiet else logging.INFO


def setup(stream: object = None, level: int = logging.INFO, *, commands: bool = False,
          journal: bool | None = None) -> None:
    """Send log lines to standard error (the journal reads them there). `commands`: also
    each command run (--debug). `journal`: None to find out from JOURNAL_STREAM."""
    out: Any = stream or sys.stderr
    if journal is None:
        try:
            fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        journal = fd >= 0 and to_journal(os.environ, fd)
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter() if journal
                         else logging.Formatter(FORMAT, DATEFMT))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    commands_logger.setLevel(logging.DEBUG if commands else max(level, logging.INFO))


def alarm(message: str, *args: object) -> None:
    logger.log(ALARM, message, *args)
