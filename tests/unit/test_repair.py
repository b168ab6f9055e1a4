"""The repair that keeps a diverged replica (repair.py) and how doctor offers it: first,
as the default of --fix; the destructive repair only with --destroy."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from zfsrepl import doctor, executor, repair
from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.cyclehosts import CycleEvents, CycleHosts
from zfsrepl.diagnosis import Chains, DestroySnapshot, Kind, Rollback, Side, diagnose
from zfsrepl.errors import UsageError, ZfsreplError
from zfsrepl.executor import Prune
from zfsrepl.replication import Replication
from zfsrepl.snapshots import Snapshot
from zfsrepl.transfer import TransferResult
from zfsrepl.zfserrors import DatasetBusy, HasClones, PermissionDenied

from .fakes import FnStreams
from .helpers import DST_FS, NAMING, SRC_FS, other, own, received, seq

WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
ASIDE = f"{DST_FS}.diverged-20260304-050607"
SND, RCV = Side("source", "srchost", "src"), Side("destination", "dsthost", "dst")


def chains(sending: list[Snapshot], receiving: list[Snapshot], **facts: Any) -> Chains:
    return Chains(SRC_FS, DST_FS, sending, receiving, sending_side=SND, receiving_side=RCV,
                  **facts)


def diverged(extra_name: str | None = None) -> Chains:
    """@1 @2 on both sides, then a snapshot made on the receiving side only."""
    src = [own(1, 11, 1), own(2, 12, 2)]
    rcv = received(src)
    rcv.append(Snapshot(DST_FS, extra_name or seq(3), 999, 2000))
    return chains([*src, own(3, 13, 3)], rcv)


def offered(c: Chains, readonly: bool = False) -> repair.RenameAside | None:
    return repair.offer(c, diagnose(c, NAMING, "svc"), NAMING, WHEN, readonly=readonly)


@pytest.mark.parametrize("extra", [None, "made-by-hand"])
def test_a_diverged_replica_is_set_aside_at_the_common_snapshot(extra: str | None) -> None:
    # own or foreign, the extra snapshot is kept (the destructive repair refuses foreign)
    c = diverged(extra)
    assert diagnose(c, NAMING, "svc").kind is Kind.RECEIVER_HAS_EXTRA
    assert offered(c) == repair.RenameAside("receiving", DST_FS, ASIDE, seq(2), False)


def test_a_replica_written_since_its_snapshot_is_set_aside_too() -> None:
    src = [own(1, 11, 1), own(2, 12, 2)]
    c = chains(src, received(src), receiving_written=4096)
    assert diagnose(c, NAMING, "svc").kind is Kind.RECEIVER_MODIFIED
    assert offered(c, readonly=True) == repair.RenameAside("receiving", DST_FS, ASIDE,
                                                          seq(2), True)


def test_no_offer_where_nothing_diverged_or_no_own_common_snapshot() -> None:
    src = [own(1, 11, 1), own(2, 12, 2)]
    assert offered(chains(src, received(src))) is None  # up to date
    assert offered(chains(src, received(src[:1]))) is None  # sender ahead
    assert offered(chains(src, [Snapshot(DST_FS, seq(1), 555, 1)])) is None  # no common
    # the common snapshot is not the service's: the agent clones only from its own
    mixed = [own(1, 11, 1), other("by-hand", 20, 2)]
    rcv = [*received(mixed), Snapshot(DST_FS, seq(5), 999, 2000)]
    assert offered(chains([*mixed, own(3, 13, 3)], rcv)) is None


def test_the_commands_by_hand() -> None:
    r = repair.RenameAside("receiving", "pool/dst/fs 1", "pool/dst/fs 1.diverged-x", seq(2),
                           True)
    assert repair.commands(r) == (
        "zfs rename 'pool/dst/fs 1' 'pool/dst/fs 1.diverged-x'",
        f"zfs clone -o readonly=on 'pool/dst/fs 1.diverged-x@{seq(2)}' 'pool/dst/fs 1'",
        "zfs promote 'pool/dst/fs 1'")


class FakeZfs:
    label = "dst@dsthost"

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.fail = fail or {}
        self.calls: list[tuple[Any, ...]] = []

    def _call(self, *call: Any) -> None:
        self.calls.append(call)
        if call[0] in self.fail:
            raise self.fail[call[0]]

    def rename(self, fs: str, new: str) -> None:
        self._call("rename", fs, new)

    def clone(self, snapshot: str, fs: str, *, readonly: bool = False) -> None:
        self._call("clone", snapshot, fs, readonly)

    def promote(self, fs: str) -> None:
        self._call("promote", fs)


R = repair.RenameAside("receiving", DST_FS, ASIDE, seq(2), True)


def test_apply_renames_clones_and_promotes_in_that_order() -> None:
    zfs = FakeZfs()
    done = repair.apply(R, zfs)  # type: ignore[arg-type]
    assert zfs.calls == [("rename", DST_FS, ASIDE), ("clone", f"{ASIDE}@{seq(2)}", DST_FS, True),
                         ("promote", DST_FS)]
    assert done[0] == f"renamed {DST_FS} to {ASIDE} on dst@dsthost" and len(done) == 3


def test_a_busy_replica_is_left_as_it_was_with_what_to_do() -> None:
    zfs = FakeZfs({"rename": DatasetBusy("busy")})
    with pytest.raises(ZfsreplError) as exc:
        repair.apply(R, zfs)  # type: ignore[arg-type]
    assert f"unmount it (zfs unmount {DST_FS})" in str(exc.value)
    assert "nothing was changed" in str(exc.value)
    assert [c[0] for c in zfs.calls] == ["rename"]


def test_missing_rights_after_the_rename_say_how_to_finish_or_undo() -> None:
    zfs = FakeZfs({"clone": PermissionDenied("dst@dsthost: cannot create: permission denied")})
    with pytest.raises(ZfsreplError) as exc:
        repair.apply(R, zfs)  # type: ignore[arg-type]
    text = str(exc.value)
    assert f"renamed {DST_FS} to {ASIDE}" in text
    assert "zfs allow -u USER rename,clone,promote" in text
    assert f"zfs clone -o readonly=on {ASIDE}@{seq(2)} {DST_FS}; zfs promote {DST_FS}" in text
    assert f"undo: zfs rename {ASIDE} {DST_FS}" in text
    assert "Nothing is lost" in text
    zfs = FakeZfs({"promote": ZfsreplError("dst@dsthost: cannot promote")})
    with pytest.raises(ZfsreplError) as exc:
        repair.apply(R, zfs)  # type: ignore[arg-type]
    assert f"undo: zfs destroy {DST_FS}; zfs rename {ASIDE} {DST_FS}" in str(exc.value)


def report(c: Chains) -> doctor.Report:
    svc = Service(name="svc", source=Endpoint("srchost", "src"),
                  destination=Endpoint("dsthost", "dst"),
                  filesystems=(FilesystemPair(SRC_FS, DST_FS),))
    rep = doctor.Report(Replication.forward(svc))
    f = diagnose(c, NAMING, "svc")
    rep.findings.append(("fs", f))
    aside = repair.offer(c, f, NAMING, WHEN, readonly=False)
    if aside is not None:
        rep.asides["fs"] = aside
    return rep


def test_doctor_offers_the_rename_first_and_destroys_only_when_asked() -> None:
    rep = report(diverged())
    aside = rep.asides["fs"]
    assert rep.repairs() == [aside]
    assert rep.repairs(destroy=True) == [DestroySnapshot("receiving", DST_FS, seq(3)),
                                         Rollback("receiving", DST_FS, seq(2))]
    lines = rep.lines()
    keep = next(i for i, ln in enumerate(lines) if "keeps what was written" in ln)
    discard = next(i for i, ln in enumerate(lines) if "--fix --destroy" in ln)
    assert keep < discard
    assert f"  fix: on dsthost: zfs rename {DST_FS} {ASIDE}" in lines
    assert not rep.unfixed() and not rep.unfixed(destroy=True)


def test_a_foreign_extra_snapshot_is_repaired_only_by_the_rename() -> None:
    rep = report(diverged("made-by-hand"))
    assert rep.repairs() == [rep.asides["fs"]]
    assert rep.repairs(destroy=True) == []
    assert rep.unfixed(destroy=True) and not rep.unfixed()


class RecordingZfs:
    label = "dst"

    def __init__(self, clones: set[str]) -> None:
        self.clones = clones
        self.destroyed: list[str] = []

    def destroy_snapshot(self, fs: str, name: str) -> None:
        if name in self.clones:
            raise HasClones(f"dst: cannot destroy '{fs}@{name}': snapshot has dependent clones")
        self.destroyed.append(name)

    def release(self, tag: str, snapshots: list[str]) -> None:
        pass


def _no_stream(*a: Any, **kw: Any) -> TransferResult:
    raise AssertionError("no stream here")


def test_retention_keeps_the_origin_of_a_set_aside_replica_and_prunes_the_rest() -> None:
    src, dst = RecordingZfs(set()), RecordingZfs({seq(2)})
    svc = Service(name="svc", source=Endpoint("srchost", "src"),
                  destination=Endpoint("dsthost", "dst"),
                  filesystems=(FilesystemPair(SRC_FS, DST_FS),))
    hosts = CycleHosts(Replication.forward(svc), src, dst,  # type: ignore[arg-type]
                       "zfsrepl-svc", CycleEvents(), FnStreams(_no_stream))
    executor.prune(hosts, Prune(FilesystemPair(SRC_FS, DST_FS), (), (seq(1), seq(2), seq(3)),
                                frozenset(), frozenset()))
    assert dst.destroyed == [seq(1), seq(3)]


def test_destroy_needs_fix(tmp_path: Path) -> None:
    from zfsrepl.cli import doctor as cli_doctor

    args = argparse.Namespace(name="svc", fix=False, destroy=True, yes=True)
    with pytest.raises(UsageError, match="--destroy chooses how --fix repairs"):
        cli_doctor.run(args, None)  # type: ignore[arg-type]
