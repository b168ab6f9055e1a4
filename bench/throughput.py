"""Throughput: a full and a large incremental replication, zfsrepl against the raw pipeline.

Three variants run in the same lab, in the same run, in an order rotated each
round, as the source user on the source host:

    raw:      zfs send ... | ssh dst@DSTHOST zfs receive -u [-F] DST     (ssh's default cipher)
    raw-aes:  the same with zfsrepl's cipher options (zfsrepl.host.SSH_DEFAULT_OPTIONS)
    zfsrepl:  zfsrepl runonce (snapshot, listing both sides, send, retention, listing)

raw-aes / zfsrepl is zfsrepl's own overhead; raw / zfsrepl also counts its cipher
choice. Full: a filesystem of --size-mib random data, sent whole. Incremental: a
small base (8 MiB) already on the destination, then --inc-mib of new random data
sent as one incremental; each variant's destination is destroyed right after its
transfer, so the 2 GiB lab pools hold one copy at a time.

Run as root from the repository root (it sets up the lab if needed):

    python bench/throughput.py [--size-mib 500] [--inc-mib 400] [--rounds 5]

It prints each round, writes bench/results/throughput.md and rebuilds bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from lab import Lab, ZfsreplCli, claim_area, destroy, exists, lab_session

VARIANTS = ("raw", "raw-aes", "zfsrepl")
BASE_MIB = 8


def raw_send(lab: Lab, snapshot: str, dst_fs: str, *, base: str | None = None,
             cipher: bool = False) -> float:
    """``zfs send [-i BASE] SNAP | ssh ... zfs receive -u [-F] DST``; its wall time."""
    ssh = f"{bl.RAW_SSH} {bl.ZFSREPL_CIPHER_OPTIONS if cipher else ''}"
    send = 'zfs send -i "$3" "$1"' if base else 'zfs send "$1"'
    recv = "zfs receive -u -F" if base else "zfs receive -u"
    # The destination name has no spaces: the remote shell may split it.
    script = f'{send} | {ssh} {lab.dst.user}@{lab.dst.address} {recv} "$2"'
    started = time.monotonic()
    lab.src.run(["sh", "-c", script, "sh", snapshot, dst_fs, base or ""], timeout=1800)
    return time.monotonic() - started


def runonce(repl: ZfsreplCli, name: str) -> float:
    started = time.monotonic()
    repl.run("runonce", name, timeout=1800)
    return time.monotonic() - started


def drop(lab: Lab, fs: str) -> None:
    if exists(lab.dst, fs):
        destroy(lab.dst, fs, "-r")


def full_rounds(lab: Lab, repl: ZfsreplCli, src_parent: str, dst_parent: str, size_mib: int,
                rounds: int) -> dict[str, list[float]]:
    src_fs = f"{src_parent}/full"
    lab.src.zfs("create", src_fs)
    bl.write_random(lab.src.mountpoint(src_fs) / "data.bin", size_mib * 1024)
    lab.src.zfs("snapshot", f"{src_fs}@raw")
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(rounds):
        for v in bl.alternate(i, VARIANTS):
            dst = f"{dst_parent}/full-{v}-{i}"
            if v == "zfsrepl":
                repl.write_service(name=f"full{i}", filesystems=[(src_fs, dst)], keep=1,
                                   retries=1)
                times[v].append(runonce(repl, f"full{i}"))
            else:
                times[v].append(raw_send(lab, f"{src_fs}@raw", dst, cipher=v == "raw-aes"))
            drop(lab, dst)
        print(f"full round {i + 1}: " + "  ".join(f"{v} {times[v][-1]:.2f}s" for v in VARIANTS),
              flush=True)
    destroy(lab.src, src_fs, "-r")
    return times


def incremental_rounds(lab: Lab, repl: ZfsreplCli, src_parent: str, dst_parent: str,
                       inc_mib: int, rounds: int) -> dict[str, list[float]]:
    src_fs = f"{src_parent}/inc"
    lab.src.zfs("create", src_fs)
    mnt = lab.src.mountpoint(src_fs)
    bl.write_random(mnt / "base.bin", BASE_MIB * 1024)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(rounds):
        dsts = {v: f"{dst_parent}/inc-{v}-{i}" for v in VARIANTS}
        # untimed: the base on every destination, zfsrepl's first snapshot (keep=2: the
        # base outlives a zfsrepl cycle that runs before the raw variants)
        repl.write_service(name=f"inc{i}", filesystems=[(src_fs, dsts["zfsrepl"])], keep=2,
                           retries=1)
        repl.run("runonce", f"inc{i}", timeout=600)
        base = bl.snapshot_names(lab.src, src_fs)[-1]
        for v in ("raw", "raw-aes"):
            raw_send(lab, f"{src_fs}@{base}", dsts[v])
        bl.write_random(mnt / "big.bin", inc_mib * 1024)
        lab.src.zfs("snapshot", f"{src_fs}@inc{i}")
        for v in bl.alternate(i, VARIANTS):
            if v == "zfsrepl":
                times[v].append(runonce(repl, f"inc{i}"))
            else:
                times[v].append(raw_send(lab, f"{src_fs}@inc{i}", dsts[v], base=base,
                                         cipher=v == "raw-aes"))
            drop(lab, dsts[v])
        (mnt / "big.bin").unlink()
        destroy(lab.src, f"{src_fs}@inc{i}")
        print(f"incremental round {i + 1}: "
              + "  ".join(f"{v} {times[v][-1]:.2f}s" for v in VARIANTS), flush=True)
    destroy(lab.src, src_fs, "-r")
    return times


def report(kind: str, mib: int, times: dict[str, list[float]]) -> list[str]:
    med = {v: bl.median(t) for v, t in times.items()}
    rows = [[v, " ".join(f"{t:.2f}" for t in times[v]), f"{med[v]:.2f}", f"{mib / med[v]:.0f}"]
            for v in VARIANTS]
    lines = [f"**{kind}, {mib} MiB**", "",
             *bl.table(["variant", "rounds (s)", "median (s)", "MiB/s"], rows), "",
             f"- ratio raw-aes / zfsrepl (zfsrepl's own overhead): "
             f"**{med['raw-aes'] / med['zfsrepl']:.3f}** (target >= 0.95)",
             f"- ratio raw / zfsrepl (with zfsrepl's cipher choice): "
             f"**{med['raw'] / med['zfsrepl']:.3f}**",
             f"- zfsrepl's fixed cost (median zfsrepl - median raw-aes): "
             f"{med['zfsrepl'] - med['raw-aes']:.2f} s", ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=500)
    parser.add_argument("--inc-mib", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep-lab", action="store_true",
                        help="leave a lab this run set up in place")
    args = parser.parse_args()
    bl.require_root()

    load = bl.load()
    with lab_session(keep=args.keep_lab) as lab, claim_area(lab) as area, \
            bl.service_cli(lab, f"bench-{area.name}") as repl:
        full = full_rounds(lab, repl, area.src, area.dst, args.size_mib, args.rounds)
        inc = incremental_rounds(lab, repl, area.src, area.dst, args.inc_mib, args.rounds)

    lines = ["## 1. Throughput over ssh: zfsrepl against the raw pipeline", "",
             f"Load average at the start: {load}. {args.rounds} rounds, the three variants "
             "in an order rotated each round. `raw`: `zfs send | ssh | zfs receive -u` with "
             "ssh's default cipher (chacha20-poly1305 on OpenSSH 9.2); `raw-aes`: the same "
             "with zfsrepl's `-o Ciphers=...`; `zfsrepl`: a whole `zfsrepl runonce` "
             "(process start, ssh ControlMaster handshake, a probe and a listing of each "
             "side, snapshot, send, retention). Incremental: an 8 MiB base already "
             "on the destination, then one incremental stream of new random data.", "",
             *report("Full replication", args.size_mib, full),
             *report("Large incremental", args.inc_mib, inc)]
    bl.write_section("throughput", lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
