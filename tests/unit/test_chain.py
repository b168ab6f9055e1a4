"""The one comparison of two chains, and the planner, the doctor and status reading it
alike: examples, then properties over generated chains."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import event, given, settings
from hypothesis import strategies as st

from zfsrepl import diagnosis, plan, status
from zfsrepl.chain import ChainState, Receiver, Sender, Verdict, compare, newest_own, receive
from zfsrepl.config import FilesystemPair
from zfsrepl.diagnosis import Chains, DestroySnapshot, Kind, Rollback
from zfsrepl.snapshots import Snapshot

from .helpers import DST_FS, NAMING, SRC_FS, other, own, received, seq

PAIR = FilesystemPair(SRC_FS, DST_FS)


def mark(snap: Snapshot) -> Snapshot:
    """The source's bookmark of `snap` (same name, GUID and transaction group)."""
    return Snapshot(SRC_FS, snap.name, snap.guid, snap.createtxg, snap.creation)


def state_of(src: list[Snapshot], dst: list[Snapshot] | None,
             marks: list[Snapshot] | None = None, token: str | None = None) -> ChainState:
    return compare(Sender.of(src, marks or []),
                   None if dst is None else Receiver.of(dst, token), NAMING)


# ---------------------------------------------------------------------------- examples


def test_behind_from_a_common_snapshot() -> None:
    src = [own(1, 101, 10), own(2, 102, 20), other("manual", 900, 25), own(3, 103, 30)]
    s = state_of(src, received(src[:1]))
    assert s.verdict is Verdict.BEHIND
    assert s.common is not None and not s.common.bookmark and s.common.label == f"@{seq(1)}"
    assert [x.name for x in s.pending] == [seq(2), seq(3)]
    assert s.diverged == () and s.target == src[-1]


def test_a_bookmark_newer_than_every_common_snapshot_is_the_common_point() -> None:
    one, two, three = own(1, 101, 10), own(2, 102, 20), own(3, 103, 30)
    s = state_of([one, three], received([one, two]), [mark(one), mark(two)])
    assert s.common is not None and s.common.bookmark
    assert (s.common.ref, s.common.label) == ("#" + seq(2), "#" + seq(2))
    assert s.common.receiving.name == seq(2) and s.common.receiving.filesystem == DST_FS
    assert [x.name for x in s.pending] == [seq(3)]
    # the snapshot itself wins over its own bookmark
    s = state_of([one, two, three], received([one, two]), [mark(two)])
    assert s.common is not None and not s.common.bookmark and s.common.name == seq(2)


def test_diverged_lists_what_the_receiver_holds_beyond_the_common_point() -> None:
    src = [own(1, 101, 10), own(2, 102, 20)]
    dst = [*received(src[:1]), Snapshot(DST_FS, seq(2), 999, 2000)]
    s = state_of(src, dst)
    assert s.verdict is Verdict.DIVERGED
    assert [x.guid for x in s.diverged] == [999]
    assert s.same_names == (seq(2),)


def test_no_common_point_leaves_everything_pending_and_diverged() -> None:
    src = [own(1, 101, 10), own(2, 102, 20)]
    dst = received(src, rename={})
    dst = [Snapshot(x.filesystem, x.name, x.guid + 1000 if x.guid else None, x.createtxg)
           for x in dst]
    s = state_of(src, dst)
    assert s.verdict is Verdict.NO_COMMON and s.common is None
    assert s.pending == tuple(src) and s.diverged == tuple(dst)
    assert s.same_names == (seq(1), seq(2))


def test_verdict_order() -> None:
    src = [own(1, 101, 10)]
    assert state_of(src, received(src), token="1-x").verdict is Verdict.RESUME
    assert state_of(src, None, token="1-x").verdict is Verdict.RECEIVER_ABSENT
    assert state_of(src, received(src), token="").verdict is Verdict.UP_TO_DATE
    assert state_of([other("x", 1, 1)], None).verdict is Verdict.NOTHING_YET
    assert state_of(src, None).pending == tuple(src)


