"""skip_unchanged: what a cycle costs that finds nothing changed, 1, 10 and 100 filesystems.

Target: on OpenZFS, with no change, 100 filesystems cost less than 3 times 1
filesystem with `skip_unchanged = true`. For each size two services run, each on a
tree of its own (the same snapshot names would otherwise mix their chains), in the
same run and alternating:

    skip     zfsrepl runonce, skip_unchanged = true, keep = 3
    every    the same without it: a snapshot, a send and a destroy per filesystem

after WARMUP cycles each (the first one sends everything). Then ROUNDS rounds of one
`runonce` of each, nothing written in between: wall time, and how many filesystems
the skip variant left alone (from its log line), so a figure never stands for a
cycle that skipped nothing.

By default on the OpenZFS lab (the VM, ``--backend openzfs``; it is started and
removed as for peers.py). On zfs-fuse (``--backend fuse``) ZFS has no `written`
property and the key has no effect: the run checks that this script works, and the
section says so.

Run as root from the repository root:

    python bench/skip_unchanged.py [--backend openzfs] [--counts 1,10,100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

# The backend is chosen before benchlib imports the lab.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--backend", choices=("openzfs", "fuse"), default="openzfs")
_backend = _pre.parse_known_args()[0].backend
os.environ["ZFSREPL_LAB_BACKEND"] = _backend
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

from lab import Lab, ZfsreplCli, claim_area, lab_session  # noqa: E402

KEEP = 3
WARMUP = 3
VARIANTS = ("skip", "every")
SKIPPED = re.compile(r"skip_unchanged: (\d+) of (\d+) filesystem")


class Setup:
    def __init__(self, lab: Lab, repl: ZfsreplCli, area_src: str, area_dst: str,
                 n: int) -> None:
        self.repl = repl
        self.names: dict[str, str] = {}
        for v in VARIANTS:
            src, dst = f"{area_src}/n{n}-{v}", f"{area_dst}/n{n}-{v}"
            lab.src.zfs("create", src)
            bl.root_script(lab.src, 'i=1; while [ "$i" -le "$2" ]; do zfs create "$1/fs$i"; '
                           "i=$((i + 1)); done", src, str(n))
            lab.dst.zfs("create", dst)
            mnt = lab.src.mountpoint(src)
            for i in range(1, n + 1):
                bl.write_random(mnt / f"fs{i}" / "data.bin", 64)
            pairs = [(f"{src}/fs{i}", f"{dst}/fs{i}") for i in range(1, n + 1)]
            self.names[v] = f"skip{n}{v}"
            repl.write_service(name=self.names[v], filesystems=pairs, keep=KEEP, retries=1,
                               skip_unchanged=(v == "skip"))

    def cycle(self, v: str) -> tuple[float, int]:
        """One runonce of variant `v`: seconds, and filesystems it skipped."""
        out: list[str] = []

        def run() -> None:
            proc = self.repl.run("runonce", self.names[v], timeout=3600)
            out.append(proc.stdout.decode("utf-8", "replace")
                       + proc.stderr.decode("utf-8", "replace"))

        seconds = bl.timed(run)
        m = SKIPPED.search(out[0])
        return seconds, int(m.group(1)) if m else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("openzfs", "fuse"), default="openzfs")
    parser.add_argument("--counts", default="1,10,100")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep-lab", action="store_true")
    args = parser.parse_args()
    bl.require_root()
    counts = [int(c) for c in args.counts.split(",")]

    times: dict[tuple[int, str], list[float]] = {}
    skipped: dict[int, list[int]] = {}
    loads: dict[int, str] = {}
    with lab_session(keep=args.keep_lab) as lab, claim_area(lab) as area, \
            bl.service_cli(lab, f"bench-{area.name}") as repl:
        for n in counts:
            loads[n] = bl.load()
            print(f"{n} filesystems: setting up (load {loads[n]})", flush=True)
            s = Setup(lab, repl, area.src, area.dst, n)
            for _ in range(WARMUP):
                for v in VARIANTS:
                    s.cycle(v)
            skipped[n] = []
            for i in range(args.rounds):
                for v in bl.alternate(i, VARIANTS):
                    seconds, left = s.cycle(v)
                    times.setdefault((n, v), []).append(seconds)
                    if v == "skip":
                        skipped[n].append(left)
                print(f"  {n} fs, round {i + 1}: "
                      + "  ".join(f"{v} {times[(n, v)][-1]:.2f}s" for v in VARIANTS)
                      + f" (skip left {skipped[n][-1]} of {n} alone)", flush=True)
        report(counts, args.rounds, times, skipped, loads)

    return 0


def report(counts: list[int], rounds: int, times: dict[tuple[int, str], list[float]],
           skipped: dict[int, list[int]], loads: dict[int, str]) -> None:
    """Write the section (before the lab is cleaned up: a cleanup that fails under
    load must not lose the figures)."""
    med = {k: bl.median(v) for k, v in times.items()}
    rows = [[n, " ".join(f"{t:.2f}" for t in times[(n, "skip")]), f"{med[(n, 'skip')]:.2f}",
             " ".join(f"{t:.2f}" for t in times[(n, "every")]), f"{med[(n, 'every')]:.2f}",
             f"{med[(n, 'every')] / med[(n, 'skip')]:.2f}",
             f"{min(skipped[n])} to {max(skipped[n])} of {n}"] for n in counts]
    first, last = counts[0], counts[-1]
    ratio = med[(last, "skip")] / med[(first, "skip")]
    ratio_every = med[(last, "every")] / med[(first, "every")]
    where = ("current OpenZFS in the VM lab (emulated: only ratios of the same run travel)"
             if _backend == "openzfs" else
             "zfs-fuse, which has no `written` property: the key has no effect there, and "
             "these figures only show that the benchmark runs")
    lines = ["## 10. skip_unchanged: a cycle that finds nothing changed", "",
             f"On {where}. Load average at the start of each size: "
             + ", ".join(f"{n} fs: {loads[n]}" for n in counts) + ". "
             f"Two services per size, each on its own tree, keep = {KEEP}, {WARMUP} cycles "
             f"each before measuring, then {rounds} rounds alternating, nothing written "
             "in between: `skip` has `skip_unchanged = true`, `every` does not (a snapshot, "
             "send and destroy per filesystem each cycle). Wall time of a whole `zfsrepl "
             "runonce`.", "",
             *bl.table(["filesystems", "skip rounds (s)", "skip median (s)",
                        "every rounds (s)", "every median (s)", "every / skip",
                        "filesystems skipped per cycle"], rows), "",
             f"- {last} filesystems cost **{ratio:.2f} x** {first} with skip_unchanged "
             f"(target < 3), {ratio_every:.2f} x without", ""]
    bl.write_section("skip_unchanged", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
