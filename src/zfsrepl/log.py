"""Log lines in the original format: `YYYY-MM-DD HH:MM:SS LEVEL message`."""

from __future__ import annotations

import logging
import sys

ALARM = 45
logging.addLevelName(ALARM, "ALARM")

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"

logger = logging.getLogger("zfsrepl")


def setup(stream: object = None, level: int = logging.INFO) -> None:
    """Send log lines to standard error (the journal reads them there)."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def alarm(message: str, *args: object) -> None:
    logger.log(ALARM, message, *args)
