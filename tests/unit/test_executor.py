"""The executor's use of current ZFS (executor.py): holds and bookmarks of the base,
resumed streams, the options of each stream; and that none of it happens where the
host lacks it."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from zfsrepl import executor, plan
from zfsrepl.capabilities import NONE, Capabilities
from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.cycle import Cycle, CyclePlan, FilesystemPlan
from zfsrepl.cycleplan import after_filesystem, retention_after, with_new_snapshot
from zfsrepl.errors import CommandError
from zfsrepl.executor import Prune
from zfsrepl.host import LocalHost
from zfsrepl.replication import Replication
from zfsrepl.snapshots import Snapshot
from zfsrepl.transfer import TransferNotResumable, TransferResult
from zfsrepl.zfserrors import HasClones

from .fakes import FnStreams
from .helpers import DST_FS, NAMING, SRC_FS, own, received, seq

ALL = Capabilities(resume=True, bookmarks=True, holds=True, raw_send=True, estimate=False,
                   compressed=True, list_p=True, recv_props=True)
TAG = "zfsrepl-testrepl"
PAIR = FilesystemPair(SRC_FS, DST_FS)
SVC = Service(name="testrepl", source=Endpoint("srchost", "src"),
              destination=Endpoint("desthost", "dst"), filesystems=(PAIR,), keep_source=1,
              keep_destination=1, bandwidth_limit=1 << 20)


class FakeZfs:
    """Records what the cycle asks of one side's zfs."""

    def __init__(self, label: str, caps: Capabilities) -> None:
        self.label = label
        self.caps = caps
        self.calls: list[tuple[Any, ...]] = []

    def capabilities(self) -> Capabilities:
        return self.caps

    def hold(self, tag: str, snapshots: list[str]) -> None:
        self.calls.append(("hold", tag, *snapshots))

    def release(self, tag: str, snapshots: list[str]) -> None:
        self.calls.append(("release", tag, *snapshots))

    def bookmark(self, fs: str, name: str) -> None:
        self.calls.append(("bookmark", fs, name))

    def destroy_bookmark(self, fs: str, name: str) -> None:
        self.calls.append(("destroy_bookmark", fs, name))

    def destroy_snapshot(self, fs: str, name: str) -> None:
        self.calls.append(("destroy", fs, name))

    def takes_many_destroys(self, count: int) -> bool:
        return False  # as an agent from before destroy-many

    def takes_many_bookmarks(self, count: int) -> bool:
        return False  # no libzfs_core

    def abort_resumable(self, fs: str) -> None:
        self.calls.append(("abort", fs))

    def send_argv(self, fs: str, send: plan.Send, **opts: bool) -> list[str]:
        self.calls.append(("send", send, opts))
        return ["send"]

    def receive_argv(self, fs: str, **opts: bool) -> list[str]:
        self.calls.append(("receive", fs, opts))
        return ["receive"]

    def estimate(self, fs: str, send: plan.Send, **opts: bool) -> int | None:
        return None


def make_cycle(monkeypatch: pytest.MonkeyPatch, src_caps: Capabilities,
               dst_caps: Capabilities, pipe: Any = None) -> tuple[Cycle, FakeZfs, FakeZfs]:
    limits: list[int | None] = []

    def fake_pipe(sender: list[str], receiver: list[str], what: str, **kw: Any) -> TransferResult:
        limits.append(kw.get("limit"))
        return TransferResult(0.1, 10)

    c = Cycle(SVC, LocalHost("src"), LocalHost("dst"), streams=FnStreams(pipe or fake_pipe))
    src, dst = FakeZfs("src", src_caps), FakeZfs("dst", dst_caps)
    c.src, c.dst = src, dst  # type: ignore[assignment]
    return c, src, dst


def the_plan(**extra: Any) -> FilesystemPlan:
    # @1 replicated and held on both sides, bookmarked; this cycle sends @2
    src = [own(1, 101, 10, userrefs=1), own(2, 102, 20)]
    dst = received([own(1, 101, 10, userrefs=1)])
    dst = [Snapshot(s.filesystem, s.name, s.guid, s.createtxg, userrefs=1) for s in dst]
    marks = (Snapshot(SRC_FS, seq(1), 101, 10),)
    fp = FilesystemPlan(PAIR, src, dst, plan.plan_filesystem(src, dst, NAMING, bookmarks=marks),
                        bookmarks=marks, held_source=frozenset({seq(1)}),
                        held_destination=frozenset({seq(1)}), **extra)
    return _pruned(fp)


