"""Fixtures for the short fault campaign: the lab, the campaign's seed.

The lab is the e2e tests' (tests/lab; ``ZFSREPL_LAB_BACKEND``): in one pytest run with
tests/e2e it is the same session. Every test here is marked ``e2e`` and ``faults``.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Iterator

import pytest

FAULTS_DIR = Path(__file__).resolve().parent
if str(FAULTS_DIR.parent) not in sys.path:
    sys.path.insert(0, str(FAULTS_DIR.parent))

from lab import Lab, lab_session  # noqa: E402
from lab.collect import add_backends_marker, select_by_backend  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    add_backends_marker(config)
    config.addinivalue_line("markers", "faults: a round of the fault campaign")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    select_by_backend(config, items, FAULTS_DIR, [pytest.mark.e2e, pytest.mark.faults])


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the fault campaign needs root: it uses the e2e lab")
    with lab_session(keep=os.environ.get("ZFSREPL_LAB_KEEP") == "1") as the_lab:
        yield the_lab


@pytest.fixture(scope="session")
def campaign_seed() -> str:
    """``ZFSREPL_FAULTS_SEED``, or a new one; printed so a failing run can be replayed."""
    seed = (os.environ.get("ZFSREPL_FAULTS_SEED")
            or f"{random.SystemRandom().randrange(1 << 32):08x}")
    print(f"\nfault campaign seed: {seed} (ZFSREPL_FAULTS_SEED={seed} plays it again)")
    return seed
