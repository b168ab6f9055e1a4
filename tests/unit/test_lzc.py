"""lzc.py and its use by zfs.py: many snapshots destroyed, held or released, bookmarks
made or destroyed in one libzfs_core request per pool, and zfs one at a time wherever that is not
possible (no libzfs_core, another zfs_command, a pool's request refused). The
library's own answers are checked on real OpenZFS by the e2e tests."""

from __future__ import annotations

import io
import json
import logging
import sys
from typing import Any

import pytest

from zfsrepl import lzc
from zfsrepl.errors import CommandError
from zfsrepl.host import LocalHost, Result
from zfsrepl.zfs import LIBZFS_CORE, CapabilityCache, Zfs

from .fakes import PAIRS, SVC, N, SimLocalZfs, SimSnap, SimZfs, World, seq
from .test_capabilities import OPENZFS


def request(op: str, **items: Any) -> str:
    return json.dumps({"op": op, **items})


@pytest.mark.parametrize("text, op, items", [
    (request("destroy-snapshots", names=["a/b@1", "c@2"]), "destroy-snapshots",
     {"a/b@1": None, "c@2": None}),
    (request("destroy-bookmarks", names=["a/b#1"]), "destroy-bookmarks", {"a/b#1": None}),
    (request("bookmark", bookmarks={"a/b#1": "a/b@1"}), "bookmark", {"a/b#1": "a/b@1"}),
    (request("hold", holds={"a/b@1": "zfsrepl-s"}), "hold", {"a/b@1": "zfsrepl-s"}),
    (request("release", holds={"a/b@1": "zfsrepl-s", "c@2": "zfsrepl-s"}), "release",
     {"a/b@1": "zfsrepl-s", "c@2": "zfsrepl-s"}),
])
def test_a_request_is_read(text: str, op: str, items: dict[str, str | None]) -> None:
    assert lzc.parse_request(text) == (op, items)


@pytest.mark.parametrize("text, names", [
    ("not json", "Expecting value"),
    (request("rename", names=[]), "op must be one of"),
    (request("destroy-snapshots", names="a@1"), "names must be a list of FS@NAME"),
    (request("destroy-snapshots", names=["a#1"]), "names must be a list of FS@NAME"),
    (request("destroy-bookmarks", names=["a@1"]), "names must be a list of FS#NAME"),
    # a bookmark of another filesystem's snapshot is no bookmark zfsrepl makes
    (request("bookmark", bookmarks={"a#1": "b@1"}), "bookmarks must map"),
    (request("bookmark", bookmarks=["a#1"]), "bookmarks must map"),
    (request("hold", holds={"a/b": "zfsrepl-s"}), "holds must map FS@SNAPSHOT to a tag"),
    (request("release", holds={"a/b@1": ""}), "holds must map FS@SNAPSHOT to a tag"),
    (request("hold", names=["a/b@1"]), "holds must map FS@SNAPSHOT to a tag"),
])
def test_a_bad_request_is_refused_with_what_is_wrong(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], text: str,
        names: str) -> None:
    with pytest.raises(ValueError, match=names):
        lzc.parse_request(text)
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    monkeypatch.setattr(lzc, "_Libraries", lambda: pytest.fail("no library for a bad one"))
    assert lzc.main() == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("lzc: a bad request: ") and names in err


def test_one_request_per_pool(monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[str, dict[str, str | None]]] = []

    class Libraries:
        def call(self, op: str, items: dict[str, str | None]) -> tuple[int, dict[str, int]]:
            calls.append((op, items))
            return (16, {"tank/b@1": 16}) if "tank/b@1" in items else (0, {})

    names = ["tank/a@1", "backup/x@1", "tank/b@1"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(request("destroy-snapshots", names=names)))
    monkeypatch.setattr(lzc, "_Libraries", Libraries)
    assert lzc.main() == 0
    assert calls == [("destroy-snapshots", {"tank/a@1": None, "tank/b@1": None}),
                     ("destroy-snapshots", {"backup/x@1": None})]
    assert json.loads(capsys.readouterr().out) == {"pools": {
        "tank": {"errno": 16, "failed": {"tank/b@1": 16}},
        "backup": {"errno": 0, "failed": {}}}}