def _pruned(fp: FilesystemPlan) -> FilesystemPlan:
    """`fp` with what retention destroys once its sends went as planned."""
    src, dst = retention_after(Replication.forward(SVC), fp, sent_ok=True)
    return dataclasses.replace(fp, destroy_source=src, destroy_destination=dst)


def test_the_base_moves_on_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    c, src, dst = make_cycle(monkeypatch, ALL, ALL)
    fp = the_plan()
    assert fp.destroy_source == (seq(1),) and fp.destroy_destination == (seq(1),)
    assert c.send_and_prune(CyclePlan(Replication.forward(SVC), seq(2), [fp])) is False
    sent = [x for x in src.calls if x[0] == "send"]
    assert sent == [("send", plan.Send(seq(2), seq(1)), {"raw": False, "compressed": True})]
    assert ("receive", DST_FS, {"incremental": True, "resumable": True, "readonly": True}) \
        in dst.calls
    for side, fs in ((src, SRC_FS), (dst, DST_FS)):
        rest = [x for x in side.calls if x[0] not in ("send", "receive")]
        assert rest[:2] == [("hold", TAG, f"{fs}@{seq(2)}"), ("release", TAG, f"{fs}@{seq(1)}")]
        assert rest[-1] == ("destroy", fs, seq(1))
    assert ("bookmark", SRC_FS, seq(2)) in src.calls
    assert ("destroy_bookmark", SRC_FS, seq(1)) in src.calls


def test_an_encrypted_filesystem_is_sent_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    c, src, _ = make_cycle(monkeypatch, ALL, ALL)
    c.send(the_plan(encrypted=True))
    assert [x[2] for x in src.calls if x[0] == "send"] == [{"raw": True, "compressed": False}]


def test_nothing_of_it_on_zfs_fuse(monkeypatch: pytest.MonkeyPatch) -> None:
    c, src, dst = make_cycle(monkeypatch, NONE, NONE)
    src_snaps = [own(1, 101, 10), own(2, 102, 20)]
    dst_snaps = received([own(1, 101, 10)])
    fp = _pruned(FilesystemPlan(PAIR, src_snaps, dst_snaps,
                                plan.plan_filesystem(src_snaps, dst_snaps, NAMING)))
    c.send_and_prune(CyclePlan(Replication.forward(SVC), seq(2), [fp]))
    assert [x[0] for x in src.calls] == ["send", "destroy"]
    assert [x[0] for x in dst.calls] == ["receive", "destroy"]
    assert dst.calls[0][2] == {"incremental": True, "resumable": False, "readonly": False}
    assert src.calls[0][2] == {"raw": False, "compressed": False}


def test_a_failed_send_releases_only_what_it_destroys(monkeypatch: pytest.MonkeyPatch) -> None:
    def cut(*a: Any, **k: Any) -> TransferResult:
        raise CommandError("cut", stderr="Connection reset")

    c, src, dst = make_cycle(monkeypatch, ALL, ALL, pipe=cut)
    fp = the_plan()
    with pytest.raises(CommandError):
        c.send_and_prune(CyclePlan(Replication.forward(SVC), seq(2), [fp]))
    # the base @1 stays held and kept; nothing is bookmarked or destroyed
    assert not [x for x in src.calls + dst.calls
                if x[0] in ("hold", "release", "bookmark", "destroy")]
    failed = after_filesystem(Replication.forward(SVC), fp, sent_ok=False)
    assert (failed.destroy_source, failed.destroy_destination, failed.base) == ((), (), None)


def resume_plan() -> FilesystemPlan:
    src = [own(1, 101, 10), own(2, 102, 20)]
    dst = received([own(1, 101, 10)])
    return _pruned(FilesystemPlan(PAIR, src, dst, plan.plan_filesystem(src, dst, NAMING,
                                                                        resume_token="1-tok")))


def test_a_resumed_stream_asks_for_another_look(monkeypatch: pytest.MonkeyPatch) -> None:
    c, src, dst = make_cycle(monkeypatch, ALL, ALL)
    fp = resume_plan()
    assert fp.destroy_source == () and fp.destroy_destination == ()
    assert c.send(fp) is True
    assert src.calls[0][1] == plan.Send(target="", token="1-tok")
    # a resumed stream is received as it was started: no -F, no -o
    assert dst.calls[0] == ("receive", DST_FS,
                            {"incremental": False, "resumable": True, "readonly": False})