def test_newest_own_and_receive() -> None:
    snaps = [own(1, 101, 10), other("manual", 900, 20)]
    assert newest_own(snaps, NAMING) == snaps[0]
    assert newest_own([other("x", 1, 1)], NAMING) is None
    assert receive(None, [], DST_FS) is None
    before = received(snaps[:1])
    after = receive(before, [snaps[0], own(2, None, 30)], DST_FS)
    assert after is not None and [x.name for x in after] == [seq(1), seq(2)]
    assert after[-1].filesystem == DST_FS and after[-1].createtxg > before[-1].createtxg


# ---------------------------------------------------------------------------- properties


@dataclass(frozen=True)
class Situation:
    src: list[Snapshot]
    marks: list[Snapshot]
    dst: list[Snapshot] | None
    token: str | None


@st.composite
def situations(draw: st.DrawFn) -> Situation:
    """A history of the source (own and foreign snapshots); the destination received a
    prefix of it (maybe renamed, maybe re-created with the same names and other GUIDs)
    and may hold snapshots of its own after it; the source then destroyed some of its
    snapshots and kept bookmarks of some; the destination may hold a resume token."""
    kinds = draw(st.lists(st.booleans(), min_size=0, max_size=8))  # True: own
    history: list[Snapshot] = []
    n = 0
    for i, is_own in enumerate(kinds):
        if is_own:
            n += 1
            history.append(own(n, 100 + i, 10 * (i + 1)))
        else:
            history.append(other(f"foreign-{i}", 100 + i, 10 * (i + 1)))
    dst: list[Snapshot] | None = None
    sent: list[Snapshot] = []
    if draw(st.integers(0, 5)):
        sent = history[:draw(st.integers(0, len(history)))]
        recreated = draw(st.sampled_from([False] * 6 + [True]))  # same names, other GUIDs
        dst = []
        for s in sent:
            name = s.name if draw(st.integers(0, 4)) else f"renamed-{s.guid}"
            dst.append(Snapshot(DST_FS, name, s.guid + 5000 if recreated and s.guid else s.guid,
                                0))
        for j in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # written on the destination
            name = (history[len(sent) + j].name if len(sent) + j < len(history)
                    and draw(st.booleans()) else seq(50 + j) if draw(st.booleans())
                    else f"local-{j}")
            dst.append(Snapshot(DST_FS, name, 7000 + j, 0))
        dst = [Snapshot(s.filesystem, s.name, s.guid, 1000 + i, creation=2000 + i)
               for i, s in enumerate(dst)]
    kept = [s for s in history if draw(st.integers(0, 3))]
    marks = [mark(s) for s in history if NAMING.is_ours(s.name) and draw(st.booleans())]
    destroyed = draw(st.booleans())  # the newest replicated one destroyed, its bookmark kept
    if sent and destroyed:
        kept = [s for s in kept if s is not sent[-1]]
        if NAMING.is_ours(sent[-1].name) and mark(sent[-1]) not in marks:
            marks.append(mark(sent[-1]))
    if draw(st.booleans()):  # this cycle's snapshot, not taken yet
        top = max((s.createtxg for s in history), default=0)
        kept.append(own(n + 1, None, top + 1))
    token = "1-cut" if dst is not None and draw(st.sampled_from([False] * 7 + [True])) \
        else None
    return Situation(draw(st.permutations(kept)), draw(st.permutations(marks)),
                     None if dst is None else draw(st.permutations(dst)), token)


@settings(max_examples=400)
@given(situations())
def test_the_comparison_is_by_guid_and_complete(sit: Situation) -> None:
    s = state_of(sit.src, sit.dst, sit.marks, sit.token)
    event(s.verdict.name + (" at a bookmark" if s.common and s.common.bookmark else ""))
    if sit.dst is None:
        assert s.common is None and s.pending == s.own and s.diverged == ()
        return
    dst_guids = {x.guid for x in sit.dst if x.guid is not None}
    points = [*sit.src, *sit.marks]
    if s.common is None:
        assert not any(x.guid in dst_guids for x in points)
        assert s.pending == s.own and set(s.diverged) == set(sit.dst)
        return
    c = s.common
    assert c.sending.guid == c.receiving.guid and c.sending.guid in dst_guids
    assert c.sending in (sit.marks if c.bookmark else sit.src)
    # nothing newer is shared, and a bookmark is used only where its snapshot is gone
    assert not any(x.guid in dst_guids for x in points if x.createtxg > c.sending.createtxg)
    if c.bookmark:
        assert not any(x.guid == c.sending.guid for x in sit.src)
    assert set(s.pending) == {x for x in s.own if x.createtxg > c.sending.createtxg}
    assert set(s.diverged) == {x for x in sit.dst if x.createtxg > c.receiving.createtxg}


