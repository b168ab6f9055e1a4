"""What to send for one filesystem, decided from both sides' snapshot lists."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from zfsrepl.plan import (
    Diverged,
    Full,
    Incremental,
    NoCommonSnapshot,
    NothingToSend,
    Plan,
    Send,
    UpToDate,
    next_sequence,
    plan_filesystem,
    received_names,
)
from zfsrepl.snapshots import Snapshot, by_age

from .helpers import DST_FS, NAMING, SRC_FS, common_snapshot, other, own, received, seq


def chain(*seqs: int, guid_base: int = 1000) -> list[Snapshot]:
    """Own snapshots with the given sequence numbers, in that order, GUID guid_base+seq."""
    return [own(n, guid_base + n, 10 * (i + 1)) for i, n in enumerate(seqs)]


def new_target(snaps: list[Snapshot], n: int) -> list[Snapshot]:
    """`snaps` plus this cycle's snapshot, not taken yet (no GUID)."""
    top = max(s.createtxg for s in snaps) if snaps else 0
    return [*snaps, own(n, None, top + 1)]


# ---------------------------------------------------------------------------- examples


def test_full_when_destination_does_not_exist() -> None:
    src = new_target(chain(1, 2), 3)
    assert plan_filesystem(src, None, NAMING) == Full(Send(target=seq(3)))


def test_full_sends_newest_own_not_a_newer_foreign_one() -> None:
    src = [*chain(1), other("manual", 77, 100)]
    assert plan_filesystem(src, None, NAMING) == Full(Send(target=seq(1)))


def test_first_incremental() -> None:
    src = new_target(chain(1), 2)
    dst = received(chain(1))
    p = plan_filesystem(src, dst, NAMING)
    assert p == Incremental(base=seq(1), sends=(Send(target=seq(2), base=seq(1)),))
    assert p.sends[0].describe() == f"incremental -i @{seq(1)} -> @{seq(2)}"


def test_pending_own_snapshots_go_in_one_dash_capital_i_stream() -> None:
    src = new_target(chain(1, 2, 3, 4), 5)
    dst = received(chain(1, 2))
    p = plan_filesystem(src, dst, NAMING)
    assert p == Incremental(base=seq(2),
                            sends=(Send(target=seq(5), base=seq(2), intermediates=True),))
    assert p.sends[0].describe() == f"incremental -I @{seq(2)} -> @{seq(5)}"
    assert received_names(p, src) == [seq(3), seq(4), seq(5)]


def test_foreign_snapshot_between_makes_a_chain_of_dash_i_steps() -> None:
    src = [own(1, 101, 10), own(2, 102, 20), other("hourly-1", 900, 25), own(3, 103, 30),
           other("hourly-2", 901, 35), own(4, None, 40)]
    dst = received(src[:2])
    p = plan_filesystem(src, dst, NAMING)
    assert p == Incremental(base=seq(2), sends=(
        Send(target=seq(3), base=seq(2)),
        Send(target=seq(4), base=seq(3)),
    ))
    assert received_names(p, src) == [seq(3), seq(4)]


def test_foreign_snapshot_before_first_pending_one() -> None:
    src = [own(1, 101, 10), other("manual", 900, 15), own(2, None, 20)]
    p = plan_filesystem(src, received(src[:1]), NAMING)
    assert p == Incremental(base=seq(1), sends=(Send(target=seq(2), base=seq(1)),))


def test_foreign_snapshots_older_than_the_base_do_not_matter() -> None:
    src = [other("manual", 900, 5), *chain(1, 2, 3)]
    p = plan_filesystem(src, received([src[0], src[1]]), NAMING)
    assert p == Incremental(base=seq(1),
                            sends=(Send(target=seq(3), base=seq(1), intermediates=True),))


def test_up_to_date() -> None:
    src = chain(1, 2)
    assert plan_filesystem(src, received(src), NAMING) == UpToDate(common=seq(2))
    assert UpToDate(common=seq(2)).sends == ()


def test_up_to_date_when_only_foreign_snapshots_are_newer() -> None:
    src = [*chain(1, 2), other("manual", 900, 100)]
    assert plan_filesystem(src, received(chain(1, 2)), NAMING) == UpToDate(common=seq(2))


def test_no_common_snapshot_with_empty_destination() -> None:
    p = plan_filesystem(new_target(chain(1), 2), [], NAMING)
    assert p == NoCommonSnapshot(destination_snapshots=0)
    assert p.sends == ()
    text = p.explain(SRC_FS, DST_FS)
    assert f"no common snapshot between {SRC_FS} and {DST_FS}" in text
    assert "exists but has no snapshots" in text
    assert "GUID" in text


def test_no_common_snapshot_with_unrelated_destination_snapshots() -> None:
    dst = received(chain(1, 2, 3, guid_base=5000))  # same names, other GUIDs
    p = plan_filesystem(new_target(chain(1, 2, 3), 4), dst, NAMING)
    assert p == NoCommonSnapshot(destination_snapshots=3)
    assert "has 3 snapshot(s), none of them on the source" in p.explain(SRC_FS, DST_FS)


