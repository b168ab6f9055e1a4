"""The pure half of a cycle (cycleplan.py): the new snapshot, retention and the new bases
after the sends (`after`), the plan text."""

from __future__ import annotations

import dataclasses

import pytest

from zfsrepl import cycleplan, plan
from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.cycleplan import (
    CyclePlan,
    FilesystemPlan,
    destination_after,
    retention_after,
)
from zfsrepl.cycleplan import with_new_snapshot as _with_new_snapshot
from zfsrepl.errors import ReplicationError
from zfsrepl.replication import Replication
from zfsrepl.snapshots import Snapshot

from .helpers import DST_FS, NAMING, SRC_FS, other, own, received, seq

PAIR = FilesystemPair(SRC_FS, DST_FS)


def service(keep_source: int = 1, keep_destination: int = 1,
            pairs: tuple[FilesystemPair, ...] = (PAIR,)) -> Service:
    svc = Service(name="testrepl", source=Endpoint("srchost", "src"),
                  destination=Endpoint("desthost", "dst"), filesystems=pairs,
                  keep_source=keep_source, keep_destination=keep_destination)
    assert svc.naming == NAMING
    return svc


def planned(src: list[Snapshot], dst: list[Snapshot] | None, svc: Service,
            sent_ok: bool, pair: FilesystemPair = PAIR) -> FilesystemPlan:
    fp = FilesystemPlan(pair, src, dst, plan.plan_filesystem(src, dst, NAMING))
    return _prune(fp, svc, sent_ok)


def _prune(fp: FilesystemPlan, svc: Service, sent_ok: bool) -> FilesystemPlan:
    """`fp` with what retention destroys after its sends went (`sent_ok`) or not."""
    src, dst = retention_after(Replication.forward(svc), fp, sent_ok)
    return dataclasses.replace(fp, destroy_source=src, destroy_destination=dst)


def test_with_new_snapshot() -> None:
    snaps = [own(1, 11, 40), other("manual", 12, 45)]
    out = _with_new_snapshot(snaps, SRC_FS, seq(2))
    assert out[:2] == snaps
    new = out[2]
    assert (new.filesystem, new.name, new.guid, new.createtxg) == (SRC_FS, seq(2), None, 46)
    assert new.creation > 0
    assert snaps == [own(1, 11, 40), other("manual", 12, 45)]  # input untouched
    assert _with_new_snapshot([], SRC_FS, seq(1))[0].createtxg == 1


# ---------------------------------------------------------------------------- retention_after


def test_prune_after_full_send() -> None:
    src = _with_new_snapshot([own(1, 11, 10), own(2, 12, 20)], SRC_FS, seq(3))
    fp = planned(src, None, service(), sent_ok=True)
    assert isinstance(fp.plan, plan.Full)
    assert fp.destroy_source == (seq(1), seq(2))
    assert fp.destroy_destination == ()


def test_prune_after_failed_full_send() -> None:
    src = _with_new_snapshot([own(1, 11, 10)], SRC_FS, seq(2))
    fp = planned(src, None, service(), sent_ok=False)
    assert fp.destroy_source == (seq(1),)
    assert fp.destroy_destination == ()


def test_prune_after_incremental_send() -> None:
    base = [own(n, 10 + n, 10 * n) for n in range(1, 5)]
    src = _with_new_snapshot(base, SRC_FS, seq(5))
    dst = [other("dst-local", 999, 900), *received(base[:2])]
    fp = planned(src, dst, service(keep_source=2, keep_destination=3), sent_ok=True)
    assert fp.plan == plan.Incremental(
        base=seq(2), sends=(plan.Send(seq(5), seq(2), intermediates=True),))
    assert fp.destroy_source == (seq(1), seq(2), seq(3))
    # afterwards the destination holds 1..5; 3, 4, 5 stay, its own snapshot too
    assert fp.destroy_destination == (seq(1), seq(2))


def test_prune_when_up_to_date() -> None:
    base = [own(n, 10 + n, 10 * n) for n in range(1, 4)]
    fp = planned(base, received(base), service(), sent_ok=True)
    assert fp.plan == plan.UpToDate(seq(3))
    assert fp.destroy_source == (seq(1), seq(2))
    assert fp.destroy_destination == (seq(1), seq(2))


def test_prune_after_failed_incremental_keeps_the_common_snapshot() -> None:
    base = [own(n, 10 + n, 10 * n) for n in range(1, 3)]
    src = _with_new_snapshot(base, SRC_FS, seq(3))
    dst = received(base)
    ok = planned(src, dst, service(), sent_ok=True)
    assert ok.destroy_source == (seq(1), seq(2))  # 3 is the new common one

    fp = planned(src, dst, service(), sent_ok=False)
    # 2 is still the newest common snapshot: it stays on both sides
    assert seq(2) not in fp.destroy_source
    assert fp.destroy_source == (seq(1),)
    assert fp.destroy_destination == (seq(1),)
    # nothing the failed send would have brought is destroyed on the destination
    assert not set(fp.destroy_destination) & set(plan.received_names(fp.plan, src))
    assert set(fp.destroy_destination) <= {s.name for s in dst}