# What the doctor must find for each plan (the doctor has no plan of its own).
DOCTOR_KIND = {
    plan.Resume: Kind.RESUMING, plan.Full: Kind.RECEIVER_MISSING,
    plan.NoCommonSnapshot: Kind.NO_COMMON, plan.Diverged: Kind.RECEIVER_HAS_EXTRA,
    plan.UpToDate: Kind.UP_TO_DATE, plan.Incremental: Kind.SENDER_AHEAD,
}


@settings(max_examples=400)
@given(situations())
def test_plan_doctor_and_status_never_disagree(sit: Situation) -> None:
    p = plan.plan_filesystem(sit.src, sit.dst, NAMING, bookmarks=tuple(sit.marks),
                             resume_token=sit.token)
    event(type(p).__name__ + (" from a bookmark" if any(x.bookmark for x in p.sends) else ""))
    finding = diagnosis.diagnose(
        Chains(SRC_FS, DST_FS, sit.src, sit.dst, sending_bookmarks=tuple(sit.marks),
               receiving_resume_token=sit.token), NAMING, "svc")
    fs = status.filesystem_status(PAIR, NAMING, sit.src, sit.dst, True, None, 10_000.0,
                                  sit.marks)
    s = state_of(sit.src, sit.dst, sit.marks, sit.token)

    if isinstance(p, plan.NothingToSend):
        expected = Kind.NOTHING_YET if sit.dst is not None else Kind.RECEIVER_MISSING
        assert finding.kind is expected and fs.pending == 0
    else:
        assert finding.kind is DOCTOR_KIND[type(p)]
    # a conflict for the planner is exactly an unhealthy finding for the doctor
    conflict = isinstance(p, (plan.NoCommonSnapshot, plan.Diverged))
    assert finding.healthy is not conflict
    # the advice to move the replica aside and send it whole only where nothing is shared
    assert any("zfs rename" in c for c in finding.commands) is \
        isinstance(p, plan.NoCommonSnapshot)

    if isinstance(p, plan.Incremental):
        sent = plan.received_names(p, sit.src)
        assert fs.pending == len(sent) == len(s.pending) > 0
        label = p.base if p.base.startswith("#") else "@" + p.base
        assert f"{len(sent)} snapshot(s) after {label}" in finding.explanation
        assert f"incrementally from {label}" in finding.explanation
    elif isinstance(p, plan.UpToDate):
        assert fs.pending == 0
        label = p.common if p.common.startswith("#") else "@" + p.common
        assert f"holds {label}" in finding.explanation
    elif isinstance(p, plan.Full):
        assert fs.pending == len(s.own) > 0 and fs.lag_seconds is None
    elif isinstance(p, plan.Diverged):
        assert sit.dst is not None
        guid_of_base = {x.name: x.guid for x in (sit.marks if p.common.startswith("#")
                                                  else sit.src)}[p.common.lstrip("#")]
        rcv = {x.name: x for x in sit.dst}
        assert [x.name for x in s.diverged] == list(p.extra_on_destination)
        for r in finding.repairs:
            if isinstance(r, Rollback):  # back to the very point the planner would send from
                assert rcv[r.snapshot].guid == guid_of_base
            else:
                assert isinstance(r, DestroySnapshot) and r.snapshot in p.extra_on_destination
    elif isinstance(p, plan.NoCommonSnapshot):
        assert fs.pending == len(s.own) and p.destination_snapshots == len(sit.dst or [])
