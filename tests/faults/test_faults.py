"""The short fault campaign that the test command runs: a few rounds of each kind.

Each round is a real fault at a random moment of a real cycle in the lab (see
faults/__init__.py for what is checked afterwards). The rounds of a kind go through its
variants in turn, leaving those that find a known bug to test_regressions.py; the moment
is drawn from the seed (printed; ``ZFSREPL_FAULTS_SEED`` replays it).
``ZFSREPL_FAULTS_ROUNDS`` sets the rounds per kind (default 2). The full campaign, with
many rounds and figures, is ``scripts/faults``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import Lab

from .kinds import KINDS, Kind
from .rounds import play_round, round_seed

pytestmark = pytest.mark.backends("fuse", "openzfs")

ROUNDS = int(os.environ.get("ZFSREPL_FAULTS_ROUNDS") or 2)


PLAYED = [k for k in KINDS if not k.skip]  # a kind not played yet is no test at all
# Variants the full campaign plays but the test command leaves out, by backend: on
# zfs-fuse a link cut longer than the keep-alive leaves the send going on inside the
# daemon for minutes, holding the snapshots busy (RELIABILITY.md); such a round takes
# minutes where the others take seconds.
LONG_ROUNDS = {"fuse": {("link", "long")}}


def short_variant(kind: Kind, index: int, backend: str) -> str:
    """The `index`th variant of the short campaign: every variant in turn but the long
    ones of this backend."""
    long = LONG_ROUNDS.get(backend, set())
    variants = [v for v in kind.variants if (kind.name, v) not in long]
    return variants[index % len(variants)]


@pytest.mark.parametrize("kind", PLAYED, ids=[f"{k.number}-{k.name}" for k in PLAYED])
def test_fault_kind_recovers(lab: Lab, kind: Kind, campaign_seed: str, tmp_path: Path) -> None:
    missing = kind.needs - lab.features
    if missing:
        pytest.skip(f"needs {', '.join(sorted(missing))} (lab backend {lab.backend})")
    why = kind.unplayable(lab)
    if why:
        pytest.skip(why)
    failed = []
    for i in range(ROUNDS):
        seed = round_seed(campaign_seed, kind.name, i)
        variant = short_variant(kind, i, lab.backend)
        outcome = play_round(lab, kind, variant, seed, tmp_path / f"round-{i}")
        print(outcome.describe())
        if not outcome.ok:
            failed.append(outcome.describe())
    assert not failed, "\n".join(failed)
