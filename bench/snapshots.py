"""Scaling with snapshots: one filesystem holding 1,000 and 3,000 (or 10,000) snapshots.

The snapshots are the service's own (named as zfsrepl names them), on both sides:
created on the source by one root shell loop (zfs-fuse takes one snapshot per
`zfs snapshot` call), brought to the destination with one `-I` stream. The service
keeps them all (keep above the count), so a cycle lists, plans, snapshots and sends,
and retention destroys nothing. In the same run, alternating:

    zfsrepl:  zfsrepl runonce
    raw:      zfs snapshot; zfs send -i | ssh zfs receive -u -F (to its own destination)

Planning is timed in this process on the listings of the filesystem as it stands:
`survey` (zfsrepl.cycle.Cycle.survey over canned `zfs get` output: parsing both
listings, plan, retention decisions on both sides) and the pure part alone
(`chain.compare` + `plan_chain` + `retention.decide` on each side). The listing calls (zfsrepl's
exact `zfs get` argv) are timed on each host as its user.

Run as root from the repository root:

    python bench/snapshots.py [--counts 1000,3000] [--rounds 3]

10,000 works (--counts 1000,10000) but takes about 15 minutes on zfs-fuse (creating
and receiving the snapshots dominates), so the default stops at 3,000.

On the OpenZFS lab (the VM, ``--backend openzfs``; started and removed as for
peers.py) the listing cache is on (`snapshots_changed`, see listing_cache.py), and
each round runs, in this order:

    raw       as above (its snapshot moves the source's snapshots_changed)
    full      zfsrepl runonce with the listing cache file removed first: both sides
              listed in full, as without the cache (the file is written again)
    cached    zfsrepl runonce right after: nothing changed but its own cycle, so
              neither side is listed in full (from MIN_SNAPSHOTS snapshots in all;
              below, a service lists in full without the cache's looks, by design)

and the section reports the target's ratio, cached cycle at the largest count over
the smallest (issue: 10,000 snapshots under twice 100), with the full listings each
zfsrepl variant made (from `runonce --debug`), so a figure never stands for a cycle
that did not use the cache, and what grows with the count timed in-process up to
10,000:

    python bench/snapshots.py --backend openzfs [--counts 100,3000] [--rounds 3]

The destination is a copy of the source's pool, not a receive: the source's image is
mirrored onto a new one and split off as a pool of its own (`zpool attach`, `zpool
split`), which holds the same snapshots with the same GUIDs, and the copied filesystem is
the service's destination (the raw variant keeps its own in the destination pool).
Receiving is what made the setup slow: under emulation one `-I` stream of 2,000
snapshots took some 11 minutes and each snapshot cost more than the one before.

3,000 is what the lab VM holds by default: OpenZFS allocates some 90 KiB per snapshot
there, and the pools share the VM's 1.6 GiB disk. About half an hour under emulation,
most of it creating the snapshots. 10,000 need a VM of their own with a larger disk and
pools (the VM is made at its first start; about 1.5 hours, most of it creating them;
what a snapshot allocates grows with their number, 4.85 GiB for 10,000):

    ZFSREPL_LAB_OPENZFS_DIR=/var/tmp/zfsrepl-lab-big ZFSREPL_LAB_VM_DISK=20G \
        ZFSREPL_LAB_POOL_SIZE=8G python bench/snapshots.py --backend openzfs \
        --counts 100,10000 --rounds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from pathlib import Path

# The backend is chosen before benchlib imports the lab.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--backend", choices=("openzfs", "fuse"), default="fuse")
_backend = _pre.parse_known_args()[0].backend
os.environ["ZFSREPL_LAB_BACKEND"] = _backend
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

from lab import Lab, LabHost, ZfsreplCli, claim_area, lab_session  # noqa: E402
from zfsrepl import chain, config, plan, retention  # noqa: E402
from zfsrepl.cycle import Cycle  # noqa: E402
from zfsrepl.host import Result  # noqa: E402
from zfsrepl.listing_cache import (  # noqa: E402
    LISTINGS_FILE,
    MIN_SNAPSHOTS,
    Entry,
    Kept,
    decode,
    encode,
)
from zfsrepl.naming import SnapshotNaming  # noqa: E402
from zfsrepl.snapshots import Snapshot  # noqa: E402
from zfsrepl.zfs import Zfs  # noqa: E402

ROUNDS_INPROCESS = 5
# the OpenZFS run's destination pool: a copy of the source's (Chain.copy_pool)
COPY_POOL = "zfsrepl-bench-copy"
OPENZFS = _backend == "openzfs"
# runonce --debug: a full listing is this command, on either host
FULL_LISTING = re.compile(r"running .*get -Hp -r -d 1 ")
LISTING = ["get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
           "guid,createtxg,creation,userrefs,zfsrepl:role"]

# Run by python3 in the OpenZFS VM: snapshots FS@PREFIX<first> .. <first + count - 1>,
# one lzc_snapshot each (libzfs_core's stable C interface, through ctypes)
LZC_SNAPSHOTS = """
import ctypes, sys
nv, lzc = ctypes.CDLL("libnvpair.so.3"), ctypes.CDLL("libzfs_core.so.3")
nv.fnvlist_alloc.restype = ctypes.c_void_p
nv.fnvlist_add_boolean.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
nv.fnvlist_free.argtypes = [ctypes.c_void_p]
lzc.lzc_snapshot.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
if lzc.libzfs_core_init():
    sys.exit("libzfs_core_init failed")