def test_prune_from_a_bookmark_keeps_the_destination_copy_of_it() -> None:
    """@2 is gone from the source, its bookmark is the common point: the destination's
    @2 is the base of this send and of any retry, whatever keep says; @1 is not."""
    one, two = own(1, 11, 10), own(2, 12, 20)
    src = _with_new_snapshot([one], SRC_FS, seq(3), (two,))
    dst = received([one, two])
    for sent_ok in (True, False):
        fp = FilesystemPlan(PAIR, src, dst, plan.plan_filesystem(src, dst, NAMING,
                                                                 bookmarks=(two,)),
                            bookmarks=(two,))
        fp = _prune(fp, service(), sent_ok)
        assert fp.plan.sends[0].bookmark
        assert fp.destroy_destination == ((seq(1), seq(2)) if sent_ok else (seq(1),))


def test_prune_after_failed_send_with_higher_keep() -> None:
    base = [own(n, 10 + n, 10 * n) for n in range(1, 6)]
    src = _with_new_snapshot(base, SRC_FS, seq(6))
    dst = received(base[:2])
    fp = planned(src, dst, service(keep_source=2, keep_destination=1), sent_ok=False)
    assert seq(2) not in fp.destroy_source
    assert fp.destroy_destination == (seq(1),)


def test_failed_chain_step_does_not_turn_into_a_conflict() -> None:
    """Foreign snapshots between own ones make a chain of -i sends. When the first
    step (2 -> 3) went through and the second (3 -> 4) failed, the destination holds
    3. _prune(sent_ok=False) protects only the pre-send common 2, so with the default
    keep of 1 it destroys 3 on the source; the next cycle then finds 3 on the
    destination newer than every snapshot shared with the source: Diverged."""
    src = [own(1, 11, 10), own(2, 12, 20), other("hourly-1", 90, 25), own(3, 13, 30),
           other("hourly-2", 91, 35)]
    src = _with_new_snapshot(src, SRC_FS, seq(4))
    dst = received(src[:2])
    fp = planned(src, dst, service(), sent_ok=False)
    assert fp.plan == plan.Incremental(base=seq(2), sends=(plan.Send(seq(3), seq(2)),
                                                           plan.Send(seq(4), seq(3))))
    # What the next cycle sees: the first step arrived, then retention ran.
    dst_next = [*dst, Snapshot(DST_FS, seq(3), 13, 2000)]
    dst_next = [s for s in dst_next if s.name not in fp.destroy_destination]
    src_next = [Snapshot(s.filesystem, s.name, 14 if s.guid is None else s.guid, s.createtxg)
                for s in src if s.name not in fp.destroy_source]
    src_next = _with_new_snapshot(src_next, SRC_FS, seq(5))
    next_plan = plan.plan_filesystem(src_next, dst_next, NAMING)
    assert not isinstance(next_plan, (plan.Diverged, plan.NoCommonSnapshot)), (
        f"destroy_source={fp.destroy_source} leads to {next_plan}")


def test_prune_leaves_the_destination_alone_without_a_common_snapshot() -> None:
    src = _with_new_snapshot([own(1, 11, 10)], SRC_FS, seq(2))
    dst = received([own(1, 77, 10), own(5, 78, 20)])  # same names, other GUIDs
    for ok in (True, False):
        fp = planned(src, dst, service(), sent_ok=ok)
        assert isinstance(fp.plan, plan.NoCommonSnapshot)
        assert fp.destroy_destination == ()


def test_prune_never_destroys_foreign_or_held_snapshots() -> None:
    base = [own(1, 11, 10, userrefs=1), other("manual", 50, 15), own(2, 12, 20),
            own(3, 13, 30)]
    src = _with_new_snapshot(base, SRC_FS, seq(4))
    dst = [*received(base), other("dst-only", 60, 5000)]
    # "dst-only" is newer than the common 3: a conflict, nothing may run
    fp = planned(src, dst, service(), sent_ok=True)
    assert isinstance(fp.plan, plan.Diverged)
    dst = received(base)  # holds are per side: the destination's copies are not held
    dst[2] = Snapshot(DST_FS, dst[2].name, dst[2].guid, dst[2].createtxg, userrefs=1)
    fp = planned(src, dst, service(), sent_ok=True)
    assert fp.destroy_source == (seq(2), seq(3))
    assert fp.destroy_destination == (seq(1), seq(3))


# ---------------------------------------------------------------------------- describe


