"""`doctor.examine` against simulated ZFS hosts: what it lists and how it reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from zfsrepl import doctor, plan
from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.cycle import Cycle
from zfsrepl.diagnosis import Kind

from .fakes import SimSnap, SimZfs
from .test_capabilities import FUSE, OPENZFS

PAIR = FilesystemPair("tank/src/fs", "backup/dst/fs")
SVC = Service("svc", Endpoint("srchost", "src"), Endpoint("desthost", "dst"), (PAIR,))


def seq(n: int) -> str:
    return SVC.naming.format(n)


def hosts(monkeypatch: pytest.MonkeyPatch, usage: str = OPENZFS) -> tuple[SimZfs, SimZfs]:
    """A source and a destination host, which doctor.examine connects to."""
    src = SimZfs("src@srchost", usage, [PAIR.source], {"tank/src"})
    dst = SimZfs("dst@desthost", usage, [PAIR.destination], {"backup/dst"})
    monkeypatch.setattr(doctor, "LocalHost", lambda label: src)
    monkeypatch.setattr(doctor, "SshHost", lambda endpoint, **kw: dst)
    return src, dst


def examine(tmp_path: Path) -> doctor.Report:
    report, _, _ = doctor.examine(SVC, tmp_path)
    return report


def test_a_source_bookmark_is_a_common_point_not_a_lost_replica(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """@1 was replicated and bookmarked, then destroyed on the source; @2 came after.
    The planner sends `-i #1`; the doctor must say the same, not advise a full resend."""
    src, dst = hosts(monkeypatch)
    src.fs[PAIR.source] = [SimSnap(seq(2), 502, 20)]
    src.marks[PAIR.source] = {seq(1): SimSnap(seq(1), 501, 10)}
    dst.fs[PAIR.destination] = [SimSnap(seq(1), 501, 5)]

    cp = Cycle(SVC, src, dst).survey(take_snapshot=False)
    (fp,) = cp.filesystems
    assert fp.plan == plan.Incremental(base="#" + seq(1), sends=(
        plan.Send(target=seq(2), base=seq(1), bookmark=True),))

    report = examine(tmp_path)
    ((subject, finding),) = report.findings
    assert finding.kind is Kind.SENDER_AHEAD and finding.healthy
    assert f"incrementally from #{seq(1)}" in finding.explanation
    assert "rename" not in finding.explanation
    assert not any("rename" in c for c in finding.commands) and not finding.repairs
    table = report.tables[subject]
    assert table[-1] == f"  newest common snapshot: #{seq(1)} (bookmark)"
    (starred,) = [line for line in table if line.startswith("*")]
    assert f"#{seq(1)} guid=501" in starred and f"@{seq(1)} guid=501" in starred


def test_without_the_bookmark_there_is_no_common_point(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src, dst = hosts(monkeypatch)
    src.fs[PAIR.source] = [SimSnap(seq(2), 502, 20)]
    dst.fs[PAIR.destination] = [SimSnap(seq(1), 501, 5)]
    ((_, finding),) = examine(tmp_path).findings
    assert finding.kind is Kind.NO_COMMON
    assert any("zfs rename" in c for c in finding.commands)


def test_a_cut_receive_is_resumed_first(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    src, dst = hosts(monkeypatch)
    src.fs[PAIR.source] = [SimSnap(seq(1), 501, 10), SimSnap(seq(2), 502, 20)]
    dst.fs[PAIR.destination] = [SimSnap(seq(1), 501, 5)]
    dst.tokens[PAIR.destination] = "1-abc-def"
    assert isinstance(Cycle(SVC, src, dst).survey(take_snapshot=False).filesystems[0].plan,
                      plan.Resume)
    ((_, finding),) = examine(tmp_path).findings
    assert finding.kind is Kind.RESUMING and finding.healthy


def test_no_token_is_asked_for_where_zfs_cannot_resume(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    src, dst = hosts(monkeypatch, FUSE)
    src.fs[PAIR.source] = [SimSnap(seq(1), 501, 10), SimSnap(seq(2), 502, 20)]
    dst.fs[PAIR.destination] = [SimSnap(seq(1), 501, 5)]
    ((_, finding),) = examine(tmp_path).findings
    assert finding.kind is Kind.SENDER_AHEAD
    gets = [c for c in dst.calls if c and c[0] == "get"]
    assert gets and not any("receive_resume_token" in ",".join(c) for c in gets)


def test_a_bookmark_alone_on_the_source_is_still_the_common_point(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every snapshot destroyed on the source, the bookmark of the last replicated one
    kept: nothing to send yet, and the replica is good."""
    src, dst = hosts(monkeypatch)
    src.marks[PAIR.source] = {seq(2): SimSnap(seq(2), 502, 20)}
    dst.fs[PAIR.destination] = [SimSnap(seq(1), 501, 5), SimSnap(seq(2), 502, 6)]
    report = examine(tmp_path)
    assert report.healthy
    text = "\n".join(report.lines())
    assert f"newest common snapshot: #{seq(2)} (bookmark)" in text
    assert "NO COMMON SNAPSHOT" not in text and "zfs rename" not in text
