"""What the benchmarks in bench/ share: the lab, call counting, timing, the results file.

Every benchmark writes its own section, ``bench/results/NAME.md``, and then
rebuilds ``bench/RESULTS.md`` from the sections present (the header there says
on which machine, with which versions and when), so each benchmark can run
alone and ``bench/run_all.py`` runs them all.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# The code measured: a commit (default HEAD), exported with `git archive`, so that
# uncommitted work in progress in the tree is never what a figure describes; the lab
# runs that export's src/zfsrepl (its setup.sh syncs the code of the tree it is in).
# ZFSREPL_BENCH_REV=worktree measures the work tree as it is.
REV = os.environ.get("ZFSREPL_BENCH_REV") or "HEAD"


def _export(rev: str) -> tuple[Path, str]:
    if rev == "worktree":
        return REPO, "work tree"
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev],
                            capture_output=True, text=True, check=True).stdout.strip()
    tree = Path(tempfile.mkdtemp(prefix="zfsrepl-bench-code-"))
    atexit.register(shutil.rmtree, tree, True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src", "tests/lab"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree, f"commit {commit}"


CODE, CODE_LABEL = _export(REV)
for _p in (CODE / "tests", CODE / "src"):
    sys.path.insert(0, str(_p))

from lab import Lab, LabHost, ZfsreplCli  # noqa: E402
from zfsrepl.host import SSH_DEFAULT_OPTIONS  # noqa: E402

RESULTS_DIR = BENCH / "results"
RESULTS = BENCH / "RESULTS.md"
# The order of the sections in RESULTS.md (run_all.py runs them in this order too).
SECTIONS = ("throughput", "cycle_cost", "snapshots", "catchup", "memory", "recursive",
            "peers", "rpo", "skip_unchanged")
# Sections that only a run by hand writes (peers.py --section), after those above.
EXTRA_SECTIONS = ("peers-bzfs", "peers-100", "peers-100-change", "peers-100-agent",
                  "peers-100-classic", "peers-100-zab", "snapshots-openzfs")

# zfsrepl's own cipher choice, as ssh -o options, for the raw pipeline's fair variant.
ZFSREPL_CIPHER_OPTIONS = " ".join(f"-o {shlex.quote(o)}" for o in SSH_DEFAULT_OPTIONS)
# What `ssh` in a raw pipeline gets besides the cipher: the options every lab call uses.
RAW_SSH = "ssh -o BatchMode=yes -o LogLevel=ERROR"


def require_root(parser_error: object = None) -> None:
    if os.geteuid() != 0:
        sys.exit("run as root from the repository root: the lab creates pools, users and "
                 "network namespaces")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt_s(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.0f} ms"


def load() -> str:
    """The 1/5/15-minute load averages, as `uptime` shows them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def user_path(lab: Lab) -> str:
    """The PATH the lab gives its users (tests/lab/fuse/common.sh: USER_PATH)."""
    return f"{lab.bin_dir}:/usr/local/bin:/usr/bin:/bin"


def timed(fn: object) -> float:
    started = time.monotonic()
    fn()  # type: ignore[operator]
    return time.monotonic() - started


def alternate(i: int, names: Sequence[str]) -> list[str]:
    """The order of the variants in round ``i``: rotated each round, so none always
    goes first (page cache, ARC and the other engineers' load are shared fairly)."""
    k = i % len(names)
    return [*names[k:], *names[:k]]


# ---------------------------------------------------------------------------- counting


class CallCounter:
    """Logging wrappers named ``zfs`` and ``ssh``, for counting what a cycle starts.

    * source side: a directory with ``zfs`` and ``ssh`` to put first on PATH
      (:meth:`source_env`); they log their argv and exec the lab's ``zfs`` wrapper
      and /usr/bin/ssh.
    * destination side: a ``zfs`` that logs and execs the lab's ``zfs`` wrapper, named
      by absolute path in the service's ``destination.zfs_command`` (:attr:`dst_zfs`).
      The lab's sshd sets its own PATH, so this is how a per-benchmark wrapper gets
      between sshd and zfs without touching the shared lab files.

    Everything lives in a temporary directory removed by :meth:`close`.
    """

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix="zfsrepl-bench-count-", dir="/var/tmp"))
        self.dir.chmod(0o755)
        self.src_bin = self.dir / "src-bin"
        self.dst_bin = self.dir / "dst-bin"
        self.logs = self.dir / "logs"
        for d in (self.src_bin, self.dst_bin, self.logs):
            d.mkdir()
            d.chmod(0o755)
        self.logs.chmod(0o1777)  # written by the lab users src and dst
        self.src_log = self.logs / "src.log"
        self.dst_log = self.logs / "dst.log"
        self._wrapper(self.src_bin / "zfs", "zfs", self.src_log, str(lab.bin_dir / "zfs"))
        self._wrapper(self.src_bin / "ssh", "ssh", self.src_log, "/usr/bin/ssh")
        self._wrapper(self.dst_bin / "zfs", "zfs", self.dst_log, str(lab.bin_dir / "zfs"))
        self.reset()

    @property
    def dst_zfs(self) -> str:
        return str(self.dst_bin / "zfs")

    @staticmethod
    def _wrapper(path: Path, label: str, log: Path, real: str) -> None:
        # one write per call (a line built first), so concurrent calls do not interleave
        path.write_text(
            "#!/bin/sh\n"
            f"line={label}\n"
            'for a in "$@"; do line="$line $a"; done\n'
            f"printf '%s\\n' \"$line\" >> {shlex.quote(str(log))}\n"
            f'exec {shlex.quote(real)} "$@"\n')
        path.chmod(0o755)

    def source_env(self) -> dict[str, str]:
        return {"PATH": f"{self.src_bin}:{user_path(self.lab)}"}

    def reset(self) -> None:
        for log in (self.src_log, self.dst_log):
            log.write_text("")
            log.chmod(0o666)

    def read(self) -> Calls:
        return Calls(_lines(self.src_log), _lines(self.dst_log))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> CallCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln]