def test_no_library_is_its_own_exit(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    def unavailable() -> None:
        raise lzc.Unavailable("libzfs_core cannot open /dev/zfs")

    monkeypatch.setattr(sys, "stdin", io.StringIO(request("destroy-bookmarks", names=["a#1"])))
    monkeypatch.setattr(lzc, "_Libraries", unavailable)
    assert lzc.main() == lzc.EXIT_UNAVAILABLE
    assert capsys.readouterr().err == "lzc: libzfs_core cannot open /dev/zfs\n"


# -- zfs.py's side -------------------------------------------------------------------


def local(filesystems: list[str], usage: str = OPENZFS) -> SimLocalZfs:
    host = SimLocalZfs("src@srchost", usage, filesystems, set())
    for fs in filesystems:
        host.fs[fs] = [SimSnap(f"s{n}", 100 * n + len(fs), n) for n in (1, 2)]
    return host


def made(host: SimLocalZfs) -> list[list[str]]:
    return [c for c in host.calls if c]


def test_destroys_across_pools_are_one_request_each_pool() -> None:
    host = local(["tank/a", "tank/b", "backup/c"])
    z = Zfs(host, ["zfs"])
    z.journal = []
    names = ["tank/a@s1", "backup/c@s1", "tank/b@s1"]
    assert z.destroy_snapshots(names) == [None, None, None]
    assert made(host) == [["lzc", "destroy-snapshots"]]
    assert all([s.name for s in host.fs[fs]] == ["s2"] for fs in host.fs)
    assert sorted(z.journal) == sorted(("destroy", n) for n in names)


def test_a_pool_refused_is_done_one_at_a_time_and_names_what_failed() -> None:
    host = local(["tank/a", "tank/b", "backup/c"])
    host.fs["tank/b"][0].holds.add("admin")  # someone else's hold
    destroy = host._destroy

    def held_stays(a: list[str]) -> tuple[int, str, str]:
        if a == ["tank/b@s1"]:
            return 1, "", "cannot destroy snapshot tank/b@s1: permission denied"
        return destroy(a)

    host._destroy = held_stays  # type: ignore[method-assign]
    z = Zfs(host, ["zfs"])
    outcomes = z.destroy_snapshots(["tank/a@s1", "tank/b@s1", "backup/c@s1"])
    assert made(host)[0] == ["lzc", "destroy-snapshots"]
    # tank's request was all or nothing: each of its snapshots alone, through zfs
    assert made(host)[1:] == [["destroy", "tank/a@s1"], ["destroy", "tank/b@s1"]]
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], CommandError)
    assert [s.name for s in host.fs["tank/b"]] == ["s1", "s2"]
    assert [s.name for s in host.fs["backup/c"]] == ["s2"]


def test_bookmarks_are_made_and_destroyed_in_one_request_each() -> None:
    host = local(["tank/a", "tank/b"])
    z = Zfs(host, ["zfs"])
    assert z.takes_many_bookmarks(2) and not z.takes_many_bookmarks(1)
    assert z.bookmarks([("tank/a", "s2"), ("tank/b", "s2")]) == [None, None]
    assert z.destroy_bookmarks(["tank/a#s2", "tank/b#s2", "tank/b#gone"]) == [None] * 3
    assert made(host) == [["lzc", "bookmark"], ["lzc", "destroy-bookmarks"]]
    assert host.marks == {"tank/a": {}, "tank/b": {}}


def test_an_existing_bookmark_is_fine_as_with_zfs() -> None:
    host = local(["tank/a", "tank/b"])
    host.marks["tank/a"]["s2"] = SimSnap("s2", 1, 2)
    z = Zfs(host, ["zfs"])

    def bookmark(a: list[str]) -> tuple[int, str, str]:
        if a[1].partition("#")[2] in host.marks[a[1].partition("#")[0]]:
            return 1, "", f"cannot create bookmark '{a[1]}': bookmark exists"
        return SimLocalZfs._bookmark(host, a)

    host._bookmark = bookmark  # type: ignore[method-assign]
    assert z.bookmarks([("tank/a", "s2"), ("tank/b", "s2")]) == [None, None]
    assert made(host) == [["lzc", "bookmark"], ["bookmark", "tank/a@s2", "tank/a#s2"],
                          ["bookmark", "tank/b@s2", "tank/b#s2"]]
    assert set(host.marks["tank/b"]) == {"s2"}


class NoLibrary(SimLocalZfs):
    """This machine's zfs without libzfs_core (zfs-fuse): lzc.py exits unavailable."""

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        if argv[:1] == [sys.executable]:
            self.calls.append(["lzc", "unavailable"])
            return Result(argv, lzc.EXIT_UNAVAILABLE, "", "lzc: no libzfs_core here\n")
        return super().run(argv, check=check, input=input, timeout=timeout)


