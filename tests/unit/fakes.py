"""The fakes the unit tests share: a simulated ZFS host (`SimZfs`), streams that carry
snapshots from one to the other (`SimStreams`), and a world of both for a service of
several filesystems (`World`, fixture `world`)."""

from __future__ import annotations

import itertools
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from zfsrepl import lzc
from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.cycle import hold_tag, replicate
from zfsrepl.errors import CommandError
from zfsrepl.host import LocalHost, Result
from zfsrepl.transfer import TransferResult
from zfsrepl.zfs import CapabilityCache

# SimZfs: the hold tag whose holds `held()` reports, and the GUIDs of new snapshots
SIM_HOLD_TAG = "zfsrepl-batch"
SIM_GUIDS = itertools.count(1000)

# A service of N filesystems whose hold tag is SIM_HOLD_TAG
N = 5
PAIRS = tuple(FilesystemPair(f"tank/src/fs{i}", f"backup/dst/fs{i}") for i in range(N))
SVC = Service(name="batch", source=Endpoint("srchost", "src"),
              destination=Endpoint("desthost", "dst"), filesystems=PAIRS, keep_source=1,
              keep_destination=1, retry_delay=0.0)
TAG = hold_tag(SVC.name)
assert TAG == SIM_HOLD_TAG


def seq(n: int) -> str:
    return SVC.naming.format(n)


@dataclass
class SimSnap:
    name: str
    guid: int
    txg: int
    holds: set[str] = field(default_factory=set)