def _pair(n: int) -> FilesystemPair:
    return FilesystemPair(f"tank/fs{n}", f"backup/fs {n}")


def _plans() -> CyclePlan:
    pairs = tuple(_pair(n) for n in range(1, 7))
    svc = service(pairs=pairs)
    new = seq(4)

    def fs(n: int, snaps: list[Snapshot]) -> list[Snapshot]:
        return _with_new_snapshot([Snapshot(f"tank/fs{n}", s.name, s.guid, s.createtxg)
                                   for s in snaps], f"tank/fs{n}", new)

    base = [own(n, 10 + n, 10 * n) for n in range(1, 4)]
    fps = [
        planned(fs(1, base), None, svc, True, pairs[0]),
        planned(fs(2, base), received(base[:1]), svc, True, pairs[1]),
        planned(base, received(base), svc, True, pairs[2]),
        planned([other("manual", 1, 1)], None, svc, True, pairs[3]),
        planned(fs(5, base), [*received(base[:1]), Snapshot("backup/fs 5", "x", 99, 2000)],
                svc, True, pairs[4]),
        planned(fs(6, base), [], svc, True, pairs[5]),
    ]
    return CyclePlan(Replication.forward(svc), new, fps)


def test_describe() -> None:
    cp = _plans()
    lines = cp.describe()
    new = seq(4)
    assert lines[0] == "service testrepl: src@srchost -> dst@desthost"
    assert lines[1] == (f"snapshot @{new} of: tank/fs1, tank/fs2, tank/fs3, tank/fs4, "
                        "tank/fs5, tank/fs6")
    body = lines[2:]
    assert body[0] == f"tank/fs1 -> backup/fs 1: full send of @{new}"
    assert body[1:4] == [f"  destroy on source: tank/fs1@{seq(n)}" for n in (1, 2, 3)]
    assert body[4] == f"tank/fs2 -> backup/fs 2: incremental -I @{seq(1)} -> @{new}"
    assert body[5:8] == [f"  destroy on source: tank/fs2@{seq(n)}" for n in (1, 2, 3)]
    assert f"  destroy on destination: backup/fs 2@{seq(1)}" in body
    i = body.index(f"tank/fs3 -> backup/fs 3: up to date at @{seq(3)}")
    assert body[i + 1] == f"  destroy on source: tank/fs3@{seq(1)}"
    assert "tank/fs4 -> backup/fs 4: nothing to send" in body
    fs5 = next(line for line in body if line.startswith("tank/fs5 -> "))
    assert fs5.startswith("tank/fs5 -> backup/fs 5: CONFLICT: backup/fs 5 has snapshots newer"
                          f" than the last one it shares with tank/fs5 (@{seq(1)}): @x.")
    fs6 = next(line for line in body if line.startswith("tank/fs6 -> "))
    assert fs6.startswith("tank/fs6 -> backup/fs 6: CONFLICT: no common snapshot between "
                          "tank/fs6 and backup/fs 6: the destination exists but has no snapshots")


def test_describe_chain_of_sends_and_no_snapshot() -> None:
    src = [own(1, 11, 10), other("hourly", 90, 15), own(2, 12, 20), own(3, 13, 30)]
    svc = service()
    cp = CyclePlan(Replication.forward(svc), None, [planned(src, received(src[:1]), svc, True)])
    lines = cp.describe()
    assert lines[1] == (f"{SRC_FS} -> {DST_FS}: incremental -i @{seq(1)} -> @{seq(2)}; "
                        f"incremental -i @{seq(2)} -> @{seq(3)}")
    assert not any(line.startswith("snapshot @") for line in lines)


def test_conflicts_name_each_filesystem_and_situation() -> None:
    cp = _plans()
    found = cp.conflicts()
    assert len(found) == 2
    assert found[0].startswith("backup/fs 5 has snapshots newer than the last one it shares "
                               "with tank/fs5")
    assert "run 'zfsrepl doctor'" in found[0]
    assert found[1].startswith("no common snapshot between tank/fs6 and backup/fs 6")
    assert "rename or destroy the destination" in found[1]
    with pytest.raises(ReplicationError) as info:
        cp.raise_on_conflict()
    assert str(info.value) == "; ".join(found)


def test_no_conflicts() -> None:
    cp = dataclasses.replace(_plans(), filesystems=_plans().filesystems[:4])
    assert cp.conflicts() == []
    cp.raise_on_conflict()


# ---------------------------------------------------------------------------- destination_after


