"""Replication lag (RPO) of `zfsrepl run` with interval = 1, and its ssh handshakes.

A service of N filesystems runs under `zfsrepl run` (interval = 1 s, keep = 10).
Each sample writes a small file holding a unique marker into one of its source
filesystems (in turn) and measures the time from the moment that write returned to
the moment the first snapshot holding the marker is seen on the destination:

* before the write, the source's snapshots of that filesystem are listed; every
  snapshot that appears on the destination afterwards and was not among them is a
  candidate, timed when first seen (the destination is listed every POLL seconds);
* a candidate counts only when it holds the marker: its full stream (`zfs send` on the
  destination, read-only) contains the marker's bytes. zfs-fuse has no `.zfs/snapshot`
  and a clone would hold back retention, so the stream is what is read. A snapshot
  taken between the listing and the write may not hold it; then the next one does.

Between samples a random pause of 0 to 1 s spreads the writes over the cycle. The
run itself is not touched: no wrapper, no change to its definition or its processes.

Handshakes: every ssh handshake is a TCP connection opened from the source host's
network namespace, and only zfsrepl connects from there during the run: the
`Tcp: ActiveOpens` counter of that namespace (/proc/net/snmp), read after the third
cycle and at the end, counts them over the steady cycles between.

Run as root from the repository root:

    python bench/rpo.py [--samples 100] [--counts 1,10]
"""

from __future__ import annotations

import argparse
import random
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

from lab import Lab, claim_area, lab_session

FINISHED = re.compile(r"cycle of \S+ finished")
POLL = 0.05  # seconds between two listings of the destination while waiting
KEEP = 10  # snapshots kept on each side: a candidate lives ~10 s, time enough to read it
SAMPLE_TIMEOUT = 120.0


def cycles_done(err: IO[bytes]) -> int:
    err.seek(0)
    return len(FINISHED.findall(err.read().decode("utf-8", "replace")))


def active_opens(lab: Lab) -> int:
    """TCP connections opened so far from the source host's network namespace."""
    text = bl.root_script(lab.src, "cat /proc/net/snmp")
    rows = [ln.split() for ln in text.splitlines() if ln.startswith("Tcp:")]
    header, values = rows[0], rows[1]
    return int(values[header.index("ActiveOpens")])


def names(host: object, fs: str) -> list[str]:
    return bl.snapshot_names(host, fs)  # type: ignore[arg-type]


def holds_marker(lab: Lab, snapshot: str, marker: bytes) -> bool | None:
    """Whether the destination's `snapshot` holds `marker` (None: it is gone already)."""
    proc = lab.dst.root(["zfs", "send", snapshot], check=False, timeout=120)
    if proc.returncode != 0:
        return None
    return marker in proc.stdout


