"""A cycle of a service with many filesystems batches its zfs calls: every snapshot in
one call where the host can, the incremental bases held and released in one call per
side. Counted on a small simulated ZFS on each side (a destination call is one ssh)."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from zfsrepl import cycle as cycle_mod
from zfsrepl import hooks
from zfsrepl.errors import CommandError

from .fakes import PAIRS, SVC, TAG, MakeWorld, N, seq
from .test_capabilities import FUSE, OPENZFS


@pytest.mark.parametrize("usage, calls", [(OPENZFS, 1), (FUSE, N)],
                         ids=["openzfs", "zfs-fuse"])
def test_one_snapshot_call_for_every_filesystem_where_the_host_can(
        world: MakeWorld, caplog: pytest.LogCaptureFixture, usage: str, calls: int) -> None:
    w = world(usage)
    caplog.set_level(logging.INFO, logger="zfsrepl")
    src, _ = w.calls_of(w.cycle)
    assert src["snapshot"] == calls
    assert all([s.name for s in w.src.fs[p.source]] == [seq(1)] for p in PAIRS)
    taken = [r.message for r in caplog.records if r.message.endswith(" taken")]
    assert taken == [f"snapshot {p.source}@{seq(1)} taken" for p in PAIRS]


def test_a_failed_batched_snapshot_still_runs_the_post_hook(
        world: MakeWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world(OPENZFS)
    ran: list[dict[str, str]] = []
    monkeypatch.setattr(hooks, "run_hook",
                        lambda key, path, env, timeout: ran.append(env))
    monkeypatch.setattr(hooks, "check_executable", lambda *args: None)
    svc = dataclasses.replace(SVC, pre_snapshot="/pre", post_snapshot="/post")
    c = cycle_mod.Cycle(svc, w.src, w.dst)
    cp = c.survey(take_snapshot=True)
    w.src.fs.pop(PAIRS[-1].source)  # gone between the survey and the snapshot
    with pytest.raises(CommandError):
        c.take_snapshots(cp)
    assert [e["ZFSREPL_PHASE"] for e in ran] == ["pre_snapshot", "post_snapshot"]
    assert ran[1]["ZFSREPL_SNAPSHOT_STATUS"] == "failed"
    # one call, atomic: no filesystem got the snapshot
    assert [call for call in w.src.calls if call[:1] == ["snapshot"]] == [
        ["snapshot", *(f"{p.source}@{seq(1)}" for p in PAIRS)]]
    assert not any(w.src.fs[p.source] for p in PAIRS[:-1])


def test_one_hold_and_one_release_per_side_for_every_filesystem(world: MakeWorld) -> None:
    w = world(OPENZFS)
    src, dst = w.calls_of(w.cycle)  # full sends: nothing held before
    assert (src["hold"], src["release"], dst["hold"], dst["release"]) == (1, 0, 1, 0)
    for n in (2, 3):
        start = len(w.src.calls), len(w.dst.calls)
        src, dst = w.calls_of(w.cycle)
        assert (src["hold"], src["release"], dst["hold"], dst["release"]) == (1, 1, 1, 1)
        for side, fss, first in ((w.src, [p.source for p in PAIRS], start[0]),
                                 (w.dst, [p.destination for p in PAIRS], start[1])):
            moves = [c for c in side.calls[first:] if c[0] in ("hold", "release")]
            # the new bases held before the old ones are released
            assert moves == [["hold", TAG, *(f"{fs}@{seq(n)}" for fs in fss)],
                             ["release", TAG, *(f"{fs}@{seq(n - 1)}" for fs in fss)]]
            assert all(side.held(fs) == [seq(n)] for fs in fss)
        assert all(s == [seq(n)] for s in (w.src.held(p.source) for p in PAIRS))


def test_zfs_fuse_holds_nothing(world: MakeWorld) -> None:
    w = world(FUSE)
    for _ in range(3):
        src, dst = w.calls_of(w.cycle)
        assert not {"hold", "release", "holds", "bookmark"} & {*src, *dst}


def test_retention_never_destroys_a_held_base(world: MakeWorld) -> None:
    # SimZfs fails the test when a held snapshot is destroyed
    w = world(OPENZFS)
    w.cycle()
    w.cycle()
    keep_me = w.src.fs[PAIRS[1].source][0]
    assert keep_me.name == seq(2) and keep_me.holds == {TAG}
    keep_me.holds.add("admin")  # someone else's hold on the current base
    for n in range(3, 7):
        w.cycle()
        for p in PAIRS:
            # keep=1: the base is all that is left, held on both sides
            assert w.src.held(p.source) == [seq(n)] and w.dst.held(p.destination) == [seq(n)]
            assert [s.name for s in w.dst.fs[p.destination]] == [seq(n)]
            left = [s.name for s in w.src.fs[p.source]]
            assert left == ([seq(2), seq(n)] if p == PAIRS[1] else [seq(n)])
    # only this service's own hold was released; the other one still protects it
    assert keep_me.holds == {"admin"}


def test_a_failed_send_leaves_its_old_base_held(world: MakeWorld) -> None:
    w = world(OPENZFS)
    w.cycle()
    w.cycle()
    broken = PAIRS[2]
    w.cut.add(broken.source)
    start = len(w.src.calls), len(w.dst.calls)
    with pytest.raises(CommandError, match="cut"):
        w.cycle()
    for p in PAIRS:
        if p == broken:
            # its base did not move: still there and held on both sides
            assert w.src.held(p.source) == [seq(2)] and w.dst.held(p.destination) == [seq(2)]
            assert seq(3) in [s.name for s in w.src.fs[p.source]]  # kept for the next cycle
        else:
            assert w.src.held(p.source) == [seq(3)] and w.dst.held(p.destination) == [seq(3)]
    for side, first in ((w.src, start[0]), (w.dst, start[1])):
        moves = [c for c in side.calls[first:] if c[0] in ("hold", "release")]
        assert [c[0] for c in moves] == ["hold", "release"]
        assert not any(f"{broken.source}@" in a or f"{broken.destination}@" in a
                       for c in moves for a in c)
    # the link is back: the next cycle moves it on like the others
    w.cut.clear()
    w.cycle()
    assert all(w.src.held(p.source) == [seq(4)] == w.dst.held(p.destination) for p in PAIRS)


def test_a_refused_batch_is_done_one_filesystem_at_a_time(
        world: MakeWorld, caplog: pytest.LogCaptureFixture) -> None:
    # e.g. an agent from before the batched forms on the destination
    w = world(OPENZFS)
    w.dst.refuse_batches = True
    w.cycle()
    w.cycle()
    assert all(w.src.held(p.source) == [seq(2)] == w.dst.held(p.destination) for p in PAIRS)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_hold_that_fails_fails_no_transfer(world: MakeWorld, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    w = world(OPENZFS)
    w.cycle()
    monkeypatch.setattr(w.dst, "_hold",
                        lambda a: (1, "", "cannot hold snapshot: permission denied"))
    w.cycle()  # does not raise
    assert all([s.name for s in w.dst.fs[p.destination]] == [seq(2)] for p in PAIRS)
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == N and all("permission denied" in m for m in warned)
    # the source's holds moved; the destination's old ones were released only to prune
    assert all(w.src.held(p.source) == [seq(2)] for p in PAIRS)


@pytest.mark.parametrize("usage, per_cycle", [
    # a steady-state cycle (incremental; probes cached as in `zfsrepl run`), source and
    # destination; no size estimate (send -nvP): the streams end before a progress line;
    # the destination's destroys are one request to its agent (destroy-many)
    (OPENZFS, ({"get": 1, "holds": 1, "snapshot": 1, "send": N, "hold": 1, "release": 1,
                "bookmark": N, "destroy": 2 * N},
               {"get": 1, "holds": 1, "receive": N, "hold": 1, "release": 1,
                "destroy": 1})),
    (FUSE, ({"get": 1, "snapshot": N, "send": N, "destroy": N},
            {"get": 1, "receive": N, "destroy": 1})),
], ids=["openzfs", "zfs-fuse"])
def test_calls_per_cycle(world: MakeWorld, usage: str,
                         per_cycle: tuple[dict[str, int], dict[str, int]]) -> None:
    w = world(usage)
    w.cycle()
    w.cycle()
    src, dst = w.calls_of(w.cycle)
    assert (dict(src), dict(dst)) == per_cycle


def test_the_destinations_destroys_are_one_request_where_its_agent_takes_it(
        world: MakeWorld, caplog: pytest.LogCaptureFixture) -> None:
    w = world(OPENZFS)
    w.cycle()
    caplog.set_level(logging.INFO, logger="zfsrepl")
    w.cycle()  # the first that prunes: its agent is asked once what it takes
    assert w.dst.calls.count(["hello"]) == 1
    destroys = [c for c in w.dst.calls if c[:1] == ["destroy"]]
    assert destroys == [["destroy", *(f"{p.destination}@{seq(1)}" for p in PAIRS)]]
    assert all([s.name for s in w.dst.fs[p.destination]] == [seq(2)] for p in PAIRS)
    logged = {r.getMessage() for r in caplog.records}
    assert all(f"destroyed {p.destination}@{seq(1)} on {w.dst.label}" in logged for p in PAIRS)
    # an agent from before it: a destroy each, as ever
    w.dst.requests = []
    w.dst.calls.clear()
    w.cache.clear()
    w.cycle()
    assert [c for c in w.dst.calls if c[:1] == ["destroy"]] == [
        ["destroy", f"{p.destination}@{seq(2)}"] for p in PAIRS]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
