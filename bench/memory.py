"""Memory: peak RSS of `zfsrepl run` over a long series of cycles.

`zfsrepl run` of a service with interval = 1 (cycles back to back) and keep = 3:
every cycle snapshots, lists both sides, sends an incremental and destroys one
snapshot per filesystem on each side. VmHWM (peak) and VmRSS (now) are read
from /proc/PID/status of the running process every 0.25 s, with the number of
cycles finished so far (from its log). For scale, the same figures of a bare
`/usr/bin/python3` (the interpreter zfsrepl runs on) are measured in the same run:
zfsrepl's own share is the difference.

Run as root from the repository root:

    python bench/memory.py [--cycles 200] [--filesystems 3]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from lab import claim_area, lab_session

FINISHED = re.compile(r"cycle of \S+ finished")


def status_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return values


def bare_python_kib() -> int:
    out = subprocess.run(["/usr/bin/python3", "-c",
                          "print(open('/proc/self/status').read())"],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"VmHWM:\s+(\d+)", out).group(1))  # type: ignore[union-attr]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--filesystems", type=int, default=3)
    parser.add_argument("--keep-lab", action="store_true")
    args = parser.parse_args()
    bl.require_root()

    load = bl.load()
    samples: list[tuple[float, int, int, int]] = []  # (seconds, cycles, VmRSS, VmHWM)
    bare = bare_python_kib()
    with lab_session(keep=args.keep_lab) as lab, claim_area(lab) as area, \
            bl.service_cli(lab, f"bench-{area.name}") as repl, \
            tempfile.TemporaryFile(dir="/var/tmp") as err:
        pairs = []
        for i in range(1, args.filesystems + 1):
            lab.src.zfs("create", f"{area.src}/m{i}")
            bl.write_random(lab.src.mountpoint(f"{area.src}/m{i}") / "data.bin", 256)
            pairs.append((f"{area.src}/m{i}", f"{area.dst}/m{i}"))
        repl.write_service(name="mem", filesystems=pairs, interval=1, keep=3, retries=3,
                           retry_delay=1)
        log_dir = repl.base / "log"  # file logging on, as in production
        repl.host.run(["mkdir", "-p", str(log_dir)])
        proc = repl.host.popen(repl.argv("run", "mem", "--log-dir", str(log_dir)),
                               stderr=err.fileno())
        started = time.monotonic()
        cycles = 0
        try:
            while cycles < args.cycles:
                if proc.poll() is not None:
                    err.seek(0)
                    raise RuntimeError(f"zfsrepl run exited with {proc.returncode}:\n"
                                       + err.read().decode("utf-8", "replace")[-3000:])
                st = status_kib(proc.pid)
                err.seek(0)
                cycles = len(FINISHED.findall(err.read().decode("utf-8", "replace")))
                if st:
                    samples.append((time.monotonic() - started, cycles, st["VmRSS"],
                                    st["VmHWM"]))
                time.sleep(0.25)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        elapsed = time.monotonic() - started
        err.seek(0)
        log = err.read().decode("utf-8", "replace")
        warnings = [ln for ln in log.splitlines() if " WARNING " in ln or " ALARM " in ln]

    def at(c: int) -> tuple[int, int]:
        row = next((s for s in samples if s[1] >= c), samples[-1])
        return row[2], row[3]

    marks = sorted({1, 10, 50, args.cycles // 2, args.cycles} & set(range(1, args.cycles + 1)))
    rows = [[c, f"{at(c)[0] / 1024:.1f}", f"{at(c)[1] / 1024:.1f}"] for c in marks]
    peak = max(s[3] for s in samples)
    rss_10, rss_end = at(10)[0], samples[-1][2]
    half = [s for s in samples if s[1] >= args.cycles // 2]
    growth = (half[-1][2] - half[0][2]) / max(1, half[-1][1] - half[0][1])
    lines = ["## 5. Memory: `zfsrepl run` over a long series of cycles", "",
             f"Load average at the start: {load}. `zfsrepl run` of a service of "
             f"{args.filesystems} filesystems, interval = 1 s, keep = 3: {args.cycles} "
             f"cycles in {elapsed:.0f} s ({elapsed / args.cycles:.2f} s a cycle); "
             f"{len(samples)} samples of /proc/PID/status, every 0.25 s.", "",
             *bl.table(["after cycle", "VmRSS (MiB)", "VmHWM (MiB)"], rows), "",
             f"- peak RSS (VmHWM) over the run: **{peak / 1024:.1f} MiB** (target < 40 MiB); "
             f"a bare `/usr/bin/python3` peaks at {bare / 1024:.1f} MiB in the same run: "
             f"ratio {peak / bare:.2f}, zfsrepl's own share {(peak - bare) / 1024:.1f} MiB",
             f"- flat: VmRSS after cycle 10 {rss_10 / 1024:.1f} MiB, at the end "
             f"{rss_end / 1024:.1f} MiB; over the second half {growth:+.2f} KiB per cycle",
             f"- warnings or alarms in the log: {len(warnings)}"
             + (f" (first: `{warnings[0]}`)" if warnings else ""), ""]
    bl.write_section("memory", lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