def test_destination_with_newer_snapshots_has_diverged() -> None:
    src = new_target(chain(1, 2), 3)
    dst = [*received(chain(1, 2)), other("local-change", 7000, 2000),
           Snapshot(DST_FS, seq(9), 7001, 2001)]
    p = plan_filesystem(src, dst, NAMING)
    assert p == Diverged(common=seq(2), extra_on_destination=("local-change", seq(9)))
    text = p.explain(SRC_FS, DST_FS)
    assert text.startswith(f"{DST_FS} has snapshots newer than the last one it shares with "
                           f"{SRC_FS} (@{seq(2)}): @local-change, @{seq(9)}.")


def test_diverged_names_snapshots_newer_than_common_even_if_source_has_newer_ones() -> None:
    # The source went on to 3 and 4; the destination took 3 from another source.
    src = new_target(chain(1, 2, 3), 4)
    dst = [*received(chain(1, 2)), Snapshot(DST_FS, seq(3), 9999, 5000)]
    assert plan_filesystem(src, dst, NAMING) == Diverged(
        common=seq(2), extra_on_destination=(seq(3),))


def test_destination_missing_snapshots_the_source_has() -> None:
    """The original manual's 7.1: source 120..124, destination 120..121."""
    src = chain(120, 121, 122, 123, 124)
    dst = received(src[:2])
    p = plan_filesystem(src, dst, NAMING)
    assert p == Incremental(base=seq(121),
                            sends=(Send(target=seq(124), base=seq(121), intermediates=True),))
    assert received_names(p, src) == [seq(122), seq(123), seq(124)]


def test_same_names_with_other_guids_are_not_common() -> None:
    src = chain(1, 2)
    dst = received(chain(1, 2, guid_base=7000))
    assert common_snapshot(src, dst) is None
    assert plan_filesystem(src, dst, NAMING) == NoCommonSnapshot(destination_snapshots=2)


def test_renamed_snapshot_with_same_guid_is_common() -> None:
    src = new_target(chain(1, 2), 3)
    dst = received(chain(1, 2), rename={seq(1): "renamed-a", seq(2): "renamed-b"})
    assert common_snapshot(src, dst) == src[1]
    p = plan_filesystem(src, dst, NAMING)
    assert p == Incremental(base=seq(2), sends=(Send(target=seq(3), base=seq(2)),))


def test_guid_match_beats_a_newer_name_match() -> None:
    src = new_target(chain(1, 2), 3)
    # The destination's "2" is another snapshot under the same name; only 1 is shared.
    dst = [*received(chain(1)), Snapshot(DST_FS, seq(2), 4242, 1001)]
    assert common_snapshot(src, dst) == src[0]
    assert isinstance(plan_filesystem(src, dst, NAMING), Diverged)


def test_target_without_guid_never_counts_as_common() -> None:
    src = new_target(chain(1), 2)
    dst = [*received(chain(1)), Snapshot(DST_FS, seq(2), None, 2000)]
    assert common_snapshot(src, dst) == src[0]
    assert common_snapshot([own(1, None, 1)], [Snapshot(DST_FS, seq(1), None, 1)]) is None


def test_foreign_common_snapshot_can_be_the_base() -> None:
    src = [other("migrated", 500, 5), own(1, 101, 10), own(2, None, 20)]
    dst = received(src[:1])
    p = plan_filesystem(src, dst, NAMING)
    assert p == Incremental(base="migrated",
                            sends=(Send(target=seq(2), base="migrated", intermediates=True),))
    assert received_names(p, src) == [seq(1), seq(2)]


def test_nothing_to_send_without_own_snapshots() -> None:
    src = [other("manual", 1, 1), Snapshot(SRC_FS, "zfsrepl-src-dst-elsewhere-4", 2, 2)]
    assert plan_filesystem(src, None, NAMING) == NothingToSend()
    assert plan_filesystem(src, received(src), NAMING) == NothingToSend()
    assert plan_filesystem([], [], NAMING) == NothingToSend()


def test_order_of_input_does_not_matter() -> None:
    src = new_target(chain(1, 2, 3), 4)
    dst = received(src[:2])
    assert plan_filesystem(list(reversed(src)), list(reversed(dst)), NAMING) == \
        plan_filesystem(src, dst, NAMING)


def test_send_describe() -> None:
    assert Send(target="b").describe() == "full send of @b"
    assert Send(target="b", base="a").describe() == "incremental -i @a -> @b"
    assert Send(target="b", base="a", intermediates=True).describe() == "incremental -I @a -> @b"


def test_next_sequence() -> None:
    assert next_sequence(NAMING) == 1
    assert next_sequence(NAMING, []) == 1
    src = [*chain(3, 7), other("zfsrepl-src-dst-desthost-099", 1, 1),
           Snapshot(SRC_FS, "zfsrepl-src-dst-otherhost-500", 2, 2)]
    dst = [Snapshot(DST_FS, seq(12), 3, 3)]  # the destination may be ahead (manual 7.1)
    assert next_sequence(NAMING, src) == 8
    assert next_sequence(NAMING, src, dst) == 13
    assert next_sequence(NAMING, dst, src) == 13


