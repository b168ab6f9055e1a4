"""Cycle cost: 1, 10 and 100 filesystems in one service, zfsrepl against the raw pipeline.

Two situations: nothing changed since the last cycle, and a small change (64 KiB
written to every filesystem before the cycle). Both tools are in a steady state
(four cycles done before measuring, so that retention destroys one snapshot per
filesystem and side each cycle, keep = 3). In the same run, alternating:

    zfsrepl:  zfsrepl runonce for the service of N filesystems
    parallel: the same service with `parallel = K` (--parallel; the same chains: only
              how many filesystems it sends and prunes at once differs)
    raw:      the minimal shell script that does the same job: one ssh ControlMaster
              for the cycle; per filesystem `zfs snapshot`, `zfs send -i | ssh zfs
              receive -u -F`, `zfs destroy` of the oldest snapshot on each side

Wall time per cycle is measured without any wrapper. Then one more cycle of each is
run with logging wrappers named `zfs` and `ssh` first on the source user's PATH and
a logging `zfs` on the destination (named by absolute path as the service's
`destination.zfs_command`, and in the raw script's remote commands: the lab's sshd
sets its own PATH), counting the `zfs` and `ssh` processes a cycle starts.

Run as root from the repository root:

    python bench/cycle_cost.py [--counts 1,10,100] [--rounds 5] [--rounds-large 3]
                               [--parallel 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from lab import Lab, ZfsreplCli, claim_area, lab_session

KEEP = 3
WARMUP = 4
CHANGE_KIB = 64

RAW_CYCLE = r"""
set -e
n=$1 src=$2 dst=$3 k=$4 keep=$5 dzfs=$6 host=$7
cmdir=$(mktemp -d)
cm=$cmdir/cm
ssh $SSHOPTS -M -N -f -S "$cm" -o ControlPersist=no "$host" </dev/null >/dev/null
i=1
while [ "$i" -le "$n" ]; do
    fs=$src/fs$i d=$dst/fs$i
    zfs snapshot "$fs@raw-$k"
    if [ "$k" = 1 ]; then
        zfs send "$fs@raw-$k" | ssh $SSHOPTS -S "$cm" "$host" "$dzfs" receive -u "$d"
    else
        zfs send -i "@raw-$((k - 1))" "$fs@raw-$k" |
            ssh $SSHOPTS -S "$cm" "$host" "$dzfs" receive -u -F "$d"
    fi
    old=$((k - keep))
    if [ "$old" -ge 1 ]; then
        zfs destroy "$fs@raw-$old"
        ssh $SSHOPTS -S "$cm" "$host" "$dzfs" destroy "$d@raw-$old"
    fi
    i=$((i + 1))
