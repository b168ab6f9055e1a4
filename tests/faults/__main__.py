"""The full fault campaign: ``scripts/faults`` (or ``python3 -m faults`` with tests/ and
src/ on PYTHONPATH), as root.

    scripts/faults                          # every kind, 10 rounds each, on zfs-fuse
    scripts/faults --kinds kill,ssh,link --rounds 100
    scripts/faults --backend openzfs --rounds 10
    scripts/faults --summary DIR [DIR ...]  # the table of earlier runs, for RELIABILITY.md

Rounds run in chunks of at most ``--chunk-minutes`` (default 10): the lab's lock is let
go between chunks, so that other test sessions on the machine get their turn. Kinds are
interleaved round by round, so that a run cut short still covers every kind. Every round
writes its outcome (one JSON object) to DIR/rounds.jsonl and its processes' output to
DIR/<kind>-<n>/; the summary table goes to standard output at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from lab import lab_session

from .kinds import KINDS, KINDS_BY_NAME, Kind
from .rounds import play_round, round_seed

REPO = Path(__file__).resolve().parents[2]


def commit() -> str:
    """The commit measured: HEAD, marked "+changes" if the package's source differs."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True, check=False).stdout.strip()
    head = git("rev-parse", "--short=10", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--", "src") else "")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("fuse", "openzfs"),
                   default=os.environ.get("ZFSREPL_LAB_BACKEND") or "fuse")
    p.add_argument("--rounds", type=int, default=10, help="rounds of each kind (default 10)")
    p.add_argument("--kinds", default="",
                   help="comma-separated kinds (default: all that can be played): "
                        + ", ".join(k.name for k in KINDS))
    p.add_argument("--seed", default=os.environ.get("ZFSREPL_FAULTS_SEED") or "",
                   help="the campaign's seed (default: a new one, printed)")
    p.add_argument("--chunk-minutes", type=float, default=10.0,
                   help="hold the lab at most this long at a time (default 10)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="start no round after this many minutes (default: no limit)")
    p.add_argument("--out", type=Path, help="folder for the results "
                   "(default /var/tmp/zfsrepl-faults/<backend>-<time>)")
    p.add_argument("--keep-lab", action="store_true",
                   help="leave the lab up at the end even if the campaign set it up")
    p.add_argument("--summary", type=Path, nargs="+", metavar="DIR",
                   help="only print the table of the runs in these folders")
    return p.parse_args(argv)


def chosen_kinds(text: str) -> list[Kind]:
    if not text:
        return [k for k in KINDS if not k.skip]
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in KINDS_BY_NAME]
    if unknown:
        raise SystemExit(f"scripts/faults: unknown kind(s) {', '.join(unknown)}; known: "
                         + ", ".join(k.name for k in KINDS))
    return [KINDS_BY_NAME[n] for n in names]


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.summary:
        records = load(args.summary)
        print(table(records))
        print()
        print(phases(records))
        return 0
    if os.geteuid() != 0:
        print("scripts/faults: run as root (the lab creates pools, users and namespaces)",
              file=sys.stderr)
        return 2
    os.environ["ZFSREPL_LAB_BACKEND"] = args.backend
    kinds = chosen_kinds(args.kinds)
    seed = args.seed or f"{random.SystemRandom().randrange(1 << 32):08x}"
    out: Path = args.out or Path("/var/tmp/zfsrepl-faults") / (
        f"{args.backend}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    measured = commit()
    print(f"fault campaign: seed {seed} (--seed {seed} plays it again), commit {measured}, "
          f"results in {out}", flush=True)
    todo = [(k, i) for i in range(args.rounds) for k in kinds]
    skipped = [k for k in kinds if k.skip]
    for k in skipped:
        print(f"kind {k.number} {k.name}: not played: {k.skip}")
    todo = [(k, i) for k, i in todo if not k.skip]
    failed = 0
    deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else None
    with open(out / "rounds.jsonl", "a") as results:
        while todo and (deadline is None or time.monotonic() < deadline):
            last_chunk = False
            with lab_session(keep=True) as lab:
                missing = {k.name for k, _ in todo if k.needs - lab.features}
                for name in sorted(missing):
                    print(f"kind {name}: not played on {lab.backend} (needs "
                          f"{', '.join(sorted(KINDS_BY_NAME[name].needs - lab.features))})")
                for kind in {k for k, _ in todo if k.name not in missing}:
                    why = kind.unplayable(lab)
                    if why:
                        print(f"kind {kind.name}: not played: {why}")
                        missing.add(kind.name)
                todo = [(k, i) for k, i in todo if k.name not in missing]
                chunk_end = time.monotonic() + args.chunk_minutes * 60
                if deadline is not None:
                    chunk_end = min(chunk_end, deadline)
                while todo and time.monotonic() < chunk_end:
                    kind, i = todo.pop(0)
                    seed_i = round_seed(seed, kind.name, i)
                    outcome = play_round(lab, kind, kind.variant(i), seed_i,
                                         out / f"{kind.name}-{i:03d}")
                    record = json.loads(outcome.to_json())
                    record["commit"] = measured
                    results.write(json.dumps(record, sort_keys=True) + "\n")
                    results.flush()
                    failed += not outcome.ok
                    print(f"[{len(todo)} left] {outcome.describe()}", flush=True)
                last_chunk = not todo or (deadline is not None and time.monotonic() >= deadline)
            if not last_chunk:
                print("letting the lab go for other sessions", flush=True)
                time.sleep(5)
    if not args.keep_lab:
        _teardown_if_ours()
    print()
    records = load([out])
    print(table(records))
    print()
    print(phases(records))
    return 1 if failed else 0


def _teardown_if_ours() -> None:
    """The chunks kept the lab up; one the campaign set up goes now, as a session's would."""
    with lab_session(keep=False):
        pass


def load(dirs: Iterable[Path]) -> list[dict[str, object]]:
    records = []
    for d in dirs:
        path = d / "rounds.jsonl" if d.is_dir() else d
        for line in path.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


COLUMNS = ("kind", "backend", "rounds", "recovered", "chains broken", "content mismatches",
           "tracebacks", "unclear errors", "leftover processes", "round errors",
           "cycles to recover (most)", "recovered later (s, most)", "commit")


def table(records: list[dict[str, object]]) -> str:
    """One row per kind and backend, in the order of KINDS."""
    groups: dict[tuple[str, str], list[dict[str, object]]] = collections.defaultdict(list)
    for r in records:
        groups[(str(r["kind"]), str(r["backend"]))].append(r)
    order = {k.name: k.number for k in KINDS}
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for (kind, backend), rs in sorted(groups.items(), key=lambda g: (order.get(g[0][0], 99),
                                                                      g[0][1])):
        commits = sorted({str(r.get("commit", "?")) for r in rs})
        row = [f"{order.get(kind, '?')} {kind}", backend, len(rs),
               sum(bool(r["recovered"]) for r in rs),
               sum(bool(r["chain_broken"]) for r in rs),
               sum(int(str(r["mismatches"])) for r in rs),
               sum(int(str(r["tracebacks"])) for r in rs),
               sum(int(str(r.get("unclear", 0))) for r in rs),
               sum(bool(r["leftovers"]) for r in rs),
               sum(bool(r["harness_error"]) for r in rs),
               max(int(str(r.get("recovery_cycles", 0))) for r in rs) or "-",
               max(round(float(str(r.get("late_recovery", 0)))) for r in rs) or "-",
               ", ".join(commits)]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def phases(records: list[dict[str, object]]) -> str:
    """Where the faults of each kind landed: the moment aimed at, and where the cycle
    really was then (a late moment may find the stream or the cycle over)."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in records:
        counts[f"{r['kind']} ({r['backend']})"][f"{r['moment']} -> {r['phase']}"] += 1
    lines = ["| kind | moment aimed at -> phase of the cycle hit: rounds |", "|---|---|"]
    for kind, c in sorted(counts.items()):
        lines.append(f"| {kind} | " + ", ".join(f"{k}: {n}" for k, n in sorted(c.items()))
                     + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