@dataclasses.dataclass(frozen=True)
class Calls:
    """The calls logged during one cycle: ``src`` (local zfs and ssh), ``dst`` (remote zfs)."""

    src: list[str]
    dst: list[str]

    @property
    def local_zfs(self) -> int:
        return sum(1 for ln in self.src if ln.startswith("zfs"))

    @property
    def ssh(self) -> int:
        return sum(1 for ln in self.src if ln.startswith("ssh"))

    @property
    def remote_zfs(self) -> int:
        return len(self.dst)

    def breakdown(self) -> str:
        """e.g. ``local zfs: 1 get, 100 snapshot; ssh: 1 master, 201 command; ...``"""
        local = Counter(_zfs_verb(ln) for ln in self.src if ln.startswith("zfs"))
        ssh = Counter("master" if re.search(r"(^| )-M( |$)", ln) else "command"
                      for ln in self.src if ln.startswith("ssh"))
        remote = Counter(_zfs_verb(ln) for ln in self.dst)
        return "; ".join(f"{label}: " + ", ".join(f"{n} {verb}" for verb, n in sorted(c.items()))
                         for label, c in (("local zfs", local), ("ssh", ssh),
                                          ("remote zfs", remote)) if c)


def _zfs_verb(line: str) -> str:
    parts = line.split()
    # `zfs` alone prints its usage: zfsrepl's capability probe
    return parts[1] if len(parts) > 1 else "probe"


# ---------------------------------------------------------------------------- lab helpers


def root_script(host: LabHost, script: str, *args: str, timeout: float = 3600) -> str:
    """Run a shell script as root on ``host`` in one process (loops of zfs calls)."""
    out = host.root(["sh", "-c", script, "sh", *args], timeout=timeout).stdout
    return out.decode("utf-8", "replace")


def user_script(host: LabHost, script: str, *args: str, env: dict[str, str] | None = None,
                timeout: float = 3600) -> str:
    out = host.run(["sh", "-c", script, "sh", *args], env=env, timeout=timeout).stdout
    return out.decode("utf-8", "replace")


def write_random(path: Path, size_kib: int) -> None:
    """Incompressible data, so no layer can make the stream smaller than it is."""
    with path.open("wb") as f:
        left = size_kib
        while left > 0:
            n = min(left, 1024)
            f.write(os.urandom(n * 1024))
            left -= n


def snapshot_names(host: LabHost, fs: str) -> list[str]:
    out = host.zfs("list", "-H", "-t", "snapshot", "-d", "1", "-o", "name", "-s", "createtxg", fs)
    return [ln.split("@", 1)[1] for ln in out.splitlines() if "@" in ln]


@contextlib.contextmanager
def service_cli(lab: Lab, name: str) -> Iterator[ZfsreplCli]:
    repl = ZfsreplCli(lab, name)
    repl.create()
    try:
        yield repl
    finally:
        repl.destroy()


# ---------------------------------------------------------------------------- results


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr) else "?"


def _pkg(name: str) -> str:
    return _cmd(["dpkg-query", "-W", "-f=${Version}", name])


def machine() -> list[str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    osname = "?"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    return [
        f"- host: {platform.node()}, {os.cpu_count()} CPUs ({cpu}), "
        f"{mem_kib / 1024 / 1024:.0f} GiB RAM",
        f"- OS: {osname}, kernel {platform.release()}",
        f"- ZFS: zfs-fuse {_pkg('zfs-fuse')} (pool version 23), the lab of tests/lab "
        "(two network namespaces, one zfs-fuse daemon, file-backed pools in page cache)",
        f"- OpenSSH {_pkg('openssh-client')}; zfsrepl's cipher list: "
        f"`{SSH_DEFAULT_OPTIONS[0]}`",
        f"- zfsrepl: {CODE_LABEL}, run by the lab users' /usr/bin/python3 "
        f"({_cmd(['/usr/bin/python3', '--version'])}); benchmarks driven by Python "
        f"{platform.python_version()}",
    ]


def write_section(name: str, lines: list[str]) -> None:
    """Store this benchmark's section and rebuild RESULTS.md."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    body = [*lines, "", f"_Measured {stamp}, zfsrepl {CODE_LABEL}._", ""]
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(body))
    (RESULTS_DIR / "machine.md").write_text("\n".join(machine()) + "\n")
    rebuild()


def rebuild() -> None:
    head = (RESULTS_DIR / "intro.md").read_text() if (RESULTS_DIR / "intro.md").exists() else ""
    parts = [head.rstrip() + "\n"] if head else ["# zfsrepl benchmark results\n"]
    if (RESULTS_DIR / "machine.md").exists():
        parts.append("## Machine and versions (of the latest run)\n\n"
                     + (RESULTS_DIR / "machine.md").read_text())
    for name in (*SECTIONS, *EXTRA_SECTIONS):
        path = RESULTS_DIR / f"{name}.md"
        if path.exists():
            parts.append(path.read_text().rstrip() + "\n")
    tail = RESULTS_DIR / "findings.md"
    if tail.exists():
        parts.append(tail.read_text().rstrip() + "\n")
    RESULTS.write_text("\n".join(parts))


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out
