"""Catching up: 500 pending snapshots, one `-I` stream against one stream per snapshot.

A filesystem with 500 snapshots, each after a small change, of which the
destination holds only the first. In the same run, in an order rotated each round:

    zfsrepl:   zfsrepl runonce (its plan: one `zfs send -I` stream for all pending
               snapshots, plus the one this cycle takes)
    raw -I:    zfs send -I @first FS@last | ssh zfs receive -u -F DST
    raw each:  one ControlMaster; per snapshot zfs send -i @prev FS@snap | ssh zfs receive -u -F

Every variant gets a fresh destination holding only the first snapshot before its
round (untimed).

Run as root from the repository root:

    python bench/catchup.py [--pending 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from lab import claim_area, destroy, exists, lab_session

VARIANTS = ("zfsrepl", "raw -I", "raw each")

RAW_I = (f'zfs send -I "@$4" "$1" | {bl.RAW_SSH} {bl.ZFSREPL_CIPHER_OPTIONS} "$3" '
         'zfs receive -u -F "$2"')

RAW_EACH = r"""
set -e
fs=$1 dst=$2 host=$3 prefix=$4 first=$5 last=$6
cmdir=$(mktemp -d)
cm=$cmdir/cm
ssh $SSHOPTS -M -N -f -S "$cm" -o ControlPersist=no "$host" </dev/null >/dev/null
i=$((first + 1))
while [ "$i" -le "$last" ]; do
    zfs send -i "@$prefix$((i - 1))" "$fs@$prefix$i" |
        ssh $SSHOPTS -S "$cm" "$host" zfs receive -u -F "$dst"
    i=$((i + 1))
done
ssh $SSHOPTS -S "$cm" -O exit "$host" 2>/dev/null
rm -rf "$cmdir"
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pending", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep-lab", action="store_true")
    args = parser.parse_args()
    bl.require_root()

    load = bl.load()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with lab_session(keep=args.keep_lab) as lab, claim_area(lab) as area, \
            bl.service_cli(lab, f"bench-{area.name}") as repl:
        fs = f"{area.src}/catchup"
        host = f"{lab.dst.user}@{lab.dst.address}"
        prefix = f"zfsrepl-{lab.src.user}-{lab.dst.user}-{lab.dst.address}-"
        lab.src.zfs("create", fs)
        mnt = lab.src.mountpoint(fs)
        bl.write_random(mnt / "data.bin", 1024)
        # the first snapshot and `pending` more, each after a small change
        last = args.pending + 1
        t_create = bl.timed(lambda: bl.root_script(
            lab.src, 'i=1; while [ "$i" -le "$4" ]; do echo "$i" > "$3/counter"; '
            'zfs snapshot "$1@$2$i"; i=$((i + 1)); done', fs, prefix, str(mnt), str(last)))
        print(f"{last} snapshots created in {t_create:.1f}s", flush=True)
        dsts = {v: f"{area.dst}/catchup-{i}" for i, v in enumerate(VARIANTS)}
        repl.write_service(name="catchup", filesystems=[(fs, dsts["zfsrepl"])], keep=100000,
                           retries=1)
        sshopts = f"-o BatchMode=yes -o LogLevel=ERROR {bl.ZFSREPL_CIPHER_OPTIONS}"
        for r in range(args.rounds):
            for v in VARIANTS:  # untimed: each destination holds the first snapshot only
                if exists(lab.dst, dsts[v]):
                    destroy(lab.dst, dsts[v], "-r")
                bl.user_script(lab.src, f'zfs send "$1" | {bl.RAW_SSH} "$3" zfs receive -u "$2"',
                               f"{fs}@{prefix}1", dsts[v], host)
            for v in bl.alternate(r, VARIANTS):
                if v == "zfsrepl":
                    t = bl.timed(lambda: repl.run("runonce", "catchup", timeout=3600))
                elif v == "raw -I":
                    t = bl.timed(lambda: bl.user_script(
                        lab.src, RAW_I, f"{fs}@{prefix}{last}", dsts["raw -I"], host,
                        f"{prefix}1"))
                else:
                    t = bl.timed(lambda: bl.user_script(
                        lab.src, RAW_EACH, fs, dsts["raw each"], host, prefix, "1", str(last),
                        env={"SSHOPTS": sshopts}))
                times[v].append(t)
            print(f"round {r + 1}: " + "  ".join(f"{v} {times[v][-1]:.1f}s" for v in VARIANTS),
                  flush=True)
        received = {v: len(bl.snapshot_names(lab.dst, d)) for v, d in dsts.items()}

    med = {v: bl.median(t) for v, t in times.items()}
    rows = [[v, " ".join(f"{t:.1f}" for t in times[v]), f"{med[v]:.1f}",
             f"{med[v] / (args.pending) * 1000:.0f}", received[v]] for v in VARIANTS]
    lines = ["## 4. Catching up: 500 pending snapshots", "",
             f"Load average at the start: {load}. {args.pending} pending snapshots, each "
             "after a small change (creating them took "
             f"{t_create:.0f} s); {args.rounds} rounds, order rotated each round; every "
             "variant starts from a destination holding only the first snapshot. zfsrepl "
             "also takes this cycle's snapshot, so it sends one more (and one more each "
             "round, since its own snapshots accumulate with keep = 100000).", "",
             *bl.table(["variant", "rounds (s)", "median (s)", "ms per pending snapshot",
                        "snapshots on the destination after the last round"], rows), "",
             f"- ratio raw -I / zfsrepl: **{med['raw -I'] / med['zfsrepl']:.2f}**",
             f"- ratio raw each / zfsrepl: **{med['raw each'] / med['zfsrepl']:.2f}** "
             "(how much one `-I` stream saves over one stream per snapshot)", ""]
    bl.write_section("catchup", lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