def sample(lab: Lab, src_fs: str, dst_fs: str, path: Path) -> tuple[float, int]:
    """One write; seconds until its snapshot was seen on the destination, and how many
    candidates were read before the one holding it."""
    before = set(names(lab.src, src_fs))
    marker = f"zfsrepl-rpo-{secrets.token_hex(16)}".encode()
    with path.open("wb") as f:
        f.write(marker + b"\n")
    written = time.monotonic()
    first_seen: dict[str, float] = {}
    checked: set[str] = set()
    misses = 0
    while time.monotonic() - written < SAMPLE_TIMEOUT:
        now_names = names(lab.dst, dst_fs)
        seen_at = time.monotonic()
        for n in now_names:
            if n not in before:
                first_seen.setdefault(n, seen_at)
        for n in now_names:
            if n in first_seen and n not in checked:
                checked.add(n)
                if holds_marker(lab, f"{dst_fs}@{n}", marker):
                    return first_seen[n] - written, misses
                misses += 1
        time.sleep(POLL)
    raise RuntimeError(f"the marker written into {src_fs} did not reach {dst_fs} "
                       f"in {SAMPLE_TIMEOUT:.0f} s")


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile, nearest rank (p99 of 100 samples is the 99th smallest)."""
    ordered = sorted(values)
    k = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[k - 1]


def measure(lab: Lab, repl: bl.ZfsreplCli, src: str, dst: str, n: int,
            samples: int) -> dict[str, object]:
    name = f"rpo{n}"
    pairs = []
    for i in range(1, n + 1):
        lab.src.zfs("create", f"{src}/{name}m{i}")
        bl.write_random(lab.src.mountpoint(f"{src}/{name}m{i}") / "data.bin", 64)
        pairs.append((f"{src}/{name}m{i}", f"{dst}/{name}m{i}"))
    repl.write_service(name=name, filesystems=pairs, interval=1, keep=KEEP, retries=3,
                       retry_delay=1)
    load = bl.load()
    with tempfile.TemporaryFile(dir="/var/tmp") as err:
        log_dir = repl.base / "log"  # file logging on, as in production
        repl.host.run(["mkdir", "-p", str(log_dir)])
        proc = repl.host.popen(repl.argv("run", name, "--log-dir", str(log_dir)),
                               stderr=err.fileno())
        try:
            while cycles_done(err) < 3:
                if proc.poll() is not None:
                    raise RuntimeError("zfsrepl run exited early:\n"
                                       + err.read().decode("utf-8", "replace")[-3000:])
                time.sleep(0.2)
            opens0, cycles0, t0 = active_opens(lab), cycles_done(err), time.monotonic()
            lags: list[float] = []
            misses = 0
            for k in range(samples):
                if proc.poll() is not None:
                    raise RuntimeError("zfsrepl run exited during the samples")
                i = k % n
                lag, missed = sample(lab, pairs[i][0], pairs[i][1],
                                     lab.src.mountpoint(pairs[i][0]) / "marker.txt")
                lags.append(lag)
                misses += missed
                print(f"{n} fs, sample {k + 1}/{samples}: {lag:.3f} s", flush=True)
                time.sleep(random.uniform(0.0, 1.0))
            opens1, cycles1, t1 = active_opens(lab), cycles_done(err), time.monotonic()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        err.seek(0)
        log = err.read().decode("utf-8", "replace")
    warnings = [ln for ln in log.splitlines() if " WARNING " in ln or " ALARM " in ln]
    steady = cycles1 - cycles0
    return {"n": n, "load": load, "lags": lags, "misses": misses, "cycles": steady,
            "seconds": t1 - t0, "opens": opens1 - opens0, "warnings": warnings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--counts", default="1,10", help="numbers of filesystems")
    parser.add_argument("--keep-lab", action="store_true")
    args = parser.parse_args()
    bl.require_root()
    counts = [int(c) for c in args.counts.split(",")]

    results = []
    with lab_session(keep=args.keep_lab) as lab, claim_area(lab) as area, \
            bl.service_cli(lab, f"bench-{area.name}") as repl:
        for n in counts:
            results.append(measure(lab, repl, area.src, area.dst, n, args.samples))

    rows = []
    notes = []
    for r in results:
        lags: list[float] = r["lags"]  # type: ignore[assignment]
        cycles: int = r["cycles"]  # type: ignore[assignment]
        seconds: float = r["seconds"]  # type: ignore[assignment]
        opens: int = r["opens"]  # type: ignore[assignment]
        rows.append([r["n"], len(lags), f"{statistics.median(lags):.2f}",
                     f"{percentile(lags, 90):.2f}", f"{percentile(lags, 99):.2f}",
                     f"{max(lags):.2f}", f"{seconds / max(1, cycles):.2f}",
                     f"{opens} in {cycles} cycles: **{opens / max(1, cycles):.2f}**"])
        notes.append(f"- {r['n']} fs: load average at the start {r['load']}; "
                     f"{r['misses']} candidate snapshot(s) read that did not yet hold the "
                     f"marker; warnings or alarms in the log: {len(r['warnings'])}"  # type: ignore[arg-type]
                     + (f" (first: `{r['warnings'][0]}`)" if r["warnings"] else ""))  # type: ignore[index]
    first = results[0]
    p99 = percentile(first["lags"], 99)  # type: ignore[arg-type]
    lines = ["## 8. Replication lag (RPO) of `zfsrepl run`, interval = 1 s", "",
             f"`zfsrepl run` of one service, interval = 1 s, keep = {KEEP}, left alone while "
             "samples are taken. Each sample writes a unique marker (a small file) into one "
             "source filesystem (in turn) and times from the moment the write returned to "
             "the moment the first destination snapshot holding the marker was seen (the "
             f"destination listed every {POLL * 1000:.0f} ms; each new snapshot's stream "
             "read with `zfs send` on the destination to check it holds the marker); a "
             "random pause of 0 to 1 s between samples. Handshakes: TCP connections "
             "opened from the source host's network namespace (`Tcp: ActiveOpens`) over "
             "the steady cycles (after the third) while the samples ran.", "",
             *bl.table(["filesystems", "samples", "p50 (s)", "p90 (s)", "p99 (s)", "max (s)",
                        "s per cycle", "ssh handshakes per steady cycle"], rows), "",
             *notes,
             f"- {first['n']} fs: p99 **{p99:.2f} s** (target < 2 s)", ""]
    bl.write_section("rpo", lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