class SimZfs:
    """The ZFS of one host, as much as a cycle uses: filesystems, snapshots, holds and
    bookmarks. Records every call; destroying a held snapshot fails the test."""

    def __init__(self, label: str, usage: str, filesystems: list[str],
                 parents: set[str]) -> None:
        self.label = label
        self.usage = usage
        self.fs: dict[str, list[SimSnap]] = {f: [] for f in filesystems}
        self.marks: dict[str, dict[str, SimSnap]] = {f: {} for f in filesystems}
        self.parents = parents
        self.txg = 1
        self.calls: list[list[str]] = []
        self.refuse_batches = False  # as an agent that takes one snapshot per hold
        # what its agent's hello names beyond every version's requests ([]: an older one)
        self.requests = ["destroy-many"]
        self.tokens: dict[str, str] = {}  # filesystem -> receive_resume_token

    def next_txg(self) -> int:
        self.txg += 1
        return self.txg

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def close(self) -> None:
        pass

    def __enter__(self) -> SimZfs:  # as an SshHost opened with `with`
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        if argv == ["hello"]:  # the agent's
            self.calls.append(argv)
            return Result(argv, 0, json.dumps({"agent": "zfsrepl", "version": "0",
                                               "tools": [], "requests": self.requests}), "")
        args = argv[1:]
        self.calls.append(args)
        if not args:
            return Result(argv, 2, "", self.usage)
        rc, out, err = getattr(self, "_" + args[0])(args[1:])
        if rc and check:
            raise CommandError(f"{self.label}: {err}", argv=argv, stderr=err, returncode=rc)
        return Result(argv, rc, out, err)

    def find(self, full: str) -> SimSnap | None:
        fs, _, name = full.partition("@")
        return next((s for s in self.fs.get(fs, []) if s.name == name), None)

    def held(self, fs: str) -> list[str]:
        return [s.name for s in self.fs[fs] if SIM_HOLD_TAG in s.holds]

    # -- subcommands: (returncode, stdout, stderr) ---------------------------------

    def _get(self, a: list[str]) -> tuple[int, str, str]:
        props, names = a[6].split(","), a[7:]
        out, err = [], []
        for fs in names:
            if fs not in self.fs:
                err.append(f"cannot open '{fs}': dataset does not exist")
                continue
            fs_values = {"encryption": "off", "receive_resume_token": self.tokens.get(fs, "-")}
            out += [f"{fs}\t{p}\t{fs_values.get(p, '-')}" for p in props]
            for sep, snaps in (("@", self.fs[fs]), ("#", list(self.marks[fs].values()))):
                for s in snaps:
                    values = {"guid": s.guid, "createtxg": s.txg, "creation": s.txg,
                              "userrefs": len(s.holds)}
                    out += [f"{fs}{sep}{s.name}\t{p}\t{values.get(p, '-')}" for p in props]
        return (1 if err else 0), "\n".join(out), "\n".join(err)

    def _list(self, a: list[str]) -> tuple[int, str, str]:
        names = a[3:]
        found = [n for n in names if n in self.fs or n in self.parents]
        err = [f"cannot open '{n}': dataset does not exist" for n in names if n not in found]
        return (1 if err else 0), "\n".join(found), "\n".join(err)

    def _snapshot(self, a: list[str]) -> tuple[int, str, str]:
        # all or none, as one `zfs snapshot` of OpenZFS
        if any(x.partition("@")[0] not in self.fs for x in a):
            return 1, "", "cannot create snapshots : dataset does not exist"
        for x in a:
            fs, _, name = x.partition("@")
            self.fs[fs].append(SimSnap(name, next(SIM_GUIDS), self.next_txg()))
        return 0, "", ""

    def _hold(self, a: list[str]) -> tuple[int, str, str]:
        return self._hold_or_release(a, True)

    def _release(self, a: list[str]) -> tuple[int, str, str]:
        return self._hold_or_release(a, False)

    def _hold_or_release(self, a: list[str], hold: bool) -> tuple[int, str, str]:
        tag, snaps = a[0], a[1:]
        if self.refuse_batches and len(snaps) > 1:
            return 126, "", "zfsrepl agent: refused: zfs hold is allowed only as: ..."
        err = []
        for x in snaps:  # zfs goes on after a snapshot that fails
            s = self.find(x)
            if s is None:
                err.append(f"cannot open '{x}': dataset does not exist")
            elif hold and tag in s.holds:
                err.append(f"cannot hold snapshot '{x}': tag already exists on this dataset")
            elif not hold and tag not in s.holds:
                err.append(f"cannot release hold from snapshot '{x}': no such tag on this "
                           "dataset")
            elif hold:
                s.holds.add(tag)
            else:
                s.holds.discard(tag)
        return (1 if err else 0), "", "\n".join(err)

    def _holds(self, a: list[str]) -> tuple[int, str, str]:
        lines = [f"{x}\t{t}\tThu Jan  1 00:00 1970" for x in a[1:]
                 for t in sorted(getattr(self.find(x), "holds", ()))]
        return 0, "\n".join(lines), ""

    def _bookmark(self, a: list[str]) -> tuple[int, str, str]:
        s = self.find(a[0])
        assert s is not None, a
        fs, _, name = a[1].partition("#")
        self.marks[fs][name] = SimSnap(name, s.guid, s.txg)
        return 0, "", ""

    def _destroy(self, a: list[str]) -> tuple[int, str, str]:
        if len(a) > 1:  # the agent's destroy-many: one report a line
            assert "destroy-many" in self.requests, a
            reports = [{"name": n, "returncode": rc, "stderr": err}
                       for n in a for rc, _, err in [self._destroy([n])]]
            return (int(any(r["returncode"] for r in reports)),
                    "".join(json.dumps(r) + "\n" for r in reports), "")
        fs, sep, name = a[0].partition("#")
        if sep:
            del self.marks[fs][name]
            return 0, "", ""
        s = self.find(a[0])
        assert s is not None, a
        assert not s.holds, f"destroyed {a[0]} on {self.label}, held by {s.holds}"
        self.fs[a[0].partition("@")[0]].remove(s)
        return 0, "", ""

    def _send(self, a: list[str]) -> tuple[int, str, str]:
        return 1, "", "no estimate here"  # send -nvP


