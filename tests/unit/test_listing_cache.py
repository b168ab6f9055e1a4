"""The listing cache (listing_cache.py): its pure decisions, and whole cycles on a
simulated ZFS with `snapshots_changed` on each side, where what the cache keeps is
compared with what a full listing shows."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from zfsrepl import config, plan
from zfsrepl import cycle as cycle_mod
from zfsrepl import listing_cache as lc
from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.cycle import CycleEvents, replicate
from zfsrepl.errors import CommandError, ConfigError, ZfsreplError
from zfsrepl.snapshots import Snapshot
from zfsrepl.transfer import TransferResult
from zfsrepl.zfs import CapabilityCache, FsState, Zfs

from .fakes import SimSnap, SimZfs
from .test_capabilities import FUSE, OPENZFS

PAIRS = (FilesystemPair("tank/src/a", "backup/dst/a"),
         FilesystemPair("tank/src/b", "backup/dst/b"))
SVC = Service(name="batch", source=Endpoint("srchost", "src"),
              destination=Endpoint("desthost", "dst"), filesystems=PAIRS, keep_source=3,
              keep_destination=4, retry_delay=0.0)
NAMING = SVC.naming
A, B = PAIRS


def seq(n: int) -> str:
    return NAMING.format(n)


def snap(fs: str, n: int, guid: int, txg: int, refs: int = 0) -> Snapshot:
    return Snapshot(fs, seq(n), guid, txg, txg, refs)


# ---------------------------------------------------------------------------- decisions


def test_a_kept_listing_is_used_only_while_its_value_holds_and_not_too_long() -> None:
    entry = lc.Entry(changed=100, listed_at=1000.0, snapshots=())
    assert lc.reusable(entry, 100, 1000.0 + lc.TRUST_SECONDS - 1)
    assert not lc.reusable(entry, 101, 1001.0)  # a snapshot changed since
    assert not lc.reusable(entry, None, 1001.0)  # ZFS gave no value
    assert not lc.reusable(None, 100, 1001.0)
    assert not lc.reusable(entry, 100, 1000.0 + lc.TRUST_SECONDS)  # listed too long ago
    assert not lc.reusable(entry, 100, 999.0)  # the clock went back


def test_what_a_cycle_did_is_applied_to_its_listing() -> None:
    fs = "tank/src/a"
    before = (snap(fs, 1, 11, 5, refs=1), snap(fs, 2, 12, 6))
    marks = (Snapshot(fs, seq(1), 11, 5, 5),)
    journal = [("snapshot", f"{fs}@{seq(3)}"), ("snapshot", f"tank/src/b@{seq(3)}"),
               ("hold", f"{fs}@{seq(3)}"), ("release", f"{fs}@{seq(1)}"),
               ("bookmark", f"{fs}#{seq(3)}"), ("destroy", f"{fs}#{seq(1)}"),
               ("destroy", f"{fs}@{seq(1)}")]
    # read back after the cycle: its holds are already counted
    taken = {f"{fs}@{seq(3)}": snap(fs, 3, 13, 9, refs=1)}
    result = lc.after_changes(fs, before, marks, lc.changes_of(journal), taken=taken)
    assert result == ((snap(fs, 2, 12, 6), snap(fs, 3, 13, 9, refs=1)),
                      (Snapshot(fs, seq(3), 13, 9, 9),))


def test_what_arrived_on_the_destination_is_added_with_the_senders_guid() -> None:
    fs = "backup/dst/a"
    before = (snap(fs, 1, 11, 50),)
    arrived = [snap("tank/src/a", 2, 12, 6), snap("tank/src/a", 3, 13, 9)]
    got = lc.after_changes(fs, before, (), lc.changes_of([("destroy", f"{fs}@{seq(1)}")]),
                           arrived)
    assert got is not None
    assert [(s.name, s.guid) for s in got[0]] == [(seq(2), 12), (seq(3), 13)]
    assert got[0][0].createtxg > 50  # newer than everything there, as a listing sorts it


@pytest.mark.parametrize("journal, taken", [
    ([("snapshot", f"tank/src/a@{seq(3)}")], {}),  # its GUID was not read back
    ([("other", "tank/src/a")], {}),  # a rollback or receive -A: not predicted
    ([("bookmark", f"tank/src/a#{seq(9)}")], {}),  # of a snapshot not known
])
def test_what_cannot_be_told_is_not_kept(journal: list[tuple[str, str]],
                                         taken: dict[str, Snapshot]) -> None:
    fs = "tank/src/a"
    assert lc.after_changes(fs, (snap(fs, 1, 11, 5),), (), lc.changes_of(journal),
                            taken=taken) is None


def test_only_an_ordinary_chain_is_decided_on_the_caches_word() -> None:
    def state(*snaps: Snapshot) -> FsState:
        return FsState(snapshots=list(snaps))

    s_a, d_a = "tank/src/a", "backup/dst/a"
    src = {s_a: state(snap(s_a, 1, 11, 5), snap(s_a, 2, 12, 6))}
    behind = {d_a: state(snap(d_a, 1, 11, 50))}
    cached = {("destination", d_a)}
    assert lc.doubtful([A], src, behind, cached, NAMING) == []
    assert lc.doubtful([A], src, {d_a: state(snap(d_a, 1, 11, 50), snap(d_a, 2, 12, 51))},
                       cached, NAMING) == []  # up to date
    for odd in ({d_a: state(snap(d_a, 1, 99, 50))},  # no common snapshot by GUID
                {d_a: state(snap(d_a, 1, 11, 50), snap(d_a, 3, 77, 52))},  # diverged
                {d_a: FsState(snapshots=[snap(d_a, 1, 11, 50)], resume_token="1-x")},
                {d_a: None}):
        assert lc.doubtful([A], src, odd, cached, NAMING) == [A], odd
    # nothing from the cache: whatever the chain, the cycle decides on a full listing
    assert lc.doubtful([A], src, {d_a: None}, set(), NAMING) == []


def test_the_file_round_trips_and_anything_else_is_refused() -> None:
    kept = lc.Kept({"service": "batch"})
    kept.entries["source"]["tank/src/a"] = lc.Entry(
        7, 1000.5, (snap("tank/src/a", 1, 11, 5, refs=1),),
        (Snapshot("tank/src/a", "m", 11, 5, 5),))
    assert lc.decode(lc.encode(kept)) == kept
    good = json.loads(lc.encode(kept))
    for bad in ("", "[]", "{", json.dumps({**good, "version": 99}),
                json.dumps({**good, "source": {"tank/src/a": {"changed": "7"}}}),
                json.dumps({**good, "source": {"tank/src/a": {
                    **good["source"]["tank/src/a"], "snapshots": [["x", None, 1, 1, 0]]}}}),
                json.dumps({k: v for k, v in good.items() if k != "destination"})):
        with pytest.raises(ValueError):
            lc.decode(bad)


def test_the_key_changes_with_the_filesystems_and_the_hosts() -> None:
    key = lc.cache_key(SVC, ["src@h", None, ["zfs"]], ["dst@d", 22, ["zfs"]])
    assert key != lc.cache_key(dataclasses.replace(SVC, filesystems=PAIRS[:1]),
                               ["src@h", None, ["zfs"]], ["dst@d", 22, ["zfs"]])
    assert key != lc.cache_key(SVC, ["src@h", None, ["zfs"]], ["dst@e", 22, ["zfs"]])


# ---------------------------------------------------------------------------- whole cycles


class SimChanged(SimZfs):
    """SimZfs with `snapshots_changed`: a tick of its own clock at every snapshot
    created or destroyed (received ones too, see `received`)."""

    def __init__(self, *args: Any, has_property: bool = True) -> None:
        super().__init__(*args)
        self.has_property = has_property
        self.refuse_look = False  # as the agent of an older zfsrepl
        self.refuse_after = False  # as a zfs wrapper: no get of snapshots by name
        self.roles: dict[str, str] = {}  # zfsrepl:role, set without touching a snapshot
        self.order: list[str] | None = None  # both hosts' calls in order, where shared
        self.clock = 1_700_000_000
        self.changed: dict[str, int] = {}
        self.full_listings = 0

    def run(self, argv: list[str], **kw: Any) -> Any:
        if self.order is not None:
            self.order.append(f"{self.label} {' '.join(argv[1:2])}")
        return super().run(argv, **kw)

    def touch(self, fs: str) -> None:
        self.clock += 1
        self.changed[fs] = self.clock

    def _get(self, a: list[str]) -> tuple[int, str, str]:
        if "-r" in a:
            self.full_listings += 1
            return super()._get(a)
        props, names = a[3].split(","), a[4:]
        if "snapshots_changed" in props and not self.has_property:
            return 2, "", "bad property list: invalid property 'snapshots_changed'"
        if self.refuse_look or (self.refuse_after and any("@" in n for n in names)):
            return 126, "", "zfsrepl agent: refused: zfs get is allowed only as: ..."
        out, err = [], []
        for name in names:
            fs, at, _ = name.partition("@")
            if fs not in self.fs or (at and self.find(name) is None):
                err.append(f"cannot open '{name}': dataset does not exist")
                continue
            values: dict[str, object]
            if at:
                s = self.find(name)
                assert s is not None
                values = {"guid": s.guid, "createtxg": s.txg, "creation": s.txg,
                          "userrefs": len(s.holds)}
            else:
                values = {"snapshots_changed": self.changed.get(fs, "-"),
                          "zfsrepl:role": self.roles.get(fs, "-"),
                          "receive_resume_token": self.tokens.get(fs, "-"),
                          "encryption": "off"}
            out += [f"{name}\t{p}\t{values.get(p, '-')}" for p in props]
        return (1 if err else 0), "\n".join(out), "\n".join(err)

    def _snapshot(self, a: list[str]) -> tuple[int, str, str]:
        done = super()._snapshot(a)
        for x in a:
            self.touch(x.partition("@")[0])
        return done

    def _destroy(self, a: list[str]) -> tuple[int, str, str]:
        done = super()._destroy(a)
        if "@" in a[0]:
            self.touch(a[0].partition("@")[0])
        return done

    def listed(self, fs: str) -> tuple[list[Snapshot], list[Snapshot]]:
        """What a full listing shows, as the cycle parses it."""
        st = Zfs(self, ["zfs"]).states([fs])[fs]
        assert st is not None
        return st.snapshots, st.bookmarks


class Events(CycleEvents):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def listing_folder(self) -> Path | None:
        return self.folder


@dataclasses.dataclass
class World:
    src: SimChanged
    dst: SimChanged
    folder: Path
    svc: Service = SVC
    cache: CapabilityCache = dataclasses.field(default_factory=CapabilityCache)

    def cycle(self) -> cycle_mod.CyclePlan:
        return replicate(self.svc, self.src, self.dst, sleep=lambda s: None,
                         events=Events(self.folder), capabilities=self.cache)

    def listings(self) -> tuple[int, int]:
        """Full listings on each side during the next cycle."""
        before = self.src.full_listings, self.dst.full_listings
        self.cycle()
        return self.src.full_listings - before[0], self.dst.full_listings - before[1]

    @property
    def file(self) -> Path:
        return self.folder / lc.LISTINGS_FILE

    def kept(self) -> lc.Kept:
        return lc.decode(self.file.read_text())


MakeWorld = Callable[..., World]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MakeWorld:
    # these few snapshots stand for thousands (see test_a_small_service_...)
    monkeypatch.setattr(lc, "MIN_SNAPSHOTS", 0)

    def make(usage: str = OPENZFS, has_property: bool = True) -> World:
        w = World(SimChanged("src@srchost", usage, [p.source for p in PAIRS], {"tank/src"},
                             has_property=has_property),
                  SimChanged("dst@desthost", usage, [], {"backup/dst"},
                             has_property=has_property), tmp_path)

        def pipe(sender: list[str], receiver: list[str], what: str,
                 **kw: Any) -> TransferResult:
            src_fs, _, target = sender[-1].partition("@")
            snaps = w.src.fs[src_fs]
            top = next(s for s in snaps if s.name == target)
            sent = [top]
            for opt in ("-I", "-i"):
                if opt in sender:
                    base = sender[sender.index(opt) + 1].partition("@")[2]
                    low = next(s.txg for s in snaps if s.name == base)
                    sent = [s for s in snaps if low < s.txg <= top.txg] if opt == "-I" \
                        else [top]
            dst_fs = receiver[-1]
            w.dst.fs.setdefault(dst_fs, [])
            w.dst.marks.setdefault(dst_fs, {})
            w.dst.fs[dst_fs] += [SimSnap(s.name, s.guid, w.dst.next_txg()) for s in sent]
            w.dst.touch(dst_fs)
            return TransferResult(0.1, 10)

        monkeypatch.setattr(cycle_mod, "pipe", pipe)
        return w

    return make


def assert_kept_is_what_zfs_shows(w: World) -> None:
    kept = w.kept()
    for side, sim, names in (("source", w.src, [p.source for p in PAIRS]),
                             ("destination", w.dst, [p.destination for p in PAIRS])):
        assert set(kept.entries[side]) == set(names)
        for fs in names:
            entry = kept.entries[side][fs]
            snaps, marks = sim.listed(fs)
            # the destination's createtxg are its own: only their order is kept
            key: Callable[[Snapshot], tuple[object, ...]] = (
                (lambda s: (s.name, s.guid, s.userrefs)) if side == "destination"
                else (lambda s: (s.name, s.guid, s.createtxg, s.userrefs)))
            assert [key(s) for s in entry.snapshots] == [key(s) for s in snaps], (side, fs)
            assert [key(s) for s in entry.bookmarks] == [key(s) for s in marks], (side, fs)
            assert entry.changed == sim.changed[fs]


def test_a_steady_cycle_lists_nothing_in_full_and_keeps_what_zfs_shows(
        world: MakeWorld) -> None:
    w = world()
    assert w.listings() == (1, 1)  # nothing kept yet
    assert_kept_is_what_zfs_shows(w)
    # retention starts destroying at the fourth cycle: still nothing listed in full
    for _ in range(6):
        assert w.listings() == (0, 0)
        assert_kept_is_what_zfs_shows(w)
    for p in PAIRS:
        assert [s.name for s in w.src.fs[p.source]] == [seq(5), seq(6), seq(7)]
        assert [s.name for s in w.dst.fs[p.destination]] == [seq(4), seq(5), seq(6), seq(7)]


@pytest.mark.parametrize("side", ["src", "dst"])
def test_a_snapshot_made_by_hand_between_cycles_is_seen(world: MakeWorld, side: str) -> None:
    w = world()
    w.cycle()
    w.cycle()
    sim = getattr(w, side)
    fs = A.source if side == "src" else A.destination
    sim.fs[fs].append(SimSnap("by-hand", 4242, sim.next_txg()))
    sim.touch(fs)
    if side == "dst":
        # newer than the common snapshot on the replica: a conflict, as without the cache
        with pytest.raises(ZfsreplError, match="by-hand"):
            w.cycle()
        return
    assert w.listings() == (1, 0)
    assert "by-hand" in [s.name for s in w.kept().entries["source"][A.source].snapshots]
    assert_kept_is_what_zfs_shows(w)


@pytest.mark.parametrize("side", ["src", "dst"])
def test_a_snapshot_destroyed_by_hand_between_cycles_is_seen(world: MakeWorld,
                                                             side: str) -> None:
    w = world()
    for _ in range(3):
        w.cycle()
    sim = getattr(w, side)
    fs = A.source if side == "src" else A.destination
    oldest = sim.fs[fs][0]
    assert not oldest.holds
    sim.fs[fs].remove(oldest)
    sim.touch(fs)
    assert w.listings() == ((1, 0) if side == "src" else (0, 1))
    kept = w.kept().entries["source" if side == "src" else "destination"][fs]
    assert oldest.name not in [s.name for s in kept.snapshots]
    assert_kept_is_what_zfs_shows(w)


def test_a_damaged_file_is_ignored_with_one_warning_and_written_again(
        world: MakeWorld, caplog: pytest.LogCaptureFixture) -> None:
    w = world()
    w.cycle()
    w.file.write_bytes(b"\x00garbage{")
    caplog.set_level(logging.WARNING, logger="zfsrepl")
    assert w.listings() == (1, 1)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ignoring the listing cache" in warnings[0], warnings
    assert "Traceback" not in caplog.text
    assert_kept_is_what_zfs_shows(w)
    assert w.listings() == (0, 0)


def test_a_file_for_other_filesystems_is_not_used(world: MakeWorld) -> None:
    w = world()
    w.cycle()
    w.svc = dataclasses.replace(SVC, filesystems=PAIRS[:1])
    assert w.listings() == (1, 1)
    assert set(w.kept().entries["source"]) == {A.source}


def test_a_listing_kept_too_long_is_made_again(world: MakeWorld) -> None:
    w = world()
    w.cycle()
    data = json.loads(w.file.read_text())
    for side in lc.SIDES:
        for entry in data[side].values():
            entry["listed_at"] -= lc.TRUST_SECONDS
    w.file.write_text(json.dumps(data))
    assert w.listings() == (1, 1)
    assert w.listings() == (0, 0)


def test_a_kept_listing_that_no_longer_matches_by_guid_is_listed_again(
        world: MakeWorld) -> None:
    # a replica re-created between cycles with the same snapshot names and the same
    # snapshots_changed value: the chain from the cache is not the ordinary one
    w = world()
    w.cycle()
    w.cycle()
    data = json.loads(w.file.read_text())
    for row in data["destination"][A.destination]["snapshots"]:
        row[1] += 1_000_000
    w.file.write_text(json.dumps(data))
    assert w.listings() == (1, 1)  # both sides of that filesystem, before deciding
    assert_kept_is_what_zfs_shows(w)


def test_a_failed_attempt_leaves_no_listing_behind(world: MakeWorld,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    w = world()
    w.cycle()
    assert w.file.exists()

    def cut(*args: Any, **kw: Any) -> TransferResult:
        raise CommandError("cut", stderr="Connection reset")

    monkeypatch.setattr(cycle_mod, "pipe", cut)
    with pytest.raises(CommandError):
        w.cycle()
    assert not w.file.exists()  # the snapshot it took moved the value anyway


def test_a_resumed_stream_is_not_predicted(world: MakeWorld) -> None:
    w = world()
    w.cycle()
    cp = w.cycle()
    faked = dataclasses.replace(cp.filesystems[0], plan=plan.Resume(token="1-abc"))
    assert lc.arrivals(dataclasses.replace(cp, filesystems=[faked]), {}) == {
        A.destination: None}


def looks(w: World) -> int:
    """The cache's looks (gets of snapshots_changed) on both sides so far."""
    return sum(1 for c in w.src.calls + w.dst.calls
               if c[:1] == ["get"] and "snapshots_changed" in ",".join(c))