def test_a_token_that_cannot_be_resumed_is_discarded(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    def stale(*a: Any, **k: Any) -> TransferResult:
        # what the transfer raises when zfs says so (tests/unit/test_zfserrors.py)
        raise TransferNotResumable("failed", argv=[], returncode=1, sent=None,
                                   stderr="cannot resume send: 'fs@2' used in the initial "
                                   "send no longer exists\n")

    c, _, dst = make_cycle(monkeypatch, ALL, ALL, pipe=stale)
    assert c.send(resume_plan()) is True
    assert ("abort", DST_FS) in dst.calls
    assert any(r.levelname == "WARNING" and "cannot be resumed" in r.message
               for r in caplog.records)


def test_a_resumed_stream_cut_again_fails_the_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    def cut(*a: Any, **k: Any) -> TransferResult:
        raise CommandError("failed", stderr="\nbroken pipe")

    c, _, dst = make_cycle(monkeypatch, ALL, ALL, pipe=cut)
    with pytest.raises(CommandError):
        c.send(resume_plan())
    assert ("abort", DST_FS) not in dst.calls


def test_replicating_back_leaves_the_original_source_writable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c, _, _ = make_cycle(monkeypatch, ALL, ALL)
    assert c._readonly_replica(ALL)
    assert not c._readonly_replica(NONE)
    c.rep = Replication.failback(dataclasses.replace(SVC, role="destination"))
    assert not c._readonly_replica(ALL)


def test_the_new_snapshot_is_newer_than_every_bookmark() -> None:
    # every snapshot of the source destroyed; the bookmark of the last one remains
    marks = (Snapshot(SRC_FS, seq(2), 102, 20),)
    src = with_new_snapshot([], SRC_FS, seq(3), marks)
    assert src[0].createtxg == 21
    dst = received([own(2, 102, 20)])
    p = plan.plan_filesystem(src, dst, NAMING, bookmarks=marks)
    assert p.sends == (plan.Send(target=seq(3), base=seq(2), bookmark=True),)


class ManyDestroys(FakeZfs):
    """A destination whose agent takes destroy-many: each FS@SNAP's outcome from
    `outcomes` (default: destroyed); its release fails where `release_fails`."""

    def __init__(self, label: str, caps: Capabilities) -> None:
        super().__init__(label, caps)
        self.outcomes: dict[str, CommandError] = {}
        self.release_fails = False

    def takes_many_destroys(self, count: int) -> bool:
        return count > 1

    def destroy_snapshots(self, names: list[str]) -> list[CommandError | None]:
        self.calls.append(("destroy_snapshots", *names))
        return [self.outcomes.get(n) for n in names]

    def release(self, tag: str, snapshots: list[str]) -> None:
        if self.release_fails:
            raise CommandError("dst: cannot release: permission denied")
        super().release(tag, snapshots)


OTHER = FilesystemPair("tank/src/other", "backup/dst/other")


def test_the_destinations_destroys_go_together_and_fail_nothing(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    c, _, _ = make_cycle(monkeypatch, ALL, ALL)
    dst = c.dst = ManyDestroys("dst", ALL)  # type: ignore[assignment]
    jobs = [Prune(PAIR, (), (seq(1), seq(2)), frozenset(), frozenset({seq(2)})),
            Prune(OTHER, (), (seq(1),), frozenset(), frozenset())]
    dst.outcomes[f"{DST_FS}@{seq(1)}"] = HasClones("dst: has dependent clones")
    dst.outcomes[f"{OTHER.destination}@{seq(1)}"] = CommandError("dst: out of luck")
    caplog.set_level(logging.INFO, logger="zfsrepl")
    executor.prune_together(c.hosts, jobs, source=False)
    # the service's own hold released first, then one request for all three
    assert dst.calls == [("release", TAG, f"{DST_FS}@{seq(2)}"),
                         ("destroy_snapshots", f"{DST_FS}@{seq(1)}", f"{DST_FS}@{seq(2)}",
                          f"{OTHER.destination}@{seq(1)}")]
    logged = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.INFO, f"kept {DST_FS}@{seq(1)} on dst: a clone of it exists (a diverged "
                          "replica renamed aside?)") in logged
    assert (logging.INFO, f"destroyed {DST_FS}@{seq(2)} on dst") in logged
    assert (logging.WARNING, f"retention on {OTHER.source}: dst: out of luck") in logged
    # a release that fails: what it still holds is kept for now, the rest goes
    dst.calls.clear()
    dst.release_fails = True
    executor.prune_together(c.hosts, jobs, source=False)
    assert dst.calls == [("destroy_snapshots", f"{DST_FS}@{seq(1)}",
                          f"{OTHER.destination}@{seq(1)}")]
