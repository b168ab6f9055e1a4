"""Rounds of the campaign that found a bug, kept as they failed.

Each is marked ``xfail(strict=True)`` with the bug while it is not fixed: the day the fix
lands, the round passes, the strict xfail fails, and the mark is to be removed (and the
variant's ``known_bugs`` entry in kinds.py with it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import Lab

from .kinds import HOSTKEY_BANNER, KINDS_BY_NAME, STATE_NOT_UTF8
from .rounds import play_round

pytestmark = pytest.mark.backends("fuse", "openzfs")


@pytest.mark.xfail(strict=True, reason=STATE_NOT_UTF8)
def test_a_state_file_of_random_bytes_is_rebuilt(lab: Lab, tmp_path: Path) -> None:
    # The seed draws random bytes that are not UTF-8 (as nearly all random bytes are).
    outcome = play_round(lab, KINDS_BY_NAME["state"], "garbage", "regression:state:garbage",
                         tmp_path)
    assert outcome.ok, outcome.describe()


@pytest.mark.xfail(strict=True, reason=HOSTKEY_BANNER)
def test_a_changed_host_key_is_one_clear_error(lab: Lab, tmp_path: Path) -> None:
    outcome = play_round(lab, KINDS_BY_NAME["hostkey"], "changed", "regression:hostkey:changed",
                         tmp_path)
    assert outcome.ok, outcome.describe()
