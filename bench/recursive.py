"""One stream for a subtree against one per filesystem: raw cycles and zfsrepl's.

N filesystems below one parent (1 and 100), in the same run, alternating, keep = 3;
two raw cycles with one ssh ControlMaster each:

    per-fs:     per filesystem zfs snapshot, send -i | ssh receive -u -F, destroy the
                oldest on each side (the raw script of cycle_cost.py: what zfsrepl does)
    recursive:  zfs snapshot -r PARENT@new; zfs send -R -i @prev PARENT@new | ssh zfs
                receive -u -F DSTPARENT; zfs destroy -r PARENT@oldest (receive -F of the
                -R stream destroys it on the destination: one call and one ssh less)

and two zfsrepl services, each on a tree of its own (two services on one tree would
take each other's snapshots for their own):

    zfsrepl per-fs:     `zfsrepl runonce` of a service listing the N filesystems
    zfsrepl recursive:  `zfsrepl runonce` of a service with recursive = true and the
                        parent as its one filesystem (snapshot -r, one send -R, one
                        receive without -F, destroy -r)

Every command here works on zfs-fuse (pool version 23) and on OpenZFS.

Run as root from the repository root:

    python bench/recursive.py [--counts 1,100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
from cycle_cost import RAW_CYCLE

from lab import Lab, ZfsreplCli, claim_area, lab_session

KEEP = 3
WARMUP = 4

RECURSIVE_CYCLE = r"""
set -e
p=$1 dp=$2 k=$3 keep=$4 host=$5
cmdir=$(mktemp -d)
cm=$cmdir/cm
ssh $SSHOPTS -M -N -f -S "$cm" -o ControlPersist=no "$host" </dev/null >/dev/null
zfs snapshot -r "$p@rr-$k"
if [ "$k" = 1 ]; then
    zfs send -R "$p@rr-$k" | ssh $SSHOPTS -S "$cm" "$host" zfs receive -u "$dp"
else
    zfs send -R -i "@rr-$((k - 1))" "$p@rr-$k" |
        ssh $SSHOPTS -S "$cm" "$host" zfs receive -u -F "$dp"
fi
old=$((k - keep))
if [ "$old" -ge 1 ]; then
    zfs destroy -r "$p@rr-$old"
