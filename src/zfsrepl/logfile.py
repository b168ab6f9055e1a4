"""The per-service log file, beside standard error, in the same line format."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

from zfsrepl.fileio import UnsafePath, open_file
from zfsrepl.log import DATEFMT, FORMAT, logger


class _SafeLogFile(logging.handlers.WatchedFileHandler):
    """A watched log file that is (re)opened like every file zfsrepl writes: never
    through a link, only in a folder and file of this user or root (see fileio)."""

    _refused = False

    def _open(self):  # type: ignore[no-untyped-def]  # typeshed: returns a text stream
        fd = open_file(Path(self.baseFilename), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        # The standard handlers let an error of (re)opening escape into the logging call.
        try:
            self.reopenIfNeeded()
            if self.stream is None:
                self.stream = self._open()
        except Exception:
            self.handleError(record)
            return
        logging.StreamHandler.emit(self, record)

    def handleError(self, record: logging.LogRecord) -> None:
        # A file replaced by a link after rotation: say so once, not a traceback a line.
        exc = sys.exc_info()[1]
        if isinstance(exc, UnsafePath):
            if not self._refused:
                self._refused = True
                sys.stderr.write(f"zfsrepl: no longer writing the log file: {exc.strerror}\n")
            return
        super().handleError(record)


def log_path(log_dir: Path, name: str) -> Path:
    return log_dir / f"{name}.log"


def attach(log_dir: Path, name: str, *, warn: bool = True) -> logging.Handler | None:
    """Also log to `<log_dir>/<name>.log`; carry on with standard error alone when that
    file cannot be written (the journal still has every line), with a warning if `warn`."""
    path = log_path(log_dir, name)
    try:
        log_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        # Watched: logrotate may move the file away; the next line reopens it.
        handler: logging.Handler = _SafeLogFile(path, encoding="utf-8")
    except OSError as exc:
        if not warn:
            return None
        logger.warning("cannot write the log file %s: %s; logging to standard error only "
                       "(give --log-dir DIR or set ZFSREPL_LOG_DIR)", path, exc.strerror)
        return None
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    logger.addHandler(handler)
    return handler


def detach(handler: logging.Handler | None) -> None:
    if handler is not None:
        logger.removeHandler(handler)
        handler.close()
