"""What the unit tests share: builders of snapshot lists for the pure core, and a
simulated ZFS host (`SimZfs`) for the code that runs zfs commands."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from zfsrepl.chain import Receiver, Sender, compare
from zfsrepl.errors import CommandError
from zfsrepl.host import Result
from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot

NAMING = SnapshotNaming("src", "dst", "desthost")
SRC_FS = "tank/src/fs"
DST_FS = "backup/dst/fs"
# SimZfs: the hold tag whose holds `held()` reports, and the GUIDs of new snapshots
SIM_HOLD_TAG = "zfsrepl-batch"
SIM_GUIDS = itertools.count(1000)


def own(seq: int, guid: int | None, txg: int, *, fs: str = SRC_FS,
        userrefs: int = 0) -> Snapshot:
    """A snapshot of this service (NAMING) with sequence `seq`."""
    return Snapshot(fs, NAMING.format(seq), guid, txg, creation=txg, userrefs=userrefs)


def other(name: str, guid: int | None, txg: int, *, fs: str = SRC_FS,
          userrefs: int = 0) -> Snapshot:
    """A snapshot not made by this service."""
    return Snapshot(fs, name, guid, txg, creation=txg, userrefs=userrefs)


def received(snaps: list[Snapshot], *, fs: str = DST_FS, first_txg: int = 1000,
             rename: dict[str, str] | None = None) -> list[Snapshot]:
    """The destination's copies of `snaps`: same GUIDs and names (unless renamed),
    its own transaction groups, in the same order."""
    rename = rename or {}
    return [Snapshot(fs, rename.get(s.name, s.name), s.guid, first_txg + i)
            for i, s in enumerate(snaps)]


def seq(n: int) -> str:
    return NAMING.format(n)


def common_snapshot(src: list[Snapshot], dst: list[Snapshot]) -> Snapshot | None:
    """The newest source snapshot the destination has (by GUID), bookmarks aside."""
    c = compare(Sender.of(src), Receiver.of(dst), NAMING).common
    return c.sending if c is not None else None


# ---------------------------------------------------------------------------- a ZFS host


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
