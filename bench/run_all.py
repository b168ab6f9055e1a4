"""Run every benchmark of bench/ in turn and rebuild bench/RESULTS.md.

Run as root from the repository root:

    python bench/run_all.py [--only throughput,memory] [--quick]

Each benchmark runs as its own process (and each can be run alone, see its --help);
they share one lab: if no lab was up when this started, the one they set up is torn
down at the end. --quick runs them small (a smoke test of the benchmarks themselves,
not figures to publish). About 20 minutes in full on a 2-core machine, plus the
peers (peers.py), which boot the OpenZFS VM lab (building its image if needed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from lab import lab_session
from lab.fuse import lab_dir

QUICK = {
    "throughput": ["--size-mib", "50", "--inc-mib", "50", "--rounds", "2"],
    "cycle_cost": ["--counts", "1,3", "--rounds", "2"],
    "snapshots": ["--counts", "100,200", "--rounds", "2"],
    "catchup": ["--pending", "20", "--rounds", "2"],
    "memory": ["--cycles", "10"],
    "recursive": ["--counts", "1,3", "--rounds", "2"],
    "peers": ["--counts", "1,2", "--rounds", "1", "--size-mib", "4"],
    "rpo": ["--counts", "1,2", "--samples", "5"],
    "skip_unchanged": ["--counts", "1,2", "--rounds", "1"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(bl.SECTIONS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    bl.require_root()
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(bl.SECTIONS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (known: {bl.SECTIONS})")

    # every benchmark measures the same commit, even if HEAD moves while they run
    env = dict(os.environ)
    if bl.REV != "worktree":
        env["ZFSREPL_BENCH_REV"] = subprocess.run(
            ["git", "-C", str(bl.REPO), "rev-parse", bl.REV], capture_output=True, text=True,
            check=True).stdout.strip()
    fresh = not (lab_dir() / "lab.env").exists()
    failed: list[str] = []
    try:
        for name in names:
            # these run on the VM lab, which they set up and remove by themselves
            keep = [] if name in ("peers", "skip_unchanged") else ["--keep-lab"]
            argv = [sys.executable, str(bl.BENCH / f"{name}.py"), *keep,
                    *(QUICK[name] if args.quick else [])]
            print(f"=== {name}: {' '.join(argv[1:])}", flush=True)
            started = time.monotonic()
            rc = subprocess.run(argv, env=env, check=False).returncode
            print(f"=== {name}: exit {rc} after {time.monotonic() - started:.0f} s", flush=True)
            if rc != 0:
                failed.append(name)
    finally:
        if fresh:  # the lab is ours: a session without keep tears it down
            with lab_session(keep=False):
                pass
    bl.rebuild()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"results: {bl.RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
