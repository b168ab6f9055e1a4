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

from lab import BACKENDS, Lab, lab_session  # noqa: E402


def backend() -> str:
    return os.environ.get("ZFSREPL_LAB_BACKEND") or "fuse"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): lab backends the test runs on (default: fuse only)")
    config.addinivalue_line("markers", "faults: a round of the fault campaign")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        if FAULTS_DIR not in item.path.resolve().parents:
            selected.append(item)
            continue
        item.add_marker(pytest.mark.e2e)
        item.add_marker(pytest.mark.faults)
        marker = item.get_closest_marker("backends")
        names = marker.args if marker else ("fuse",)
        unknown = set(names) - set(BACKENDS)
        if unknown:
            raise pytest.UsageError(f"{item.nodeid}: unknown lab backends {sorted(unknown)}")
        (selected if backend() in names else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


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
