"""Every unit test gets the zfsrepl loggers back as they were: a test that calls the
command line's main() sets up handlers on the streams pytest captures for that test,
which are closed by the time a later test logs.

Property tests have no deadline: hypothesis's default (200 ms an example) measures the
machine's load, not the code, and fails a correct test on a busy machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from zfsrepl import log

from .fakes import world  # noqa: F401  (a fixture: every test may ask for one)

settings.register_profile("zfsrepl", deadline=None)
settings.load_profile("zfsrepl")


@pytest.fixture(autouse=True)
def _loggers_as_they_were() -> Iterator[None]:
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate)
             for lg in (log.logger, log.commands_logger)]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