def test_destination_after_an_incremental_holds_what_was_sent_minus_what_was_pruned() -> None:
    base = [own(n, 10 + n, 10 * n) for n in range(1, 5)]
    src = _with_new_snapshot(base, SRC_FS, seq(5))
    dst = [other("dst-local", 999, 900, fs=DST_FS), *received(base[:2])]
    fp = planned(src, dst, service(keep_source=2, keep_destination=3), sent_ok=True)
    after = destination_after(fp)
    assert after is not None
    assert [s.name for s in after] == ["dst-local", seq(3), seq(4), seq(5)]
    assert all(s.filesystem == DST_FS for s in after)
    # the received ones are newer than anything there was, in the source's order
    assert after[-1].createtxg > max(s.createtxg for s in dst)
    assert [s.guid for s in after[1:3]] == [13, 14]


def test_destination_after_a_full_send_to_a_new_filesystem() -> None:
    src = _with_new_snapshot([own(1, 11, 10)], SRC_FS, seq(2))
    fp = planned(src, None, service(), sent_ok=True)
    after = destination_after(fp)
    assert after is not None and [s.name for s in after] == [seq(2)]
    assert after[0].creation == src[-1].creation


def test_destination_after_nothing_to_send_is_the_listing_minus_the_pruned() -> None:
    snaps = [own(1, 11, 10), own(2, 12, 20)]
    fp = planned(snaps, received(snaps), service(keep_source=2, keep_destination=1),
                 sent_ok=True)
    after = destination_after(fp)
    assert after is not None and [s.name for s in after] == [seq(2)]


def test_destination_after_a_missing_filesystem_that_receives_nothing_is_none() -> None:
    fp = FilesystemPlan(PAIR, [], None, plan.plan_filesystem([], None, NAMING))
    assert destination_after(fp) is None


def test_destination_after_a_resumed_stream_adds_nothing_it_cannot_know() -> None:
    snaps = [own(1, 11, 10), own(2, 12, 20)]
    dst = received(snaps[:1])
    fp = FilesystemPlan(PAIR, snaps, dst, plan.plan_filesystem(snaps, dst, NAMING,
                                                               resume_token="1-abc"))
    assert isinstance(fp.plan, plan.Resume)
    assert destination_after(fp) == dst


def test_the_lag_counts_from_when_the_snapshot_was_taken_not_planned() -> None:
    src = _with_new_snapshot([own(1, 11, 10)], SRC_FS, seq(2))
    fp = planned(src, None, service(), sent_ok=True)
    cp = CyclePlan(Replication.forward(service()), seq(2), [fp]).stamped(1234567)
    (fp,) = cp.filesystems
    assert [s.creation for s in fp.source] == [10, 1234567]
    after = destination_after(fp)
    assert after is not None and after[-1].creation == 1234567


# ---------------------------------------------------------------------------- after


def test_after_moves_the_base_only_where_the_sends_went_through() -> None:
    svc = service(keep_source=1, keep_destination=1)
    base = [own(1, 11, 10), own(2, 12, 20)]
    sent = planned(_with_new_snapshot(base, SRC_FS, seq(3)), received(base), svc, True)
    cut = sent
    resumed = FilesystemPlan(PAIR, base, received(base[:1]),
                             plan.plan_filesystem(base, received(base[:1]), NAMING,
                                                  resume_token="1-tok"))
    current = planned(base, received(base), svc, True)
    cp = CyclePlan(Replication.forward(svc), seq(3), [sent, cut, resumed, current])
    ok, failed, resumed_after, up_to_date = cycleplan.after(cp, [True, False, True, True])
    # sent: the plan's retention, and the newest snapshot sent is the new base
    assert (ok.destroy_source, ok.destroy_destination, ok.base) == (
        sent.destroy_source, sent.destroy_destination, seq(3))
    assert ok.destroy_source == (seq(1), seq(2)) and ok.destroy_destination == (seq(1), seq(2))
    # cut: the base stays; what the stream may have delivered is kept on the source
    assert failed.base is None
    assert (failed.destroy_source, failed.destroy_destination) == ((seq(1),), (seq(1),))
    # a resumed stream's end is known from the next listing only
    assert (resumed_after.destroy_source, resumed_after.destroy_destination,
            resumed_after.base) == ((), (), None)
    # nothing was sent: the base does not move
    assert up_to_date.base is None


def test_plan_and_after_agree_on_what_a_successful_cycle_destroys() -> None:
    """The plan shows (dry run) what retention destroys once the sends went through;
    after() destroys exactly that when they did."""
    svc = service(keep_source=2, keep_destination=3)
    rep = Replication.forward(svc)
    for n in range(1, 7):
        base = [own(i, 10 + i, 10 * i) for i in range(1, n + 1)]
        for dst in (None, received(base[:1]), received(base)):
            fp = planned(_with_new_snapshot(base, SRC_FS, seq(n + 1)), dst, svc, True)
            out = cycleplan.after_filesystem(rep, fp, sent_ok=True)
            assert (out.destroy_source, out.destroy_destination) == \
                retention_after(rep, fp, sent_ok=True)