def test_without_libzfs_core_zfs_runs_and_it_is_not_tried_again() -> None:
    host = NoLibrary("src@srchost", OPENZFS, ["tank/a", "tank/b"], set())
    for fs in host.fs:
        host.fs[fs] = [SimSnap("s1", len(fs), 1)]
    cache = CapabilityCache()
    z = Zfs(host, ["zfs"], cache)
    assert z.destroy_snapshots(["tank/a@s1", "tank/b@s1"]) == [None, None]
    assert made(host) == [["lzc", "unavailable"], ["destroy", "tank/a@s1"],
                          ["destroy", "tank/b@s1"]]
    assert cache.lacks(z._cache_key(), LIBZFS_CORE)
    # a new Zfs of the same host (the next cycle of `zfsrepl run`) knows it
    again = Zfs(host, ["zfs"], cache)
    assert not again.takes_many_bookmarks(2)
    host.calls.clear()
    for fs in host.fs:
        host.fs[fs] = [SimSnap("s2", len(fs), 2)]
    assert again.bookmarks([("tank/a", "s2"), ("tank/b", "s2")]) == [None, None]
    assert made(host) == [["bookmark", "tank/a@s2", "tank/a#s2"],
                          ["bookmark", "tank/b@s2", "tank/b#s2"]]


@pytest.mark.parametrize("zfs_command", ["zfs", "/usr/sbin/zfs", "/sbin/zfs"])
def test_the_systems_zfs_takes_them_by_name_or_path(zfs_command: str) -> None:
    assert Zfs(local(["tank/a"]), [zfs_command]).takes_many_bookmarks(2)


def test_another_zfs_command_is_always_what_runs() -> None:
    host = local(["tank/a", "tank/b"])
    z = Zfs(host, ["/opt/site/bin/zfs"])  # e.g. one that logs each call
    assert not z.takes_many_bookmarks(2)
    assert z.destroy_snapshots(["tank/a@s1", "tank/b@s1"]) == [None, None]
    assert made(host) == [["destroy", "tank/a@s1"], ["destroy", "tank/b@s1"]]


def test_a_remote_host_is_never_asked() -> None:
    class Remote:
        label = "dst@desthost"

        def run(self, argv: list[str], **kw: Any) -> Result:
            raise AssertionError(argv)

    z = Zfs(Remote(), ["zfs"])  # type: ignore[arg-type]
    assert not z.takes_many_bookmarks(5)


def test_a_request_that_does_not_finish_fails_each_and_leaves_them_unknown() -> None:
    class Hung(SimLocalZfs):
        def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
                timeout: float | None = None) -> Result:
            if argv[:1] == [sys.executable]:
                raise CommandError(f"lzc.py did not finish within {timeout:g} s: cut it")
            return super().run(argv, check=check, input=input, timeout=timeout)

    host = Hung("src@srchost", OPENZFS, ["tank/a", "tank/b"], set())
    host.command_timeout = 30.0
    z = Zfs(host, ["zfs"])
    z.journal = []
    outcomes = z.destroy_snapshots(["tank/a@s1", "tank/b@s1"])
    assert all(isinstance(o, CommandError) and "within 60 s" in str(o) for o in outcomes)
    assert z.journal == [("other", "tank/a@s1"), ("other", "tank/b@s1")]


def test_an_answer_that_makes_no_sense_leaves_it_to_zfs(
        caplog: pytest.LogCaptureFixture) -> None:
    class Garbled(SimLocalZfs):
        def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
                timeout: float | None = None) -> Result:
            if argv[:1] == [sys.executable]:
                return Result(argv, 1, "", "Traceback (most recent call last):")
            return super().run(argv, check=check, input=input, timeout=timeout)

    host = Garbled("src@srchost", OPENZFS, ["tank/a", "tank/b"], set())
    for fs in host.fs:
        host.fs[fs] = [SimSnap("s1", len(fs), 1)]
    assert Zfs(host, ["zfs"]).destroy_snapshots(["tank/a@s1", "tank/b@s1"]) == [None, None]
    assert [s for fs in host.fs for s in host.fs[fs]] == []
    assert "destroy-snapshots in one request failed" in caplog.text