fs, prefix, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(first, first + count):
    snaps = nv.fnvlist_alloc()
    nv.fnvlist_add_boolean(snaps, f"{fs}@{prefix}{i}".encode())
    errors = ctypes.c_void_p()
    rc = lzc.lzc_snapshot(snaps, None, ctypes.byref(errors))
    nv.fnvlist_free(snaps)
    if rc:
        sys.exit(f"snapshot {fs}@{prefix}{i}: error {rc}")
"""


class CannedHost:
    """A zfsrepl Host whose `zfs get` answers with a listing captured beforehand."""

    def __init__(self, label: str, listing: str, usage: str) -> None:
        self.label = label
        self.listing = listing
        self.usage = usage  # `zfs` alone: its usage text, which zfsrepl probes

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        if argv == ["zfs"]:
            return Result(argv, 2, "", self.usage)
        if "get" not in argv:
            raise RuntimeError(f"unexpected command while planning: {argv}")
        return Result(argv, 0, self.listing, "")

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def close(self) -> None:
        pass


def best_of(n: int, fn: object) -> float:
    return bl.median([bl.timed(fn) for _ in range(n)])


class Chain:
    def __init__(self, lab: Lab, repl: ZfsreplCli, area_src: str, area_dst: str) -> None:
        self.lab, self.repl = lab, repl
        self.fs = f"{area_src}/many"
        self.dst = f"{area_dst}/many-zfsrepl"
        self.raw_dst = f"{area_dst}/many-raw"
        self.prefix = f"zfsrepl-{lab.src.user}-{lab.dst.user}-{lab.dst.address}-"
        lab.src.zfs("create", self.fs)
        bl.write_random(lab.src.mountpoint(self.fs) / "data.bin", 1024)
        lab.src.zfs("snapshot", f"{self.fs}@{self.prefix}1")
        bl.user_script(lab.src, f'zfs send "$1" | {bl.RAW_SSH} "$3" zfs receive -u "$2"',
                       f"{self.fs}@{self.prefix}1", self.dst, self.host)
        lab.src.zfs("snapshot", f"{self.fs}@raw-0")
        bl.user_script(lab.src, f'zfs send "$1" | {bl.RAW_SSH} "$3" zfs receive -u "$2"',
                       f"{self.fs}@raw-0", self.raw_dst, self.host)
        self.raw_k = 0
        self.copy_image = ""  # the copied pool's image (copy_pool), while there is one
        repl.write_service(name="many", filesystems=[(self.fs, self.dst)], keep=100000,
                           retries=1)

    @property
    def host(self) -> str:
        return f"{self.lab.dst.user}@{self.lab.dst.address}"

    def own(self) -> list[int]:
        return sorted(int(n[len(self.prefix):]) for n in bl.snapshot_names(self.lab.src, self.fs)
                      if n.startswith(self.prefix))

    def grow(self, total: int) -> tuple[int, float, float]:
        """Own snapshots up to `total` snapshots on the source, then the destination
        brought up to date in one -I stream; (created, create s, -I s)."""
        names = bl.snapshot_names(self.lab.src, self.fs)
        own = self.own()
        add = total - len(names)
        first = own[-1] + 1
        # one snapshot per call: neither ZFS takes two of one filesystem in one call
        # (nor in one channel program: one per filesystem and transaction group)
        create = bl.timed(lambda: self.create(first, add))
        dst_newest = bl.snapshot_names(self.lab.dst, self.dst)[-1]
        top = f"{self.prefix}{first + add - 1}"
        catchup = bl.timed(lambda: bl.user_script(
            self.lab.src, f'zfs send -I "@$4" "$1" | {bl.RAW_SSH} "$3" zfs receive -u -F "$2"',
            f"{self.fs}@{top}", self.dst, self.host, dst_newest, timeout=7200))
        return add, create, catchup

    def grow_copied(self, total: int) -> tuple[int, float, float]:
        """OpenZFS: own snapshots up to `total` on the source, then the destination made
        a copy of the source pool (see the top); (created, create s, copy s)."""
        self.drop_copy()
        own = self.own()
        add = total - len(bl.snapshot_names(self.lab.src, self.fs))
        create = bl.timed(lambda: self.create(own[-1] + 1, add))
        copy = bl.timed(self.copy_pool)
        return add, create, copy

    def copy_pool(self) -> None:
        """The destination as a copy of the source's pool: its image mirrored onto a new
        one, split off as a pool of its own (the same filesystems, snapshots and GUIDs, a
        pool GUID of its own) and imported under an altroot. Receiving 10,000 snapshots
        takes hours under emulation; a resilver copies the blocks in minutes. The copied
        filesystem becomes the service's destination, holding only the service's own
        snapshots (the raw variant's are destroyed on it), with the listing cache dropped."""
        src = self.lab.src
        pool = src.pool
        # the pool's one image: `zpool list -vHP` shows it as a full path
        listing = bl.root_script(src, 'zpool list -vHP "$1"', pool).splitlines()
        vdevs = [ln.split()[0] for ln in listing if ln.split()[0].startswith("/")]
        assert len(vdevs) == 1, f"{pool} is not made of one image: {vdevs}"
        image = vdevs[0]
        copy = f"{os.path.dirname(image)}/{COPY_POOL}.img"
        bl.root_script(src, 'truncate -s "$(stat -c %s "$2")" "$3" && '
                       'zpool attach -w "$1" "$2" "$3" && '
                       'zpool split -R "$4" "$1" "$5" "$3"',
                       pool, image, copy, f"/run/{COPY_POOL}", COPY_POOL, timeout=7200)
        self.copy_image = copy
        self.dst = f"{COPY_POOL}/{self.fs.split('/', 1)[1]}"
        raws = [n for n in bl.snapshot_names(src, self.dst) if n.startswith("raw-")]
        src.zfs("destroy", f"{self.dst}@{','.join(raws)}", timeout=3600)
        self.repl.write_service(name="many", filesystems=[(self.fs, self.dst)], keep=100000,
                                retries=1)
        src.root(["rm", "-f", str(self.repl.state_dir / "services" / "many" / LISTINGS_FILE)])

    def drop_copy(self) -> None:
        """Destroy the copied pool and its image, if there is one."""
        if self.copy_image:
            self.lab.src.root(["zpool", "destroy", "-f", COPY_POOL], timeout=3600)
            self.lab.src.root(["rm", "-f", self.copy_image])
            self.copy_image = ""

    def create(self, first: int, count: int) -> None:
        """Snapshots first .. first + count - 1 on the source, as root."""
        args = (self.fs, self.prefix, str(first), str(count))
        if OPENZFS:
            # one process calling libzfs_core: under emulation starting `zfs` for each
            # snapshot costs about 0.2 s, five times the snapshot itself
            self.lab.src.root(["python3", "-c", LZC_SNAPSHOTS, *args], timeout=7200)
        else:
            bl.root_script(self.lab.src, 'i=$3; end=$(($3 + $4)); while [ "$i" -lt "$end" ]; '
                           'do zfs snapshot "$1@$2$i"; i=$((i + 1)); done', *args)

    def zfsrepl(self) -> float:
        return bl.timed(lambda: self.repl.run("runonce", "many", timeout=1800))

    def zfsrepl_counted(self, *, drop_cache: bool) -> tuple[float, tuple[int, int]]:
        """One runonce with --debug (after removing the listing cache file where
        `drop_cache`): seconds, and the full listings it made on (source,
        destination)."""
        if drop_cache:
            path = self.repl.state_dir / "services" / "many" / LISTINGS_FILE
            self.lab.src.root(["rm", "-f", str(path)])
        out: list[str] = []

        def run() -> None:
            proc = self.repl.run("runonce", "--debug", "many", timeout=1800)
            out.append((proc.stdout + proc.stderr).decode("utf-8", "replace"))

        seconds = bl.timed(run)
        ends = [ln.rstrip().rstrip("'\"") for ln in out[0].splitlines()
                if FULL_LISTING.search(ln)]
        return seconds, (sum(1 for ln in ends if ln.endswith(" " + self.fs)),
                         sum(1 for ln in ends if ln.endswith(" " + self.dst)))

    def raw(self) -> float:
        k = self.raw_k = self.raw_k + 1
        script = (f'zfs snapshot "$1@raw-$4" && zfs send -i "@raw-$(($4 - 1))" "$1@raw-$4" | '
                  f'{bl.RAW_SSH} {bl.ZFSREPL_CIPHER_OPTIONS} "$3" zfs receive -u -F "$2"')
        return bl.timed(lambda: bl.user_script(self.lab.src, script, self.fs, self.raw_dst,
                                               self.host, str(k)))

    def planning(self) -> dict[str, float]:
        """Listing calls on each host, and planning in this process on their output."""
        src_argv, dst_argv = ["zfs", *LISTING, self.fs], ["zfs", *LISTING, self.dst]
        out: dict[str, str] = {}
        t_src = best_of(3, lambda: out.__setitem__(
            "src", self.lab.src.run(src_argv).stdout.decode()))
        t_dst = best_of(3, lambda: out.__setitem__(
            "dst", self.lab.dst.run(dst_argv).stdout.decode()))
        svc = config.load_service(self.repl.config_dir, "many")
        usage = {h.name: (lambda r: (r.stdout + r.stderr).decode())(h.run(["zfs"], check=False))
                 for h in (self.lab.src, self.lab.dst)}
        src_host = CannedHost("src", out["src"], usage["src"])
        dst_host = CannedHost("dst", out["dst"], usage["dst"])
        cycle = Cycle(svc, src_host, dst_host)
        t_survey = best_of(ROUNDS_INPROCESS, lambda: cycle.survey(take_snapshot=True))
        src_list = Zfs(src_host, ["zfs"]).snapshots([self.fs])[self.fs] or []
        dst_list = Zfs(dst_host, ["zfs"]).snapshots([self.dst])[self.dst] or []
        naming = svc.naming

        def pure() -> None:
            state = chain.compare(chain.Sender.of(src_list), chain.Receiver.of(dst_list), naming)
            p = plan.plan_chain(state)
            protected = [state.common.name] if state.common else []
            retention.decide(src_list, naming, svc.keep_source, protected)
            retention.decide(dst_list, naming, svc.keep_destination, protected)
            assert p is not None

        t_pure = best_of(ROUNDS_INPROCESS, pure)
        return {"list_src": t_src, "list_dst": t_dst, "survey": t_survey, "pure": t_pure,
                "n_src": float(len(src_list)), "n_dst": float(len(dst_list))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("openzfs", "fuse"), default="fuse")
    parser.add_argument("--counts", default="100,3000" if OPENZFS else "1000,3000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep-lab", action="store_true")
    args = parser.parse_args()
    bl.require_root()
    counts = sorted(int(c) for c in args.counts.split(","))
    if OPENZFS:
        return cached_run(counts, args.rounds, args.keep_lab)

    rows, setup_rows, plan_rows, loads = [], [], [], []
    with lab_session(keep=args.keep_lab) as lab, claim_area(lab) as area, \
            bl.service_cli(lab, f"bench-{area.name}") as repl:
        chain = Chain(lab, repl, area.src, area.dst)
        for n in counts:
            loads.append(f"{n}: {bl.load()}")
            print(f"{n} snapshots: creating", flush=True)
            added, t_create, t_catchup = chain.grow(n)
            setup_rows.append([n, added, f"{t_create:.1f}", f"{t_create / added * 1000:.1f}",
                               f"{t_catchup:.1f}", f"{t_catchup / added * 1000:.1f}"])
            chain.zfsrepl()  # untimed: the first cycle after the -I
            times: dict[str, list[float]] = {"zfsrepl": [], "raw": []}
            for i in range(args.rounds):
                for v in bl.alternate(i, ("zfsrepl", "raw")):
                    times[v].append(chain.zfsrepl() if v == "zfsrepl" else chain.raw())
                print(f"  round {i + 1}: zfsrepl {times['zfsrepl'][-1]:.2f}s  "
                      f"raw {times['raw'][-1]:.2f}s", flush=True)
            p = chain.planning()
            zr, raw = bl.median(times["zfsrepl"]), bl.median(times["raw"])
            rows.append([n, " ".join(f"{t:.2f}" for t in times["zfsrepl"]), f"{zr:.2f}",
                         " ".join(f"{t:.2f}" for t in times["raw"]), f"{raw:.2f}",
                         f"{zr / raw:.2f}"])
            plan_rows.append([n, f"{int(p['n_src'])} / {int(p['n_dst'])}",
                              f"{p['list_src'] * 1000:.0f} / {p['list_dst'] * 1000:.0f}",
                              f"{p['survey'] * 1000:.1f}", f"{p['pure'] * 1000:.1f}",
                              f"**{p['survey'] / zr * 100:.1f} %**",
                              f"{p['pure'] / zr * 100:.2f} %",
                              f"{(p['list_src'] + p['list_dst']) / zr * 100:.0f} %"])

        lines = ["## 3. Scaling with snapshots: one filesystem with many snapshots", "",
                 f"Load average at the start of each size: {'; '.join(loads)}. The snapshots "
                 "are the service's own on both sides (created on the source by one root shell "
                 "loop, one `zfs snapshot` per call as zfs-fuse requires; sent with one `-I` "
                 "stream), and the service keeps them all, so retention destroys nothing. "
                 f"{args.rounds} rounds alternating: `zfsrepl runonce` against the raw cycle "
                 "(`zfs snapshot`; `zfs send -i | ssh zfs receive -u -F`)."
                 + ("" if counts[-1] >= 10000 else
                    " 10,000 snapshots were not measured in this run: on zfs-fuse creating "
                    "and receiving them takes about 15 minutes (see the per-snapshot costs "
                    "below); run `python bench/snapshots.py --counts 1000,10000` for it."),
                 "",
                 *bl.table(["snapshots", "zfsrepl rounds (s)", "zfsrepl median (s)",
                            "raw rounds (s)", "raw median (s)", "zfsrepl / raw"], rows), "",
                 "Planning, timed in-process on the captured listings (median of "
                 f"{ROUNDS_INPROCESS}); listing calls timed on each host as its user "
                 "(through the lab's `on-src`/`on-dst` wrapper, median of 3); shares are of the "
                 "zfsrepl cycle's median:", "",
                 *bl.table(["snapshots", "listed src / dst", "listing src / dst (ms)",
                            "survey: parse + plan + retention (ms)",
                            "compare + plan + retention.decide (ms)",
                            "survey share (target < 5 %)",
                            "pure share", "listing share"], plan_rows), "",
                 "Setting up (for scale: what zfs-fuse costs per snapshot):", "",
                 *bl.table(["target", "created", "create (s)", "ms per snapshot",
                            "-I to destination (s)", "ms per snapshot received"], setup_rows), ""]
        # written before the area is destroyed: with 10,000 snapshots zfs-fuse may take
        # longer to destroy them than the lab waits, and the figures must not be lost
        bl.write_section("snapshots", lines)
        print("\n".join(lines))
    return 0


VARIANTS = ("raw", "full", "cached")


def inprocess(n: int) -> float:
    """Seconds (median of ROUNDS_INPROCESS, on this machine) of what grows with the
    count in a cycle that the listing cache spares both full listings: reading and
    writing the kept listings of one filesystem with `n` snapshots on each side, and
    comparing, planning and deciding retention over them."""
    naming = SnapshotNaming("src", "dst", "desthost")
    snaps = [Snapshot("tank/a", naming.format(i), 10**12 + i, i, 1_700_000_000 + i, 0)
             for i in range(1, n + 1)]
    replica = [dataclasses.replace(s, filesystem="backup/a", createtxg=s.createtxg + 7)
               for s in snaps]
    kept = Kept({"service": "many"})
    kept.entries["source"]["tank/a"] = Entry(1, 0.0, tuple(snaps))
    kept.entries["destination"]["backup/a"] = Entry(1, 0.0, tuple(replica))
    new_snap = Snapshot("tank/a", naming.format(n + 1), 10**13, n + 1, 1_800_000_000, 0)

    def cycle() -> None:
        back = decode(encode(kept))
        src = [*back.entries["source"]["tank/a"].snapshots, new_snap]
        dst = list(back.entries["destination"]["backup/a"].snapshots)
        state = chain.compare(chain.Sender.of(src), chain.Receiver.of(dst), naming)
        assert plan.plan_chain(state) is not None
        protected = [state.common.name] if state.common else []
        retention.decide(src, naming, n + 10, protected)
        retention.decide(dst, naming, n + 10, protected)

    return best_of(ROUNDS_INPROCESS, cycle)


def allocated(host: LabHost) -> int:
    """Bytes allocated in the host's pool: what the snapshots cost in space."""
    return int(host.root(["zpool", "list", "-Hp", "-o", "allocated", host.pool]).stdout)


def cached_run(counts: list[int], rounds: int, keep_lab: bool) -> int:
    """The OpenZFS run: raw, zfsrepl without and with the listing cache (see the top)."""
    times: dict[tuple[int, str], list[float]] = {}
    listed: dict[tuple[int, str], set[tuple[int, int]]] = {}
    loads: list[str] = []
    setup: list[list[object]] = []
    with lab_session(keep=keep_lab) as lab, claim_area(lab) as area, \
            bl.service_cli(lab, f"bench-{area.name}") as repl:
        chain_ = Chain(lab, repl, area.src, area.dst)
        try:
            cached_rounds(lab, chain_, counts, rounds, times, listed, loads, setup)
        finally:
            chain_.drop_copy()
        # written before the area is destroyed, which takes long with 10,000 snapshots
        lines = cached_section(counts, rounds, loads, setup, times, listed)
        bl.write_section("snapshots-openzfs", lines)
        print("\n".join(lines), flush=True)
    return 0


def cached_rounds(lab: Lab, chain_: Chain, counts: list[int], rounds: int,
                  times: dict[tuple[int, str], list[float]],
                  listed: dict[tuple[int, str], set[tuple[int, int]]],
                  loads: list[str], setup: list[list[object]]) -> None:
    """Each count in turn: the source grown to it and copied to the destination, one
    untimed cycle, then the rounds of VARIANTS, into times, listed, loads and setup."""
    for n in counts:
        loads.append(f"{n}: {bl.load()}")
        print(f"{n} snapshots: creating", flush=True)
        before = allocated(lab.src)
        added, t_create, t_copy = chain_.grow_copied(n)
        per_snapshot = (allocated(lab.src) - before) / max(added, 1) / 1024
        setup.append([n, added, f"{t_create:.1f}", f"{t_copy:.1f}",
                      f"{per_snapshot:.0f}"])
        print(f"  {added} created in {t_create:.1f}s, copied in {t_copy:.1f}s",
              flush=True)
        chain_.zfsrepl()  # untimed: the first cycle after the copy
        for i in range(rounds):
            for v in VARIANTS:  # in this order: see the top
                if v == "raw":
                    seconds = chain_.raw()
                else:
                    seconds, calls = chain_.zfsrepl_counted(drop_cache=(v == "full"))
                    listed.setdefault((n, v), set()).add(calls)
                times.setdefault((n, v), []).append(seconds)
            print(f"  {n} snapshots, round {i + 1}: "
                  + "  ".join(f"{v} {times[(n, v)][-1]:.2f}s" for v in VARIANTS),
                  flush=True)


def cached_section(counts: list[int], rounds: int, loads: list[str], setup: list[list[object]],
                   times: dict[tuple[int, str], list[float]],
                   listed: dict[tuple[int, str], set[tuple[int, int]]]) -> list[str]:
    med = {k: bl.median(v) for k, v in times.items()}

    def shown(n: int, v: str) -> str:
        return ", ".join(f"{s} / {d}" for s, d in sorted(listed[(n, v)]))

    rows = [[n, *(f"{med[(n, v)]:.2f}" for v in VARIANTS),
             " ".join(f"{t:.2f}" for t in times[(n, "cached")]),
             shown(n, "full"), shown(n, "cached"),
             f"{med[(n, 'full')] / med[(n, 'cached')]:.2f}"] for n in counts]
    first, last = counts[0], counts[-1]
    ratio = med[(last, "cached")] / med[(first, "cached")]
    ratio_full = med[(last, "full")] / med[(first, "full")]
    # below MIN_SNAPSHOTS in all a service lists in full without a look, by design
    big = [n for n in counts if 2 * n >= MIN_SNAPSHOTS]
    used = all(listed[(n, "cached")] == {(0, 0)} for n in big)
    lines = ["## 3b. Scaling with snapshots on OpenZFS: the listing cache", "",
             "On current OpenZFS in the VM lab (emulated: only ratios of the same run "
             f"travel). Load average at the start of each size: {'; '.join(loads)}. One "
             "filesystem holding the service's own snapshots on both sides, kept all "
             f"(nothing destroyed). {rounds} rounds, each in this order: `raw` (`zfs "
             "snapshot`; `zfs send -i | ssh zfs receive -u -F`), `full` (`zfsrepl runonce` "
             "with the listing cache file removed first: both sides listed in full, as "
             "without the cache) and `cached` (`zfsrepl runonce` right after it). Full "
             "listings per zfsrepl cycle (source / destination) are counted in its "
             "`--debug` output. A service with fewer than "
             f"{MIN_SNAPSHOTS:,} snapshots in all (both sides) lists in full without the "
             "cache's looks, by design: there its `cached` cycle is a plain full listing.",
             "",
             *bl.table(["snapshots", "raw median (s)", "full median (s)",
                        "cached median (s)", "cached rounds (s)",
                        "full listings, full", "full listings, cached", "full / cached"],
                       rows), "",
             f"**Target: a cycle at {last:,} snapshots under twice one at {first:,}: "
             f"cached {med[(last, 'cached')]:.2f} s / {med[(first, 'cached')]:.2f} s = "
             f"{ratio:.2f}** ({'met' if ratio < 2 else 'missed'}); without the cache "
             f"(full) the same ratio is {ratio_full:.2f}."
             + ("" if used else " Some `cached` cycles listed in full (see the column): "
                "their figures do not stand for the cache."), "",
             "Setting up (the source's snapshots made by one process through libzfs_core; "
             "the destination a copy of the source's pool: `zpool attach`, resilver, "
             "`zpool split`):",
             "", *bl.table(["target", "created", "create (s)", "copy to destination (s)",
                            "source pool KiB allocated per snapshot"], setup), ""]
    # what grows with the count in a cached cycle, also at sizes the lab cannot hold
    sizes = sorted({*counts, 10000})
    grows = {n: inprocess(n) for n in sizes}
    lines += ["What grows with the count in a cycle that lists neither side (reading and "
              "writing the kept listings, comparing, planning and retention over one "
              f"filesystem's snapshots on each side), in-process on the host, median of "
              f"{ROUNDS_INPROCESS}; the VM's emulated CPU is slower:", "",
              *bl.table(["snapshots per side", "in-process (ms)"],
                        [[n, f"{grows[n] * 1000:.1f}"] for n in sizes]), ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
