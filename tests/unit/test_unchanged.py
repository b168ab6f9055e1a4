"""skip_unchanged: the pure decision of which filesystems skip a cycle, and a cycle on a
simulated ZFS with and without the `written` property."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from zfsrepl import cycle as cycle_mod
from zfsrepl import hooks, survey, unchanged
from zfsrepl.config import ConfigError, dump_service, parse_service
from zfsrepl.cycle import replicate
from zfsrepl.metrics import ServiceSample, render
from zfsrepl.service import newest_by_destination
from zfsrepl.state import Newest, ServiceState, from_json, to_json
from zfsrepl.status import filesystem_status
from zfsrepl.zfs import CapabilityCache, Zfs

from .fakes import PAIRS, SVC, MakeWorld, SimZfs, World, world  # noqa: F401
from .helpers import DST_FS, NAMING, SRC_FS, other, own, received, seq
from .test_capabilities import FUSE, OPENZFS

SYNCED = [own(1, 11, 10), own(2, 12, 20)]


# ---------------------------------------------------------------------------- pure


def test_unchanged_when_nothing_written_and_the_destination_holds_the_newest() -> None:
    assert unchanged.is_unchanged(0, SYNCED, received(SYNCED), NAMING)


@pytest.mark.parametrize("written", [None, 1, 4096])
def test_written_unknown_or_not_zero_is_a_change(written: int | None) -> None:
    assert not unchanged.is_unchanged(written, SYNCED, received(SYNCED), NAMING)


def test_a_newer_snapshot_of_another_is_not_skipped() -> None:
    # `written` counts from the administrator's snapshot, not from this service's
    src = [*SYNCED, other("manual", 13, 30)]
    assert not unchanged.is_unchanged(0, src, received(SYNCED), NAMING)


def test_the_destination_must_hold_the_newest_own_snapshot() -> None:
    assert not unchanged.is_unchanged(0, SYNCED, received(SYNCED[:1]), NAMING)
    assert not unchanged.is_unchanged(0, SYNCED, None, NAMING)  # not there yet
    assert not unchanged.is_unchanged(0, [], [], NAMING)  # no snapshot at all


def test_a_diverged_destination_or_a_cut_transfer_is_not_skipped() -> None:
    dst = [*received(SYNCED), other("local", 99, 2000, fs=DST_FS)]
    assert not unchanged.is_unchanged(0, SYNCED, dst, NAMING)
    assert not unchanged.is_unchanged(0, SYNCED, received(SYNCED), NAMING,
                                      resume_token="1-abc")


def test_skipped_picks_each_filesystem_by_its_own_figures() -> None:
    other_src = [own(1, 21, 10, fs="tank/src/b")]
    got = unchanged.skipped(
        {SRC_FS: 0, "tank/src/b": 512},
        {SRC_FS: SYNCED, "tank/src/b": other_src},
        {DST_FS: received(SYNCED), "backup/dst/b": received(other_src, fs="backup/dst/b")},
        [(SRC_FS, DST_FS), ("tank/src/b", "backup/dst/b")], NAMING)
    assert got == frozenset({SRC_FS})


def test_parse_written() -> None:
    text = f"{SRC_FS}\t0\ntank/src/b\t8192\ntank/src/c\t-\nsomething else\n"
    assert unchanged.parse_written(text, [SRC_FS, "tank/src/b", "tank/src/c", "tank/x"]) == {
        SRC_FS: 0, "tank/src/b": 8192, "tank/src/c": None, "tank/x": None}


# ---------------------------------------------------------------------------- config


def _definition(**extra: object) -> dict[str, object]:
    return {"name": "svc", "source": {"host": "a", "user": "src"},
            "destination": {"host": "b", "user": "dst"},
            "filesystem": [{"source": "tank/a", "destination": "backup/a"}], **extra}


def test_skip_unchanged_is_off_unless_asked_for() -> None:
    assert parse_service(_definition()).skip_unchanged is False
    svc = parse_service(_definition(skip_unchanged=True))
    assert svc.skip_unchanged is True
    import tomllib

    assert parse_service(tomllib.loads(dump_service(svc))) == svc


@pytest.mark.parametrize("value", ["yes", "true", 1])
def test_skip_unchanged_must_be_a_boolean(value: object) -> None:
    with pytest.raises(ConfigError, match=r"skip_unchanged: .* is not valid; expected true or "
                                          r"false \(without quotes\)"):
        parse_service(_definition(skip_unchanged=value))


# ---------------------------------------------------------------------------- a cycle


class WrittenZfs(SimZfs):
    """A simulated ZFS that has the `written` property (`has_written`): what each
    filesystem has written since its newest snapshot is set by the test."""

    def __init__(self, *args: object, has_written: bool = True) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.has_written = has_written
        self.written: dict[str, int] = {}

    def _get(self, a: list[str]) -> tuple[int, str, str]:
        if a[:5] != ["-H", "-p", "-o", "name,value", "written"]:
            return super()._get(a)
        if not self.has_written:
            return 2, "", "bad property list: invalid property 'written'\nusage: ..."
        return 0, "\n".join(f"{fs}\t{self.written.get(fs, 0)}" for fs in a[5:]), ""

    def _snapshot(self, a: list[str]) -> tuple[int, str, str]:
        for x in a:
            self.written[x.partition("@")[0]] = 0  # written counts from here
        return super()._snapshot(a)


SKIP = dataclasses.replace(SVC, skip_unchanged=True, keep_source=2, keep_destination=2)


def _world(make: MakeWorld, usage: str, has_written: bool = True
           ) -> tuple[World, WrittenZfs]:
    w = make(usage)
    w.src = src = WrittenZfs("src@srchost", usage, [p.source for p in PAIRS], {"tank/src"},
                       has_written=has_written)
    return w, src


def _names(side: SimZfs, fs: str) -> list[str]:
    return [s.name for s in side.fs[fs]]


def test_only_changed_filesystems_get_a_snapshot_send_and_destroy(
        world: MakeWorld, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    w, src = _world(world, OPENZFS)
    replicate(SKIP, w.src, w.dst, sleep=lambda s: None, capabilities=w.cache,
              streams=w.streams)
    assert all(_names(w.dst, p.destination) == [seq(1)] for p in PAIRS)
    changed = PAIRS[3].source
    src.written[changed] = 4096
    caplog.set_level(logging.INFO, logger="zfsrepl")
    start = len(w.src.calls)
    cp = replicate(SKIP, w.src, w.dst, sleep=lambda s: None, capabilities=w.cache,
                   streams=w.streams)
    calls = w.src.calls[start:]
    # one call reads `written` for all the candidates
    assert [c for c in calls if "written" in c] == [
        ["get", "-H", "-p", "-o", "name,value", "written", *sorted(p.source for p in PAIRS)]]
    assert [c for c in calls if c[0] == "snapshot"] == [["snapshot", f"{changed}@{seq(2)}"]]
    assert [c[-1] for c in calls if c[0] == "send"] == [f"{changed}@{seq(2)}"]
    assert cp.skipped == frozenset(p.source for p in PAIRS if p.source != changed)
    assert cp.unchanged_at is not None
    for p in PAIRS:
        want = [seq(1), seq(2)] if p.source == changed else [seq(1)]
        assert _names(w.src, p.source) == want and _names(w.dst, p.destination) == want
    assert "skip_unchanged: 4 of 5 filesystem(s) unchanged" in caplog.text
    # nothing at all changed: no snapshot, no send, no destroy anywhere
    first_src, first_dst = len(w.src.calls), len(w.dst.calls)
    cp = replicate(SKIP, w.src, w.dst, sleep=lambda s: None, capabilities=w.cache,
                   streams=w.streams)
    assert cp.snapshot is None and len(cp.skipped) == len(PAIRS)
    done = {c[0] for c in w.src.calls[first_src:] + w.dst.calls[first_dst:]}
    assert not done & {"snapshot", "send", "receive", "destroy", "hold", "release", "bookmark"}


def test_without_skip_unchanged_every_filesystem_gets_its_snapshot(
        world: MakeWorld) -> None:  # noqa: F811
    w, _ = _world(world, OPENZFS)
    svc = dataclasses.replace(SKIP, skip_unchanged=False)
    for n in (1, 2):
        replicate(svc, w.src, w.dst, sleep=lambda s: None, capabilities=w.cache,
                  streams=w.streams)
        assert all(_names(w.dst, p.destination)[-1] == seq(n) for p in PAIRS)
    assert not any("written" in c for c in w.src.calls)


def test_without_written_the_key_has_no_effect_and_says_so_once(
        world: MakeWorld, caplog: pytest.LogCaptureFixture,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    w, _ = _world(world, FUSE, has_written=False)
    monkeypatch.setattr(survey, "_SAID_NO_WRITTEN", set())
    caplog.set_level(logging.INFO, logger="zfsrepl")
    for n in (1, 2, 3):
        replicate(SKIP, w.src, w.dst, sleep=lambda s: None, capabilities=w.cache,
                  streams=w.streams)
        assert all(_names(w.dst, p.destination)[-1] == seq(n) for p in PAIRS)
    # asked once; the answer is kept with the host's other probes
    assert sum("written" in c for c in w.src.calls) == 1
    w.cache.clear()  # as after a failed attempt: asked again, but not said again
    replicate(SKIP, w.src, w.dst, sleep=lambda s: None, capabilities=w.cache,
              streams=w.streams)
    assert sum("written" in c for c in w.src.calls) == 2
    said = [r for r in caplog.records if "skip_unchanged has no effect" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert "has no 'written' property" in said[0].getMessage()


def test_a_failed_attempt_asks_for_written_again() -> None:
    cache = CapabilityCache()
    host = WrittenZfs("src@srchost", FUSE, [SRC_FS], set(), has_written=False)
    zfs = Zfs(host, ["zfs"], cache)
    assert zfs.written([SRC_FS]) is None and zfs.written([SRC_FS]) is None
    assert len(host.calls) == 1  # known from then on
    assert Zfs(host, ["zfs"], cache).written([SRC_FS]) is None and len(host.calls) == 1
    zfs.forget_capabilities()  # what a failed attempt does
    host.has_written = True
    assert zfs.written([SRC_FS]) == {SRC_FS: 0} and len(host.calls) == 2


# ---------------------------------------------------------------------------- in sync


def test_an_unchanged_filesystem_shows_no_growing_lag() -> None:
    old = Newest(seq(2), creation=1000, unchanged_at=5000)
    st = ServiceState(newest={DST_FS: old})
    assert from_json(to_json(st)).newest == st.newest
    text = render([ServiceSample("svc", "online", st, [(SRC_FS, DST_FS)])], now=5010.0)
    assert 'zfsrepl_lag_seconds{service="svc",filesystem="tank/src/fs",' \
           'destination="backup/dst/fs"} 10' in text
    fs = filesystem_status(PAIRS[0], NAMING, SYNCED, received(SYNCED), True,
                           Newest(seq(2), 20, unchanged_at=5000), now=5010.0)
    assert fs.lag_seconds == 10.0
    # a cached entry of an older snapshot does not stand for the newer one listed
    fs = filesystem_status(PAIRS[0], NAMING, SYNCED, received(SYNCED), True,
                           Newest(seq(1), 10, unchanged_at=5000), now=5010.0)
    assert fs.lag_seconds == 5010.0 - received(SYNCED)[-1].creation
    assert newest_by_destination(NAMING, {DST_FS: received(SYNCED)})[DST_FS].unchanged_at is None


def test_dry_run_and_hooks_name_only_the_changed_filesystems(
        world: MakeWorld, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    w, src = _world(world, OPENZFS)
    replicate(SKIP, w.src, w.dst, sleep=lambda s: None, capabilities=w.cache,
              streams=w.streams)
    changed = PAIRS[1].source
    src.written[changed] = 1
    ran: list[dict[str, str]] = []
    monkeypatch.setattr(hooks, "run_hook",
                        lambda key, path, env, timeout: ran.append(env))
    monkeypatch.setattr(hooks, "check_executable", lambda *args: None)
    svc = dataclasses.replace(SKIP, pre_snapshot="/pre", post_snapshot="/post")
    shown = "\n".join(cycle_mod.dry_run(svc, w.src, w.dst).describe())
    assert f"{PAIRS[0].source} -> {PAIRS[0].destination}: unchanged since @{seq(1)}: " \
           "no snapshot (skip_unchanged)" in shown
    assert f"snapshot @{seq(2)} of: {changed}\n" in shown
    replicate(svc, w.src, w.dst, sleep=lambda s: None, capabilities=w.cache,
              streams=w.streams)
    assert [e["ZFSREPL_FILESYSTEMS"] for e in ran] == [changed, changed]
    ran.clear()
    replicate(svc, w.src, w.dst, sleep=lambda s: None, capabilities=w.cache,
              streams=w.streams)
    assert ran == []  # nothing changed: no snapshot, so no hook