def test_received_names_of_plans_without_sends() -> None:
    src = chain(1)
    for p in (UpToDate(seq(1)), NothingToSend(), NoCommonSnapshot(0),
              Diverged(seq(1), ("x",))):
        assert received_names(p, src) == []


def test_received_names_of_full_send_is_the_target_only() -> None:
    src = new_target(chain(1, 2), 3)
    assert received_names(plan_filesystem(src, None, NAMING), src) == [seq(3)]


# ---------------------------------------------------------------------------- properties


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[Snapshot], list[Snapshot] | None]:
    """A source chain of own and foreign snapshots (maybe ending in this cycle's
    snapshot, not taken yet), and a destination that is absent, or holds some of
    them (maybe renamed) among snapshots of its own."""
    kinds = draw(st.lists(st.booleans(), max_size=10))  # True: own
    src: list[Snapshot] = []
    n = 0
    for i, is_own in enumerate(kinds):
        txg = 10 * (i + 1)
        if is_own:
            n += 1
            src.append(own(n, 100 + i, txg))
        else:
            src.append(other(f"foreign-{i}", 100 + i, txg))
    if draw(st.booleans()):
        src = new_target(src, n + 1)
    if draw(st.sampled_from(range(6))) == 0:
        return src, None
    have_guid = [s for s in src if s.guid is not None]
    if draw(st.booleans()):  # what earlier cycles sent: the oldest k
        taken = have_guid[:draw(st.integers(0, len(have_guid)))]
    else:  # anything else
        taken = [s for s in have_guid if draw(st.booleans())]
    dst: list[Snapshot] = []
    for s in taken:
        for _ in range(draw(st.integers(0, 1))):  # unrelated snapshot before it
            dst.append(Snapshot(DST_FS, f"local-{len(dst)}", 5000 + len(dst), 0))
        name = s.name if draw(st.booleans()) else f"renamed-{s.guid}"
        dst.append(Snapshot(DST_FS, name, s.guid, 0))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # unrelated ones at the end
        dst.append(Snapshot(DST_FS, f"local-{len(dst)}", 5000 + len(dst), 0))
    dst = [Snapshot(s.filesystem, s.name, s.guid, 1000 + i) for i, s in enumerate(dst)]
    # Listings come in any order.
    return draw(st.permutations(src)), draw(st.permutations(dst))


def _check_sends(p: Incremental, src: list[Snapshot]) -> None:
    ordered = by_age(src)
    own_names = [s.name for s in ordered if NAMING.is_ours(s.name)]
    position = {s.name: i for i, s in enumerate(ordered)}
    assert p.sends, p
    assert p.sends[0].base == p.base
    assert p.sends[-1].target == own_names[-1]
    for a, b in zip(p.sends, p.sends[1:]):
        assert b.base == a.target
    for s in p.sends:
        assert NAMING.is_ours(s.target)
        assert s.base is not None
        assert position[s.base] < position[s.target]
        if s.intermediates:
            # only own snapshots in between, so none of another service's leak
            between = ordered[position[s.base] + 1:position[s.target]]
            assert all(NAMING.is_ours(b.name) for b in between)


@settings(max_examples=300)
@given(situations())
def test_plan_properties(situation: tuple[list[Snapshot], list[Snapshot] | None]) -> None:
    src, dst = situation
    p: Plan = plan_filesystem(src, dst, NAMING)
    event(f"{type(p).__name__} with {len(p.sends)} send(s)")
    ordered = by_age(src)
    own_snaps = [s for s in ordered if NAMING.is_ours(s.name)]
    if not own_snaps:
        assert p == NothingToSend()
        return
    if dst is None:
        assert p == Full(Send(target=own_snaps[-1].name))
        return
    dst_guids = {s.guid for s in dst}
    common = common_snapshot(src, dst)
    if common is None:
        assert not any(s.guid in dst_guids for s in src if s.guid is not None)
        assert p == NoCommonSnapshot(destination_snapshots=len(dst))
        return
    # The base's GUID is on both sides, and no newer source snapshot's is.
    assert common.guid is not None and common.guid in dst_guids
    assert common in src
    assert not any(s.guid in dst_guids for s in ordered if s.createtxg > common.createtxg)
    dst_common = next(s for s in dst if s.guid == common.guid)
    newer_on_dst = [s.name for s in by_age(dst) if s.createtxg > dst_common.createtxg]
    if newer_on_dst:
        assert p == Diverged(common=common.name, extra_on_destination=tuple(newer_on_dst))
    elif own_snaps[-1].createtxg <= common.createtxg:
        assert p == UpToDate(common=common.name)
    else:
        assert isinstance(p, Incremental)
        assert p.base == common.name
        _check_sends(p, src)
    if p.sends:
        names = received_names(p, src)
        assert names[-1] == own_snaps[-1].name
        assert all(NAMING.is_ours(n) for n in names)
        assert len(set(names)) == len(names)
        by_name = {s.name: s for s in src}
        assert [by_name[n].createtxg for n in names] == sorted(by_name[n].createtxg
                                                               for n in names)
        # exactly the own snapshots newer than the base
        assert names == [s.name for s in own_snaps if s.createtxg > common.createtxg]
