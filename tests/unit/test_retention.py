"""What retention destroys on one side, and why each other snapshot stays."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfsrepl.retention import decide, stale_bookmarks
from zfsrepl.snapshots import Snapshot

from .helpers import NAMING, other, own, seq

REASON_FOREIGN = "not made by this service"
REASON_COMMON = "newest snapshot common to both sides"
REASON_HELD = "held"


def test_keep_3_of_5() -> None:
    snaps = [own(n, n, 10 * n) for n in range(1, 6)]
    d = decide(snaps, NAMING, 3)
    assert d.destroy == (seq(1), seq(2))
    assert d.keep == ((seq(5), "one of the newest 3"), (seq(4), "one of the newest 3"),
                      (seq(3), "one of the newest 3"))


def test_keep_1_with_an_older_protected_common_snapshot() -> None:
    snaps = [own(n, n, 10 * n) for n in range(1, 5)]
    d = decide(snaps, NAMING, 1, protected=[seq(2)])
    assert d.destroy == (seq(1), seq(3))
    assert dict(d.keep) == {seq(4): "one of the newest 1", seq(2): REASON_COMMON}


def test_foreign_and_held_snapshots_stay() -> None:
    snaps = [other("before", 1, 5), own(1, 2, 10, userrefs=1), own(2, 3, 20),
             other("zfsrepl-src-dst-otherhost-1", 4, 25), own(3, 4, 30)]
    d = decide(snaps, NAMING, 1)
    assert d.destroy == (seq(2),)
    assert dict(d.keep) == {
        seq(3): "one of the newest 1",
        "zfsrepl-src-dst-otherhost-1": REASON_FOREIGN,
        seq(1): REASON_HELD,
        "before": REASON_FOREIGN,
    }


def test_keep_more_than_there_are() -> None:
    snaps = [own(n, n, n) for n in range(1, 3)]
    assert decide(snaps, NAMING, 10).destroy == ()


def test_order_of_the_listing_does_not_matter() -> None:
    snaps = [own(n, n, 10 * n) for n in range(1, 7)]
    assert decide(list(reversed(snaps)), NAMING, 2) == decide(snaps, NAMING, 2)


def test_age_is_by_transaction_group_not_sequence_number() -> None:
    # Sequence numbers can run backwards (a destination ahead, manual 7.1).
    snaps = [own(9, 1, 10), own(3, 2, 20), own(5, 3, 30)]
    assert decide(snaps, NAMING, 1).destroy == (seq(9), seq(3))


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_below_one_is_refused(keep: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        decide([own(1, 1, 1)], NAMING, keep)


@st.composite
def snapshot_lists(draw: st.DrawFn) -> list[Snapshot]:
    kinds = draw(st.lists(st.sampled_from(["own", "own", "foreign", "prefix"]), max_size=15))
    snaps: list[Snapshot] = []
    for i, kind in enumerate(kinds):
        held = draw(st.sampled_from([0, 0, 0, 1, 2]))
        if kind == "own":
            # sequence numbers unrelated to age
            snap = own(100 + i if draw(st.booleans()) else 500 - i, i, 10 * (i + 1),
                       userrefs=held)
        elif kind == "prefix":  # another service's, or a near miss
            snap = other(f"{NAMING.prefix}0{i}" if i % 2 else
                         f"zfsrepl-src-dst-desthost-2-{i}", i, 10 * (i + 1), userrefs=held)
        else:
            snap = other(f"manual-{i}", i, 10 * (i + 1), userrefs=held)
        snaps.append(snap)
    return draw(st.permutations(snaps))


@settings(max_examples=200)
@given(snapshot_lists(), st.integers(1, 6), st.data())
def test_retention_properties(snaps: list[Snapshot], keep: int, data: st.DataObject) -> None:
    names = [s.name for s in snaps]
    protected = data.draw(st.one_of(st.just([]), st.just(["not-there"]),
                                    st.sampled_from(names).map(lambda n: [n]) if names
                                    else st.just([])))
    d = decide(snaps, NAMING, keep, protected)
    by_name = {s.name: s for s in snaps}
    destroyed = set(d.destroy)
    kept = dict(d.keep)

    # every snapshot is in exactly one of destroy/keep, once, and a kept one has a reason
    assert len(d.destroy) == len(destroyed)
    assert len(d.keep) == len(kept)
    assert destroyed.isdisjoint(kept)
    assert destroyed | set(kept) == set(names)
    assert all(isinstance(r, str) and r for r in kept.values())

    # never a foreign, a protected or a held snapshot
    for name in d.destroy:
        assert NAMING.is_ours(name)
        assert name not in protected
        assert by_name[name].userrefs == 0

    # the newest min(keep, own) own snapshots stay
    own_newest_first = sorted((s for s in snaps if NAMING.is_ours(s.name)),
                              key=lambda s: -s.createtxg)
    for s in own_newest_first[:keep]:
        assert kept[s.name] == f"one of the newest {keep}"

    # exactly the own, unprotected, unheld snapshots beyond the newest keep go, oldest first
    expected = [s.name for s in reversed(own_newest_first[keep:])
                if s.name not in protected and s.userrefs == 0]
    assert list(d.destroy) == expected
    ages = [by_name[n].createtxg for n in d.destroy]
    assert ages == sorted(ages)

    # the reasons say why
    for name, reason in kept.items():
        if not NAMING.is_ours(name):
            assert reason == REASON_FOREIGN
        elif reason == REASON_COMMON:
            assert name in protected
        elif reason == REASON_HELD:
            assert by_name[name].userrefs > 0
        else:
            assert reason == f"one of the newest {keep}"


# ---------------------------------------------------------------------------- own holds


def test_only_this_services_hold_is_released_for_pruning() -> None:
    # @1 held by this service only (the old base), @2 by this service and an admin,
    # @3 by an admin only; @4 and @5 are the newest
    snaps = [own(1, 1, 10, userrefs=1), own(2, 2, 20, userrefs=2), own(3, 3, 30, userrefs=1),
             own(4, 4, 40, userrefs=1), own(5, 5, 50)]
    d = decide(snaps, NAMING, 2, protected=[seq(4)], own_holds=[seq(1), seq(2), seq(4)])
    assert d.destroy == (seq(1),)
    assert dict(d.keep)[seq(2)] == REASON_HELD
    assert dict(d.keep)[seq(3)] == REASON_HELD
    # without knowing the holds, every held snapshot stays
    assert decide(snaps, NAMING, 2, protected=[seq(4)]).destroy == ()


def test_stale_bookmarks_are_only_own_and_not_the_current() -> None:
    marks = [own(1, 1, 10), own(2, 2, 20), other("admin-mark", 9, 15)]
    assert stale_bookmarks(marks, NAMING, seq(2)) == (seq(1),)
    assert stale_bookmarks(marks, NAMING, seq(3)) == (seq(1), seq(2))