done
ssh $SSHOPTS -S "$cm" -O exit "$host" 2>/dev/null
rm -rf "$cmdir"
"""


class Setup:
    """N source filesystems, a zfsrepl service and a raw chain for them."""

    def __init__(self, lab: Lab, repl: ZfsreplCli, area_src: str, area_dst: str, n: int,
                 counter: bl.CallCounter, parallel: int) -> None:
        self.lab, self.repl, self.n, self.counter = lab, repl, n, counter
        self.src = f"{area_src}/n{n}"
        self.dst_zr = f"{area_dst}/n{n}-zfsrepl"
        self.dst_raw = f"{area_dst}/n{n}-raw"
        lab.src.zfs("create", self.src)
        bl.root_script(lab.src, 'i=1; while [ "$i" -le "$2" ]; do zfs create "$1/fs$i"; '
                       "i=$((i + 1)); done", self.src, str(n))
        for d in (self.dst_zr, self.dst_raw):
            lab.dst.zfs("create", d)
        self.mnt = lab.src.mountpoint(self.src)
        self.change(seed=0)
        pairs = [(f"{self.src}/fs{i}", f"{self.dst_zr}/fs{i}") for i in range(1, n + 1)]
        self.name = f"cyc{n}"
        repl.write_service(name=self.name, filesystems=pairs, keep=KEEP, retries=1)
        # the same service (same snapshot names, same chains), its remote zfs counted
        repl.write_service(name=f"{self.name}count", filesystems=pairs, keep=KEEP, retries=1,
                           destination={"zfs_command": counter.dst_zfs})
        if parallel > 1:
            repl.write_service(name=f"{self.name}par", filesystems=pairs, keep=KEEP,
                               retries=1, parallel=parallel)
        self.k = 0

    def change(self, seed: int) -> None:
        for i in range(1, self.n + 1):
            bl.write_random(self.mnt / f"fs{i}" / f"change-{seed % 2}.bin", CHANGE_KIB)

    def zfsrepl(self, counted: bool = False, parallel: bool = False) -> float:
        name = f"{self.name}count" if counted else f"{self.name}par" if parallel else self.name
        env = self.counter.source_env() if counted else None
        return bl.timed(lambda: self.repl.run("runonce", name, env=env, timeout=1800))

    def raw(self, counted: bool = False) -> float:
        self.k += 1
        env = {**(self.counter.source_env() if counted else {}),
               "SSHOPTS": f"-o BatchMode=yes -o LogLevel=ERROR {bl.ZFSREPL_CIPHER_OPTIONS}"}
        args = [str(self.n), self.src, self.dst_raw, str(self.k), str(KEEP),
                self.counter.dst_zfs if counted else "zfs",
                f"{self.lab.dst.user}@{self.lab.dst.address}"]
        return bl.timed(lambda: bl.user_script(self.lab.src, RAW_CYCLE, *args, env=env))


def measure(s: Setup, rounds: int, change: bool, variants: tuple[str, ...]
            ) -> tuple[dict[str, list[float]], dict[str, bl.Calls]]:
    times: dict[str, list[float]] = {v: [] for v in variants}
    run = {"zfsrepl": s.zfsrepl, "raw": s.raw, "parallel": lambda: s.zfsrepl(parallel=True)}
    for i in range(rounds):
        if change:
            s.change(seed=i + 1)
        for v in bl.alternate(i, variants):
            times[v].append(run[v]())
        print(f"  {s.n} fs, {'small change' if change else 'no change'}, round {i + 1}: "
              + "  ".join(f"{v} {times[v][-1]:.2f}s" for v in variants), flush=True)
    calls: dict[str, bl.Calls] = {}
    for v in ("zfsrepl", "raw"):
        if change:
            s.change(seed=rounds + 1)
        s.counter.reset()
        s.zfsrepl(counted=True) if v == "zfsrepl" else s.raw(counted=True)
        calls[v] = s.counter.read()
    return times, calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,10,100",
                        help="numbers of filesystems, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rounds-large", type=int, default=3,
                        help="rounds for 100 filesystems or more")
    parser.add_argument("--parallel", type=int, default=4,
                        help="also measure the service with this `parallel` (1: not)")
    parser.add_argument("--keep-lab", action="store_true")
    args = parser.parse_args()
    bl.require_root()
    counts = [int(c) for c in args.counts.split(",")]
    variants = ("zfsrepl", "raw", *(("parallel",) if args.parallel > 1 else ()))

    results: dict[tuple[int, bool], tuple[dict[str, list[float]], dict[str, bl.Calls]]] = {}
    loads: dict[int, str] = {}
    with lab_session(keep=args.keep_lab) as lab, claim_area(lab) as area, \
            bl.service_cli(lab, f"bench-{area.name}") as repl, bl.CallCounter(lab) as counter:
        for n in counts:
            loads[n] = bl.load()
            print(f"{n} filesystems: setting up (load {loads[n]})", flush=True)
            s = Setup(lab, repl, area.src, area.dst, n, counter, args.parallel)
            for _ in range(WARMUP):
                s.zfsrepl()
                s.raw()
            rounds = args.rounds_large if n >= 100 else args.rounds
            for change in (False, True):
                results[(n, change)] = measure(s, rounds, change, variants)

    lines = ["## 2. Cycle cost: 1, 10 and 100 filesystems in one service", "",
             "Load average at the start of each size: "
             + ", ".join(f"{n} fs: {loads[n]}" for n in counts) + ". "
             f"Steady state (keep = {KEEP}, {WARMUP} cycles before measuring), the two "
             "variants alternating. `zfsrepl`: a whole `zfsrepl runonce`; `raw`: the minimal "
             "shell script doing the same (one ControlMaster per cycle; per filesystem "
             "snapshot, `send -i | ssh receive -u -F`, destroy the oldest on each side), "
             "with zfsrepl's cipher. 'small change': 64 KiB of new data in every filesystem. "
             "Calls counted in one further cycle of each, with logging wrappers; `ssh` "
             "includes the ControlMaster process (and, for raw, its `-O exit`)."
             + (f" `parallel`: the same zfsrepl service with `parallel = {args.parallel}` "
                "(same chains, same calls; up to that many filesystems sent and pruned at "
                "once)." if "parallel" in variants else ""), "",
             "Peer tools do not run on zfs-fuse (syncoid manages a first full send only, "
             "zfs-autobackup stops at `zfs get -t`, which zfs-fuse lacks): they are compared "
             "on current OpenZFS in section 7 (peers.py).", ""]
    rows = []
    for (n, change), (times, calls) in results.items():
        zr, raw = bl.median(times["zfsrepl"]), bl.median(times["raw"])
        c, r = calls["zfsrepl"], calls["raw"]
        par = ([f"{bl.median(times['parallel']):.2f}"] if "parallel" in variants else [])
        rows.append([n, "small change" if change else "no change",
                     f"{zr:.2f}", f"{raw:.2f}", *par, f"{zr / raw:.2f}",
                     f"{c.local_zfs} / {c.ssh} / {c.remote_zfs}",
                     f"{r.local_zfs} / {r.ssh} / {r.remote_zfs}"])
    par_head = ([f"parallel = {args.parallel} median (s)"] if "parallel" in variants else [])
    lines += bl.table(["filesystems", "situation", "zfsrepl median (s)", "raw median (s)",
                       *par_head, "zfsrepl / raw", "zfsrepl calls: local zfs / ssh / remote zfs",
                       "raw calls: local zfs / ssh / remote zfs"], rows)
    lines.append("")
    lo, hi = min(counts), max(counts)
    for change in (False, True):
        if (lo, change) in results and (hi, change) in results and lo != hi:
            zr_by = {n: bl.median(results[(n, change)][0]["zfsrepl"]) for n in (lo, hi)}
            raw_by = {n: bl.median(results[(n, change)][0]["raw"]) for n in (lo, hi)}
            text = (f"- {'small change' if change else 'no change'}: {hi} filesystems "
                    f"cost **{zr_by[hi] / zr_by[lo]:.1f} x** {lo} with zfsrepl (target < 3), "
                    f"{raw_by[hi] / raw_by[lo]:.1f} x with the raw script")
            if "parallel" in variants:
                par_hi = bl.median(results[(hi, change)][0]["parallel"])
                text += (f"; with parallel = {args.parallel}, {hi} filesystems cost "
                         f"**{par_hi / zr_by[lo]:.1f} x** {lo} (of zfsrepl at {lo}, "
                         f"parallel = 1)")
            lines.append(text)
    lines += ["", "Calls per cycle, by command:", ""]
    for (n, change), (_, calls) in results.items():
        for v in ("zfsrepl", "raw"):
            lines.append(f"- {n} fs, {'small change' if change else 'no change'}, {v}: "
                         f"{calls[v].breakdown()}")
    lines.append("")
    bl.write_section("cycle_cost", lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
