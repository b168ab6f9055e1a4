"""What batching would buy: one recursive stream for a subtree against one per filesystem.

Not a measurement of zfsrepl: evidence for the fix proposed in RESULTS.md. On the
same N filesystems below one parent (1 and 100), in the same run, alternating, two
raw cycles with one ssh ControlMaster each (keep = 3):

    per-fs:     per filesystem zfs snapshot, send -i | ssh receive -u -F, destroy the
                oldest on each side (the raw script of cycle_cost.py: what zfsrepl does)
    recursive:  zfs snapshot -r PARENT@new; zfs send -R -i @prev PARENT@new | ssh zfs
                receive -u -F DSTPARENT; zfs destroy -r PARENT@oldest (receive -F of the
                -R stream destroys it on the destination: one call and one ssh less)

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

from lab import Lab, claim_area, lab_session

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


class Pair:
    def __init__(self, lab: Lab, area_src: str, area_dst: str, n: int) -> None:
        self.lab, self.n = lab, n
        self.src = f"{area_src}/r{n}"
        self.dst_fs = f"{area_dst}/r{n}-perfs"
        self.dst_rec = f"{area_dst}/r{n}-recursive"  # created by the first -R receive
        lab.src.zfs("create", self.src)
        bl.root_script(lab.src, 'i=1; while [ "$i" -le "$2" ]; do zfs create "$1/fs$i"; '
                       "i=$((i + 1)); done", self.src, str(n))
        lab.dst.zfs("create", self.dst_fs)
        mnt = lab.src.mountpoint(self.src)
        for i in range(1, n + 1):
            bl.write_random(mnt / f"fs{i}" / "data.bin", 64)
        self.k = {"per-fs": 0, "recursive": 0}
        self.env = {"SSHOPTS": f"-o BatchMode=yes -o LogLevel=ERROR {bl.ZFSREPL_CIPHER_OPTIONS}"}
        self.host = f"{lab.dst.user}@{lab.dst.address}"

    def cycle(self, variant: str) -> float:
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
    variants = ("per-fs", "recursive")
    med: dict[tuple[int, str], float] = {}
    rows = []
    load = bl.load()
    with lab_session(keep=args.keep_lab) as lab, claim_area(lab) as area:
        for n in counts:
            pair = Pair(lab, area.src, area.dst, n)
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
    lines = ["## 6. What batching would buy (raw cycles, not zfsrepl)", "",
             f"Load average at the start: {load}. Evidence for the proposals below: the "
             "same filesystems below one parent, replicated by a raw per-filesystem cycle "
             "(what zfsrepl does today, see section 2) and by a raw recursive cycle "
             "(`zfs snapshot -r`, one `zfs send -R -i` stream, `zfs destroy -r`; the `-R` "
             "receive with `-F` drops the destination's oldest itself). keep = 3, "
             f"{WARMUP} cycles before measuring, {args.rounds} rounds alternating.", "",
             *bl.table(["filesystems", "cycle", "rounds (s)", "median (s)"], rows), ""]
    lo, hi = min(counts), max(counts)
    if lo != hi:
        for v in variants:
            lines.append(f"- {v}: {hi} filesystems cost **{med[(hi, v)] / med[(lo, v)]:.1f} x** "
                         f"{lo}")
        lines.append(f"- at {hi} filesystems, recursive / per-fs: "
                     f"**{med[(hi, 'recursive')] / med[(hi, 'per-fs')]:.2f}**")
    lines.append("")
    bl.write_section("recursive", lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