def test_without_bookmarks_the_cache_is_not_even_asked_for(world: MakeWorld) -> None:
    w = world(FUSE, has_property=False)  # zfs-fuse, pool v23
    for _ in range(3):
        assert w.listings() == (1, 1)
    assert not w.file.exists()
    assert looks(w) == 0


def test_without_snapshots_changed_the_cache_stays_off(world: MakeWorld) -> None:
    w = world(OPENZFS, has_property=False)  # OpenZFS before 2.2
    for _ in range(3):
        assert w.listings() == (1, 1)
    assert not w.file.exists()
    assert looks(w) == 1  # once for the life of the probes, then not again


def test_a_small_service_lists_in_full_without_looking_until_it_grows(
        world: MakeWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world()
    monkeypatch.setattr(lc, "MIN_SNAPSHOTS", 10)
    assert w.listings() == (1, 1)
    assert w.kept().small and looks(w) == 2  # the first cycle looked, found few
    counts = []
    while True:
        before = looks(w)
        listed = w.listings()
        counts.append(sum(len(v) for v in (*w.src.fs.values(), *w.dst.fs.values())))
        if looks(w) > before:
            break
        assert listed == (1, 1)  # in full, and no look: as without the cache
    # the cycle that looked again came after one whose listing held 10 or more
    assert counts[-2] >= 10 > counts[0]
    assert not w.kept().small
    assert w.listings() == (0, 0)
    assert_kept_is_what_zfs_shows(w)


def test_an_agent_that_refuses_the_look_leaves_the_cache_off(
        world: MakeWorld, caplog: pytest.LogCaptureFixture) -> None:
    w = world()
    w.dst.refuse_look = True
    caplog.set_level(logging.INFO, logger="zfsrepl")
    for _ in range(3):
        assert w.listings() == (1, 1)  # the cycles go on, listing in full
    said = [r.message for r in caplog.records if "update zfsrepl there" in r.message]
    assert len(said) == 1 and "refused" in said[0], said
    assert not w.file.exists()


def test_a_fault_in_keeping_the_listing_fails_no_cycle(
        world: MakeWorld, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    w = world()
    w.cycle()
    original = lc.after_changes

    def broken(*args: Any, **kw: Any) -> None:
        raise KeyError("x")

    monkeypatch.setattr(lc, "after_changes", broken)
    caplog.set_level(logging.WARNING, logger="zfsrepl")
    w.cycle()  # went through
    assert any("listing cache not kept (KeyError" in r.message for r in caplog.records)
    assert not w.file.exists()
    monkeypatch.setattr(lc, "after_changes", original)
    assert w.listings() == (1, 1)
    assert w.listings() == (0, 0)


def test_the_look_is_parsed_as_zfs_prints_it() -> None:
    from zfsrepl.zfs import parse_changed
    out = ("tank/a\tsnapshots_changed\t1700000001\n"
           "tank/a\tzfsrepl:role\t-\n"
           "tank/a\treceive_resume_token\t1-abc\n"
           "tank/b\tsnapshots_changed\t-\n"
           "tank/b\tzfsrepl:role\tsource\n"
           "tank/other\tsnapshots_changed\t5\n")
    found = parse_changed(out, ["tank/a", "tank/b", "tank/gone"])
    assert set(found) == {"tank/a", "tank/b"}  # tank/gone does not exist
    assert found["tank/a"][0] == 1700000001 and found["tank/a"][1].resume_token == "1-abc"
    assert found["tank/a"][1].role is None
    assert found["tank/b"][0] is None and found["tank/b"][1].role == "source"


def test_a_takeover_is_seen_though_the_listing_comes_from_the_cache(
        world: MakeWorld) -> None:
    from zfsrepl.errors import ReplicationError
    w = world()
    w.cycle()
    assert w.listings() == (0, 0)
    w.dst.roles[A.destination] = "source"  # failover --takeover: no snapshot changes
    before = sum(len(v) for v in w.dst.fs.values())
    with pytest.raises(ReplicationError, match=A.destination):
        w.cycle()
    assert sum(len(v) for v in w.dst.fs.values()) == before  # nothing received


def test_a_source_that_refuses_the_read_back_stops_looking(world: MakeWorld) -> None:
    w = world()
    w.src.refuse_after = True  # a zfs wrapper behind sudo on the source
    w.cycle()
    first = looks(w)
    for _ in range(3):
        assert w.listings() == (1, 1)
    assert looks(w) == first  # not asked again by this process
    assert not w.file.exists()


@pytest.mark.parametrize("usage", [OPENZFS, FUSE], ids=["openzfs", "zfs-fuse"])
def test_the_source_is_done_before_the_destination_is_asked_anything(
        world: MakeWorld, usage: str) -> None:
    # its calls are local: they run while the destination's ssh connection opens
    w = world(usage, has_property=usage == OPENZFS)
    for n in range(3):
        order: list[str] = []
        w.src.order = w.dst.order = order
        w.cycle()
        # the listings and probes of the survey, before it reads holds or snapshots
        survey = order[:next(i for i, c in enumerate(order)
                             if c.endswith((" snapshot", " holds", " list")))]
        first_dst = next(i for i, c in enumerate(survey) if c.startswith("dst@"))
        assert all(c.startswith("dst@") for c in survey[first_dst:]), (n, survey)


def test_listing_cache_on_keeps_the_listing_of_a_small_service_too(
        world: MakeWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lc, "MIN_SNAPSHOTS", 10_000)
    w = world()
    w.svc = dataclasses.replace(SVC, listing_cache="on")
    assert w.listings() == (1, 1)  # nothing kept yet
    assert not w.kept().small
    for _ in range(3):
        assert w.listings() == (0, 0)
    assert_kept_is_what_zfs_shows(w)


def test_listing_cache_off_never_looks_nor_keeps(world: MakeWorld) -> None:
    w = world()
    w.svc = dataclasses.replace(SVC, listing_cache="off")
    for _ in range(3):
        assert w.listings() == (1, 1)
    assert not w.file.exists()
    assert looks(w) == 0


def _definition(**extra: object) -> dict[str, object]:
    return {"name": "s", "source": {"host": "a", "user": "src"},
            "destination": {"host": "b", "user": "dst"},
            "filesystem": [{"source": "tank/a", "destination": "backup/a"}], **extra}


def test_the_listing_cache_key_defaults_to_auto_and_round_trips() -> None:
    assert config.parse_service(_definition()).listing_cache == "auto"
    assert "listing_cache" not in config.dump_service(config.parse_service(_definition()))
    for value in ("on", "off"):
        svc = config.parse_service(_definition(listing_cache=value))
        assert svc.listing_cache == value
        assert config.parse_service(tomllib.loads(config.dump_service(svc))) == svc


@pytest.mark.parametrize("value", ["yes", "", "ON", True, 1])
def test_a_bad_listing_cache_names_file_key_and_values(value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse_service(_definition(listing_cache=value), Path("/c/s.toml"))
    assert str(exc.value).startswith("/c/s.toml: listing_cache: ")
    assert str(exc.value).endswith('expected "auto", "on" or "off"')
