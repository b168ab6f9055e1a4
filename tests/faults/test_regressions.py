"""Rounds of the campaign that found a bug, kept as regression tests.

A round that finds a bug is kept here, marked ``xfail(strict=True)`` with the bug while
it is not fixed; the fix removes the mark (and the variant's ``known_bugs`` entry in
kinds.py). Both rounds below found bugs that are fixed: a state file of bytes that are
not UTF-8 (a traceback at every start) and a changed host key reported as ssh's banner.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import Lab

from .kinds import KINDS_BY_NAME
from .rounds import play_round

pytestmark = pytest.mark.backends("fuse", "openzfs")


def test_a_state_file_of_random_bytes_is_rebuilt(lab: Lab, tmp_path: Path) -> None:
    # The seed draws random bytes that are not UTF-8 (as nearly all random bytes are).
    outcome = play_round(lab, KINDS_BY_NAME["state"], "garbage", "regression:state:garbage",
                         tmp_path)
    assert outcome.ok, outcome.describe()


def test_a_changed_host_key_is_one_clear_error(lab: Lab, tmp_path: Path) -> None:
    outcome = play_round(lab, KINDS_BY_NAME["hostkey"], "changed", "regression:hostkey:changed",
                         tmp_path)
    assert outcome.ok, outcome.describe()
