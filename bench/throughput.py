"""Full-replication throughput: `zfsrepl runonce` against the raw pipeline.

Both run in the same lab, in the same run, alternating which goes first, as the
source user on the source host:

    raw:     zfs send FS@snap | ssh dst@DSTHOST zfs receive -u DST
    zfsrepl: zfsrepl runonce (snapshot, listing both sides, send, retention)

Run as root from the repository root (it sets up the lab if needed):

    python bench/throughput.py --size-mib 500 --rounds 5

It prints each round, the medians and the ratio raw time / zfsrepl time (1.0:
zfsrepl as fast as the raw pipeline; the target is 0.95 or better).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lab import Lab, ZfsreplCli, claim_area, destroy, exists, lab_session


def write_data(path: Path, size_mib: int) -> None:
    """Incompressible data, so no layer can make the stream smaller than it is."""
    with (path / "data.bin").open("wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))


def raw_round(lab: Lab, src_fs: str, snap: str, dst_fs: str) -> float:
    # The destination name has no spaces: the remote shell may split it.
    script = (f'zfs send "$1" | ssh -o BatchMode=yes {lab.dst.user}@{lab.dst.address} '
              'zfs receive -u "$2"')
    started = time.monotonic()
    lab.src.run(["sh", "-c", script, "sh", f"{src_fs}@{snap}", dst_fs], timeout=1800)
    return time.monotonic() - started


def zfsrepl_round(repl: ZfsreplCli, name: str) -> float:
    started = time.monotonic()
    repl.run("runonce", name, timeout=1800)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep-lab", action="store_true",
                        help="leave a lab this run set up in place")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: the lab creates pools, users and network namespaces")

    with lab_session(keep=args.keep_lab) as lab, claim_area(lab) as area:
        src_fs = f"{area.src}/data"
        lab.src.zfs("create", src_fs)
        write_data(lab.src.mountpoint(src_fs), args.size_mib)
        lab.src.zfs("snapshot", f"{src_fs}@raw")
        repl = ZfsreplCli(lab, f"bench-{area.name}")
        repl.create()
        try:
            raw_times: list[float] = []
            repl_times: list[float] = []
            for i in range(args.rounds):
                raw_dst, repl_dst = f"{area.dst}/raw{i}", f"{area.dst}/zfsrepl{i}"
                repl.write_service(name=f"bench{i}", filesystems=[(src_fs, repl_dst)], keep=1,
                                   retries=1)
                order = ["raw", "zfsrepl"] if i % 2 == 0 else ["zfsrepl", "raw"]
                for which in order:
                    if which == "raw":
                        raw_times.append(raw_round(lab, src_fs, "raw", raw_dst))
                    else:
                        repl_times.append(zfsrepl_round(repl, f"bench{i}"))
                print(f"round {i + 1}: raw {raw_times[-1]:.2f}s  zfsrepl {repl_times[-1]:.2f}s",
                      flush=True)
                for fs in (raw_dst, repl_dst):
                    if exists(lab.dst, fs):
                        destroy(lab.dst, fs, "-r")
        finally:
            repl.destroy()

    raw_med, repl_med = statistics.median(raw_times), statistics.median(repl_times)
    mib = args.size_mib
    print(f"\nfull replication of {mib} MiB over ssh, {args.rounds} rounds alternating, "
          f"{lab.backend} lab, {platform.node()}, python {platform.python_version()}")
    print(f"raw pipeline: median {raw_med:.2f}s ({mib / raw_med:.0f} MiB/s)")
    print(f"zfsrepl:      median {repl_med:.2f}s ({mib / repl_med:.0f} MiB/s)")
    print(f"ratio raw/zfsrepl: {raw_med / repl_med:.3f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
