"""Test selection by lab backend, shared by the conftests of tests/e2e and tests/faults.

A test runs on the backends its ``backends`` marker names (``fuse`` only without one);
under another ``$ZFSREPL_LAB_BACKEND`` it is deselected, not skipped, so that a run
reports only what it really ran.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pytest

from . import BACKENDS


def backend() -> str:
    """The backend of this session: ``$ZFSREPL_LAB_BACKEND``, ``fuse`` by default."""
    return os.environ.get("ZFSREPL_LAB_BACKEND") or "fuse"


def add_backends_marker(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): lab backends the test runs on (default: fuse only)")


def select_by_backend(config: pytest.Config, items: list[pytest.Item], directory: Path,
                      markers: Sequence[pytest.MarkDecorator]) -> None:
    """Mark every test under `directory` with `markers`, and deselect those whose
    ``backends`` marker does not name this session's backend; other tests are left."""
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        if directory not in item.path.resolve().parents:
            selected.append(item)
            continue
        for mark in markers:
            item.add_marker(mark)
        marker = item.get_closest_marker("backends")
        names = marker.args if marker else ("fuse",)
        unknown = set(names) - set(BACKENDS)
        if unknown:
            raise pytest.UsageError(f"{item.nodeid}: unknown lab backends {sorted(unknown)}")
        (selected if backend() in names else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