class SimLocalZfs(SimZfs, LocalHost):
    """A SimZfs on this machine whose ZFS has libzfs_core: it answers lzc.py's process
    (see Zfs._in_one_group) as libzfs_core would, all or nothing per pool (a held
    snapshot: EBUSY, an existing bookmark or hold: EEXIST, no such hold: ESRCH; a hold's
    missing snapshot is skipped), recorded as the call ["lzc", OP]."""

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        if argv[:1] != [sys.executable]:
            return super().run(argv, check=check, input=input, timeout=timeout)
        assert input is not None
        op, items = lzc.parse_request(input.decode())
        self.calls.append(["lzc", op])
        pools = {}
        for pool, mine in lzc.by_pool(items).items():
            failed = {n: e for n, v in mine.items() for e in [self._lzc_refuses(op, n, v)] if e}
            # a hold's or release's snapshot that is gone is skipped, not fatal
            gone = {n: 2 for n in mine if op in ("hold", "release") and self.find(n) is None}
            fatal = {n: e for n, e in failed.items() if n not in gone}
            if op in ("hold", "release") and not fatal:
                for name, tag in mine.items():
                    if name not in gone:
                        self._hold_or_release([str(tag), name], op == "hold")
                pools[pool] = {"errno": 0, "failed": gone}
                continue
            if not failed:
                for name, snapshot in mine.items():
                    if op == "bookmark":
                        self._bookmark([str(snapshot), name])
                    elif self.find(name) is not None or name.partition("#")[2] in \
                            self.marks.get(name.partition("#")[0], {}):
                        self._destroy([name])  # one that is not there: ignored
            pools[pool] = {"errno": next(iter(failed.values()), 0), "failed": failed}
        return Result(argv, 0, json.dumps({"pools": pools}), "")

    def _lzc_refuses(self, op: str, name: str, value: str | None) -> int:
        fs, _, short = name.partition("#" if "#" in name else "@")
        if op == "bookmark":
            return 17 if short in self.marks[fs] else 0
        if op == "destroy-snapshots":
            s = self.find(name)
            return 16 if s is not None and s.holds else 0
        if op in ("hold", "release"):
            s = self.find(name)
            if s is None:
                return 2  # ENOENT
            held = value in s.holds
            return 17 if op == "hold" and held else 3 if op == "release" and not held else 0
        return 0  # a bookmark that is not there is no failure


class FnStreams:
    """Streams that are one function, with transfer.pipe's arguments."""

    def __init__(self, pipe: Callable[..., TransferResult]) -> None:
        self.pipe = pipe


class Sides(Protocol):
    src: SimZfs
    dst: SimZfs


class SimStreams:
    """Streams between the two SimZfs of `sides` (looked up at each stream: a test may
    swap a side): what `zfs send` names arrives on the receiving side (`-I`: every
    snapshot between too). Both sides' call lists record the stream's send and receive;
    a source filesystem in `cut` fails its streams."""

    def __init__(self, sides: Sides) -> None:
        self.sides = sides
        self.cut: set[str] = set()

    def pipe(self, sender: list[str], receiver: list[str], what: str,
             **kw: Any) -> TransferResult:
        src, dst = self.sides.src, self.sides.dst
        src.calls.append(sender[1:])
        dst.calls.append(receiver[1:])
        src_fs, _, target = sender[-1].partition("@")
        if src_fs in self.cut:
            raise CommandError(f"{what}: cut", stderr="Connection reset")
        snaps = src.fs[src_fs]
        top = next(s for s in snaps if s.name == target)
        sent = [top]
        if "-I" in sender:
            base = sender[sender.index("-I") + 1].partition("@")[2]
            low = next(s.txg for s in snaps if s.name == base)
            sent = [s for s in snaps if low < s.txg <= top.txg]
        dst_fs = receiver[-1]
        dst.fs.setdefault(dst_fs, [])
        dst.marks.setdefault(dst_fs, {})
        dst.fs[dst_fs] += [SimSnap(s.name, s.guid, dst.next_txg()) for s in sent]
        return TransferResult(0.1, 10)


@dataclass
class World:
    src: SimZfs
    dst: SimZfs
    svc: Service = SVC
    cache: CapabilityCache = field(default_factory=CapabilityCache)
    streams: SimStreams = field(init=False)

    def __post_init__(self) -> None:
        self.streams = SimStreams(self)

    @property
    def cut(self) -> set[str]:  # source filesystems whose streams fail
        return self.streams.cut

    def cycle(self) -> None:
        replicate(self.svc, self.src, self.dst, sleep=lambda s: None,
                  capabilities=self.cache, streams=self.streams)

    def calls_of(self, run: Callable[[], None]) -> tuple[Counter[str], Counter[str]]:
        """The calls on each side while `run()` runs."""
        before = len(self.src.calls), len(self.dst.calls)
        run()
        src, dst = self.src.calls[before[0]:], self.dst.calls[before[1]:]
        return (Counter(c[0] if c else "(probe)" for c in src),
                Counter(c[0] if c else "(probe)" for c in dst))


MakeWorld = Callable[[str], World]  # a source and a destination on zfs of this usage


def make_world(usage: str, svc: Service = SVC) -> World:
    """SimZfs on each side of `svc` (the destination's filesystems not there yet)."""
    src = SimZfs("src@srchost", usage, [p.source for p in svc.filesystems], {"tank/src"})
    src.requests = []  # the sending side runs zfs itself: no agent
    dst = SimZfs("dst@desthost", usage, [], {"backup/dst"})
    return World(src, dst, svc)


@pytest.fixture
def world() -> MakeWorld:
    return make_world