fi
ssh $SSHOPTS -S "$cm" -O exit "$host" 2>/dev/null
rm -rf "$cmdir"
"""


VARIANTS = ("per-fs", "recursive", "zfsrepl per-fs", "zfsrepl recursive")


def tree(lab: Lab, src: str, n: int) -> None:
    lab.src.zfs("create", src)
    bl.root_script(lab.src, 'i=1; while [ "$i" -le "$2" ]; do zfs create "$1/fs$i"; '
                   "i=$((i + 1)); done", src, str(n))
    mnt = lab.src.mountpoint(src)
    for i in range(1, n + 1):
        bl.write_random(mnt / f"fs{i}" / "data.bin", 64)


class Pair:
    def __init__(self, lab: Lab, repl: ZfsreplCli, area_src: str, area_dst: str,
                 n: int) -> None:
        self.lab, self.repl, self.n = lab, repl, n
        self.src = f"{area_src}/r{n}"
        self.dst_fs = f"{area_dst}/r{n}-perfs"
        self.dst_rec = f"{area_dst}/r{n}-recursive"  # created by the first -R receive
        tree(lab, self.src, n)
        lab.dst.zfs("create", self.dst_fs)
        # zfsrepl's two services, on trees of their own
        zsrc, zrec = f"{area_src}/z{n}", f"{area_src}/zr{n}"
        tree(lab, zsrc, n)
        tree(lab, zrec, n)
        lab.dst.zfs("create", f"{area_dst}/z{n}")
        repl.write_service(name=f"perfs{n}", keep=KEEP, retries=1, filesystems=[
            (f"{zsrc}/fs{i}", f"{area_dst}/z{n}/fs{i}") for i in range(1, n + 1)])
        repl.write_service(name=f"rec{n}", keep=KEEP, retries=1, recursive=True,
                           filesystems=[(zrec, f"{area_dst}/zr{n}")])
        self.k = {"per-fs": 0, "recursive": 0}
        self.env = {"SSHOPTS": f"-o BatchMode=yes -o LogLevel=ERROR {bl.ZFSREPL_CIPHER_OPTIONS}"}
        self.host = f"{lab.dst.user}@{lab.dst.address}"

    def cycle(self, variant: str) -> float:
        if variant.startswith("zfsrepl"):
            name = f"{'rec' if variant.endswith('recursive') else 'perfs'}{self.n}"
            return bl.timed(lambda: self.repl.run("runonce", name, timeout=1800))
        k = self.k[variant] = self.k[variant] + 1
        if variant == "per-fs":
            args = [str(self.n), self.src, self.dst_fs, str(k), str(KEEP), "zfs", self.host]
            script = RAW_CYCLE
        else:
            args = [self.src, self.dst_rec, str(k), str(KEEP), self.host]
            script = RECURSIVE_CYCLE
        return bl.timed(lambda: bl.user_script(self.lab.src, script, *args, env=self.env))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,100")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep-lab", action="store_true")
    args = parser.parse_args()
    bl.require_root()
    counts = [int(c) for c in args.counts.split(",")]
    variants = VARIANTS
    med: dict[tuple[int, str], float] = {}
    rows: list[list[object]] = []
    load = bl.load()
    with lab_session(keep=args.keep_lab) as lab, claim_area(lab) as area, \
            bl.service_cli(lab, f"bench-{area.name}") as repl:
        for n in counts:
            pair = Pair(lab, repl, area.src, area.dst, n)
            for _ in range(WARMUP):
                for v in variants:
                    pair.cycle(v)
            times: dict[str, list[float]] = {v: [] for v in variants}
            for i in range(args.rounds):
                for v in bl.alternate(i, variants):
                    times[v].append(pair.cycle(v))
                print(f"{n} fs round {i + 1}: "
                      + "  ".join(f"{v} {times[v][-1]:.2f}s" for v in variants), flush=True)
            for v in variants:
                med[(n, v)] = bl.median(times[v])
                rows.append([n, v, " ".join(f"{t:.2f}" for t in times[v]),
                             f"{med[(n, v)]:.2f}"])
        # written before the area is released: a busy dataset there loses no figure
        report(load, counts, med, rows, args.rounds)
    return 0


def report(load: str, counts: list[int], med: dict[tuple[int, str], float],
           rows: list[list[object]], rounds: int) -> None:
    variants = VARIANTS
    lines = ["## 6. One stream for a subtree: `recursive = true`", "",
             f"Load average at the start: {load}. N filesystems below one parent, "
             "replicated four ways in the same run, alternating: a raw per-filesystem "
             "cycle (`per-fs`, the script of section 2), a raw recursive cycle "
             "(`recursive`: `zfs snapshot -r`, one `zfs send -R -i` stream, `zfs destroy "
             "-r`; its receive uses `-F`, which drops the destination's oldest itself), "
             "and `zfsrepl runonce` of a service listing the N filesystems (`zfsrepl "
             "per-fs`) and of one with `recursive = true` (`zfsrepl recursive`: one "
             "`snapshot -r`, one `send -R`, one receive without `-F`, `destroy -r` on each "
             "side), each zfsrepl service on a tree of its own. keep = 3, "
             f"{WARMUP} cycles before measuring, {rounds} rounds alternating.", "",
             *bl.table(["filesystems", "cycle", "rounds (s)", "median (s)"], rows), ""]
    lo, hi = min(counts), max(counts)
    if lo != hi:
        for v in variants:
            lines.append(f"- {v}: {hi} filesystems cost **{med[(hi, v)] / med[(lo, v)]:.1f} x** "
                         f"{lo}")
    for n in counts:
        raw = med[(n, "recursive")] / med[(n, "per-fs")]
        ours = med[(n, "zfsrepl recursive")] / med[(n, "zfsrepl per-fs")]
        against = med[(n, "zfsrepl recursive")] / med[(n, "recursive")]
        lines.append(f"- at {n} filesystem(s), raw recursive / raw per-fs: **{raw:.2f}**; "
                     f"zfsrepl recursive / zfsrepl per-fs: **{ours:.2f}**; zfsrepl "
                     f"recursive / raw recursive: **{against:.2f}**")
    lines.append("")
    bl.write_section("recursive", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