def holds_of(host: SimLocalZfs) -> dict[str, set[str]]:
    return {f"{fs}@{s.name}": set(s.holds) for fs, snaps in host.fs.items() for s in snaps}


def test_holds_and_releases_are_one_request_each_pool() -> None:
    host = local(["tank/a", "tank/b", "backup/c"])
    z = Zfs(host, ["zfs"])
    z.journal = []
    names = ["tank/a@s2", "backup/c@s2", "tank/b@s2"]
    z.hold("zfsrepl-svc", names)
    assert made(host) == [["lzc", "hold"]]
    assert {n for n, tags in holds_of(host).items() if tags} == set(names)
    z.release("zfsrepl-svc", names)
    assert made(host) == [["lzc", "hold"], ["lzc", "release"]]
    assert not any(holds_of(host).values())
    assert sorted(z.journal) == sorted([("hold", n) for n in names]
                                       + [("release", n) for n in names])


@pytest.mark.parametrize("sub", ["hold", "release"])
def test_a_hold_there_already_or_gone_already_is_fine_as_with_zfs(sub: str) -> None:
    host = local(["tank/a", "tank/b"])
    if sub == "hold":
        host.fs["tank/b"][1].holds.add("zfsrepl-svc")  # already there: EEXIST
    else:
        host.fs["tank/a"][1].holds.add("zfsrepl-svc")  # tank/b's is gone: ESRCH
    z = Zfs(host, ["zfs"])
    getattr(z, sub)("zfsrepl-svc", ["tank/a@s2", "tank/b@s2"])
    # the pool's request was refused whole: zfs, one at a time, takes it as done
    assert made(host) == [["lzc", sub], [sub, "zfsrepl-svc", "tank/a@s2"],
                          [sub, "zfsrepl-svc", "tank/b@s2"]]
    assert all(("zfsrepl-svc" in tags) == (sub == "hold")
               for n, tags in holds_of(host).items() if n.endswith("@s2"))


def test_a_hold_of_a_snapshot_that_is_gone_fails_as_with_zfs() -> None:
    host = local(["tank/a", "tank/b"])
    z = Zfs(host, ["zfs"])
    with pytest.raises(CommandError, match="dataset does not exist"):
        z.hold("zfsrepl-svc", ["tank/a@s2", "tank/b@gone"])
    # libzfs_core skipped the missing one and held the other; zfs says what is wrong
    assert made(host) == [["lzc", "hold"], ["hold", "zfsrepl-svc", "tank/b@gone"]]
    assert holds_of(host)["tank/a@s2"] == {"zfsrepl-svc"}


# -- a cycle -------------------------------------------------------------------------


def lzc_world(usage: str = OPENZFS) -> World:
    src = SimLocalZfs("src@srchost", usage, [p.source for p in PAIRS], {"tank/src"})
    src.requests = []
    return World(src, SimZfs("dst@desthost", usage, [], {"backup/dst"}), SVC)


def test_a_cycle_moves_holds_bookmarks_and_prunes_the_source_in_five_requests(
        caplog: pytest.LogCaptureFixture) -> None:
    w = lzc_world()
    assert isinstance(w.src, LocalHost) and not isinstance(w.dst, LocalHost)
    w.cycle()
    w.cycle()
    caplog.set_level(logging.INFO, logger="zfsrepl")
    src, _ = w.calls_of(w.cycle)
    # one request each for: the new bases' holds, the old bases' releases, the new
    # bases' bookmarks, the old bookmarks, the old snapshots
    assert dict(src) == {"get": 1, "holds": 1, "snapshot": 1, "send": N, "lzc": 5}
    assert [c[1] for c in w.src.calls[-5:]] == ["hold", "release", "bookmark",
                                                "destroy-bookmarks", "destroy-snapshots"]
    for p in PAIRS:
        assert [s.name for s in w.src.fs[p.source]] == [seq(3)]
        assert list(w.src.marks[p.source]) == [seq(3)]
        assert [s.name for s in w.dst.fs[p.destination]] == [seq(3)]
    assert f"src@srchost: {N} snapshots destroyed in one transaction group (pool tank)" \
        in caplog.text
    logged = {r.getMessage() for r in caplog.records}
    assert all(f"destroyed {p.source}@{seq(2)} on src@srchost" in logged for p in PAIRS)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_no_python_to_run_it_leaves_it_to_zfs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "")  # an embedded interpreter may have none
    assert not Zfs(local(["tank/a", "tank/b"]), ["zfs"]).takes_many_bookmarks(2)
