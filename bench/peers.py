"""Peers on current OpenZFS: zfsrepl against the raw pipeline, syncoid, zfs-autobackup, bzfs.

Runs on the OpenZFS lab backend (the VM; ``ZFSREPL_LAB_BACKEND=openzfs`` is set here),
whose image carries syncoid (Debian's sanoid package), zfs-autobackup and bzfs (PyPI).
All five run as the lab's delegated non-root user ``src`` on the source host and reach
``dst`` over ssh with the same cipher list, each on a tree of its own (so that no
tool ever sees another's snapshots), in the same run and alternating:

    zfsrepl          zfsrepl runonce, keep = 3
    raw              the minimal script of cycle_cost.py: per filesystem snapshot,
                     send -i | ssh receive -u -F, destroy the oldest on each side
    syncoid          syncoid --recursive --skip-parent over the tree's children (one
                     invocation for all of them: syncoid's cheapest form), no
                     compression, --no-privilege-elevation
    zfs-autobackup   one zfs-autobackup run selecting the children
                     (autobackup:NAME=child), --keep-source=3 --keep-target=3, with
                     what its performance guide gives for speed (a persistent ssh
                     connection; ZAB_OPTIONS)
    zfsrepl-p2       (only when named in --variants) zfsrepl with parallel = 2: as many
                     streams at once as bzfs's threads on the VM's 2 CPUs
    zfsrepl-agent    (only when named in --variants) zfsrepl as `zfsrepl setup` installs
                     a service: its own key, whose forced command on the destination is
                     the agent (which takes the destination's holds, releases and
                     destroys in one libzfs_core request each)
    bzfs             two bzfs runs: one snapshots the tree's children, replicates them
                     and prunes the destination to 3; one prunes the source to 3
                     (bzfs prunes a source only as the destination of a run of its
                     own); with the options its manual gives for speed (BZFS_OPTIONS)

Two figures:

1. cycle cost with 1 and 10 (and, with --counts, more) filesystems, nothing changed
   and a small change (64 KiB in every filesystem), in a steady state; wall time,
   and the local `zfs` and `ssh` processes of one further cycle, counted by
   logging wrappers first on the user's PATH;
2. throughput: a full and an incremental replication of one filesystem
   (--size-mib of incompressible data, then as much again).

The VM is emulated (TCG): absolute times are far from a real machine's; the ratios
between tools in the same run are the result.

Run as root from the repository root:

    python bench/peers.py [--counts 1,10] [--rounds 3] [--warmup 3] [--size-mib 64]
                          [--variants zfsrepl,bzfs,...] [--no-throughput] [--section NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Iterator

os.environ["ZFSREPL_LAB_BACKEND"] = "openzfs"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
from cycle_cost import RAW_CYCLE

from lab import Lab, LabHost, ZfsreplCli, claim_area, lab_session, service_definition
from lab.zfs import destroy, exists, release_holds
from zfsrepl.config import parse_service
from zfsrepl.setup.apply import forced_argv
from zfsrepl.setup.authorized_keys import key_line

KEEP = 3  # the snapshots each variant keeps on both sides (--keep)
WARMUP = 3
CHANGE_KIB = 64
ALL_VARIANTS = ("zfsrepl", "raw", "syncoid", "zfs-autobackup", "bzfs")
# zfsrepl's service with `parallel` set, by variant (run only when named in --variants)
PARALLEL_VARIANTS = {"zfsrepl-p2": 2}
AGENT_VARIANT = "zfsrepl-agent"  # zfsrepl through the agent (run only when named)
KNOWN_VARIANTS = ("zfsrepl", *PARALLEL_VARIANTS, AGENT_VARIANT, *ALL_VARIANTS[1:])
VARIANTS: tuple[str, ...] = ALL_VARIANTS  # the variants of this run (--variants)
SITUATIONS = {"no-change": False, "small-change": True}
CIPHERS = bl.SSH_DEFAULT_OPTIONS[0].split("=", 1)[1]
# What bzfs's manual offers for speed, for cycles of small changes (see bench/README.md)
BZFS_OPTIONS = [
    "--no-privilege-elevation",   # the user holds `zfs allow` rights: no sudo
    "--cache-snapshots",          # skip listings of what `snapshots_changed` says is unchanged
    "--no-estimate-send-size",    # no `zfs send -n -v` before each send
    "--compression-program=-",    # small, incompressible changes: no zstd on either side
    "--mbuffer-program=-",        # nor mbuffer,
    "--pv-program=-",             # nor pv in the pipeline
    f"--ssh-cipher={CIPHERS}",    # the cipher list every variant gets
    "--quiet",
]
# What zfs-autobackup's performance guide offers that leaves its job the same as
# zfsrepl's (holds and the GUID check of common snapshots stay, as zfsrepl keeps them);
# its persistent ssh connection is in the tree's ssh config
ZAB_OPTIONS = [
    "--allow-empty",       # a snapshot every run, as zfsrepl takes: no `written` checks
    "--clear-mountpoint",  # received filesystems not mounted, as zfsrepl receives -u
]


class VmCounter:
    """Logging `zfs` and `ssh` wrappers in the lab (in the VM), first on the source
    user's PATH: they count the processes a cycle starts there."""

    def __init__(self, lab: Lab) -> None:
        self.host = lab.src
        self.dir = f"{lab.work_dir}/bench-count"
        self.log = f"{self.dir}/calls.log"
        self.host.root(["install", "-d", "-m", "0755", self.dir])
        # the users' zfs: /usr/sbin/zfs itself where `zfs allow` gives the rights
        for name, real in (("zfs", lab.zfs_command), ("ssh", "/usr/bin/ssh")):
            # one write per call (the line built first): concurrent calls do not interleave
            script = (f"#!/bin/sh\nline={name}\n"
                      'for a in "$@"; do line="$line $a"; done\n'
                      f"printf '%s\\n' \"$line\" >> {self.log}\n"
                      f'exec {real} "$@"\n')
            path = f"{self.dir}/{name}"
            self.host.root(["sh", "-c", 'cat > "$1" && chmod 0755 "$1"', "sh", path],
                           input=script.encode())
        self.path = f"{self.dir}:{bl.user_path(lab)}:/usr/sbin:/sbin"  # syncoid is in sbin
        self.reset()

    def reset(self) -> None:
        bl.root_script(self.host, ': > "$1" && chmod 0666 "$1"', self.log)

    def read(self) -> tuple[int, int]:
        """(local zfs, ssh) processes since the last reset."""
        lines = self.lines()
        return (sum(1 for ln in lines if ln.startswith("zfs")),
                sum(1 for ln in lines if ln.startswith("ssh")))

    def lines(self) -> list[str]:
        """The calls since the last reset, one argv a line."""
        return bl.root_script(self.host, 'cat "$1"', self.log).splitlines()

    def close(self) -> None:
        bl.root_script(self.host, 'rm -rf "$1"', self.dir)


class Trees:
    """One source tree of N filesystems per variant, a destination parent for each,
    and the command that runs one cycle of each variant."""

    def __init__(self, lab: Lab, repl: ZfsreplCli, area_src: str, area_dst: str, n: int,
                 tag: str) -> None:
        self.lab, self.repl, self.n = lab, repl, n
        self.name = f"{tag}{n}"
        self.src = {v: f"{area_src}/{self.name}-{v}" for v in VARIANTS}
        self.dst = {v: f"{area_dst}/{self.name}-{v}" for v in VARIANTS}
        for v in VARIANTS:
            lab.src.zfs("create", self.src[v])
            bl.root_script(lab.src, 'i=1; while [ "$i" -le "$2" ]; do zfs create "$1/fs$i"; '
                           "i=$((i + 1)); done", self.src[v], str(n))
            lab.dst.zfs("create", self.dst[v])
        # zfs-autobackup replicates the children of the tree marked for its backup name
        if "zfs-autobackup" in VARIANTS:
            lab.src.zfs("set", f"autobackup:{self.name}=child", self.src["zfs-autobackup"])
        # one service per zfsrepl variant, named after it
        self.service = {v: self.name + v[len("zfsrepl"):] for v in VARIANTS
                        if v.startswith("zfsrepl")}
        for v, service in self.service.items():
            pairs = [(f"{self.src[v]}/fs{i}", f"{self.dst[v]}/fs{i}") for i in range(1, n + 1)]
            tuning: dict[str, object] = (
                {"parallel": PARALLEL_VARIANTS[v]} if v in PARALLEL_VARIANTS else {})
            if v == AGENT_VARIANT:
                tuning["destination"] = {"identity": self._agent_key(service, pairs)}
            repl.write_service(name=service, filesystems=pairs, keep=KEEP, retries=1, **tuning)
        self.raw_k = 0
        self.target = f"{lab.dst.user}@{lab.dst.address}"
        # zfs-autobackup's ssh setup as its performance guide gives it: one persistent
        # connection that every ssh of every run reuses (syncoid and bzfs keep their own)
        self.ssh_config = f"{repl.base}/{self.name}-ssh_config"  # the user's own dir
        repl.put(Path(self.ssh_config),
                 f"Host *\n  Ciphers {CIPHERS}\n  BatchMode yes\n  LogLevel ERROR\n"
                 f"  ControlMaster auto\n  ControlPath ~/.ssh/zfsrepl-bench-{self.name}-%C\n"
                 "  ControlPersist 3600\n".encode())
        # bzfs wants these names to contain "bzfs_ssh_config" and "bzfs-logs"; its
        # snapshot cache lives beside its logs, so one per tree
        self.bzfs_ssh_config = f"{repl.base}/{self.name}-bzfs_ssh_config"
        repl.put(Path(self.bzfs_ssh_config), b"Host *\n  BatchMode yes\n  LogLevel ERROR\n")
        self.bzfs_logs = f"{repl.base}/{self.name}-bzfs-logs"
        self.bzfs_times: list[tuple[float, float]] = []  # (replicate, prune source) per run

    def _agent_key(self, service: str, pairs: list[tuple[str, str]]) -> str:
        """A key of the service's own, whose line in the destination user's
        authorized_keys runs the agent with the forced command setup writes (the same
        code makes it); the private key's path."""
        lab = self.lab
        key = f"{self.repl.base}/{service}-key"
        lab.src.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", service, "-f", key])
        public = lab.src.run(["cat", f"{key}.pub"]).stdout.decode()
        definition = service_definition(lab, pairs, name=service, keep=KEEP)
        svc = parse_service(definition)
        zfsrepl = lab.dst.run(["sh", "-c", "command -v zfsrepl"]).stdout.decode().strip()
        self.agent_log = lab.dst.run(["sh", "-c", 'printf %s "$HOME/$1"', "sh",
                                      f"zfsrepl-bench.agent.{service}.log"]).stdout.decode()
        self.agent_marker = f"zfsrepl:{service}:bench"
        line = key_line(public, forced_argv(svc, zfsrepl, self.agent_log), self.agent_marker)
        lab.dst.run(["sh", "-c", 'printf "%s\\n" "$1" >> "$HOME/.ssh/authorized_keys"', "sh",
                     line])
        return key

    def close(self) -> None:
        """What the trees leave beside their datasets: zfs-autobackup's persistent
        connection, the agent variant's key line and log."""
        if "zfs-autobackup" in VARIANTS:  # the connection, if it is up
            self.lab.src.run(["ssh", "-F", self.ssh_config, "-O", "exit", self.target],
                             check=False)
        if AGENT_VARIANT in self.service:
            self.lab.dst.run(["sh", "-c", r'sed -i "/ $1\$/d" "$HOME/.ssh/authorized_keys"; '
                              'rm -f "$2"', "sh", self.agent_marker, self.agent_log])

    def destroy(self) -> None:
        """Every variant's trees, on both sides (the VM's disk is small), after close()."""
        self.close()
        for v in VARIANTS:
            for host, fs in ((self.lab.src, self.src[v]), (self.lab.dst, self.dst[v])):
                if exists(host, fs):
                    release_holds(self.lab, host, fs)
                    destroy(host, fs, "-R")

    def change(self, seed: int, size_kib: int = CHANGE_KIB) -> None:
        for v in VARIANTS:
            mnt = self.lab.src.mountpoint(self.src[v])
            for i in range(1, self.n + 1):
                bl.write_random(mnt / f"fs{i}" / f"change-{seed % 2}.bin", size_kib)
        # written out before any variant is timed: the first one's snapshot would
        # otherwise pay for every variant's writes (a txg holding all of them)
        self.lab.src.root(["zpool", "sync", self.lab.src.pool])

    def run(self, variant: str, path: str | None = None) -> float:
        env = {"PATH": path} if path else None
        host: LabHost = self.lab.src
        if variant in self.service:
            return bl.timed(lambda: self.repl.run("runonce", self.service[variant], env=env,
                                                  timeout=7200))
        if variant == "raw":
            self.raw_k += 1
            args = [str(self.n), self.src["raw"], self.dst["raw"], str(self.raw_k), str(KEEP),
                    "zfs", self.target]
            raw_env = {**(env or {}), "SSHOPTS": f"-o BatchMode=yes -o LogLevel=ERROR "
                                                 f"{bl.ZFSREPL_CIPHER_OPTIONS}"}
            return bl.timed(lambda: bl.user_script(host, RAW_CYCLE, *args, env=raw_env,
                                                   timeout=7200))
        if variant == "bzfs":
            return self._bzfs(env)
        if variant == "syncoid":
            argv = ["syncoid", "--recursive", "--skip-parent", "--no-privilege-elevation",
                    "--compress=none", f"--sshcipher={CIPHERS}", "--quiet",
                    self.src["syncoid"], f"{self.target}:{self.dst['syncoid']}"]
        else:
            # the received datasets land at TARGET/<source path minus its first parts>
            strip = self.src["zfs-autobackup"].count("/") + 1
            argv = ["zfs-autobackup", "--ssh-target", self.target, "--ssh-config",
                    self.ssh_config, *ZAB_OPTIONS, f"--keep-source={KEEP}",
                    f"--keep-target={KEEP}", f"--strip-path={strip}", self.name,
                    self.dst["zfs-autobackup"]]
        return bl.timed(lambda: host.run(argv, env=env, timeout=7200))

    def _bzfs(self, env: dict[str, str] | None) -> float:
        """One cycle: bzfs's two runs back to back; the time of both (each one's recorded)."""
        # bzfs names its snapshots ORG_TARGET_<time>_PERIOD and keeps, per plan, the newest
        # KEEP of a period: one "secondly" period, a snapshot each run (even-if-not-due)
        plan = f"{{'bench': {{'onsite': {{'secondly': {KEEP}}}}}}}"
        common = [*BZFS_OPTIONS, f"--ssh-dst-config-file={self.bzfs_ssh_config}",
                  f"--log-dir={self.bzfs_logs}", "--recursive", "--skip-parent"]
        keep = ["--delete-dst-snapshots", f"--delete-dst-snapshots-except-plan={plan}"]
        replicate = ["bzfs", *common, "--create-src-snapshots",
                     f"--create-src-snapshots-plan={plan}",
                     "--create-src-snapshots-even-if-not-due", *keep,
                     self.src["bzfs"], f"{self.target}:{self.dst['bzfs']}"]
        # "dummy", bzfs's empty source: keep by the plan alone, whatever the other side has
        prune = ["bzfs", *common, "--skip-replication", *keep, "dummy", self.src["bzfs"]]
        # one shell, as the other variants are one command: the lab's per-command
        # overhead is paid once; bash's clock (no `date` processes) splits the time
        script = (f"t0=$EPOCHREALTIME; {shlex.join(replicate)} || exit; t1=$EPOCHREALTIME; "
                  f'{shlex.join(prune)} || exit; echo "$t0 $t1 $EPOCHREALTIME"')
        out: list[bytes] = []
        took = bl.timed(lambda: out.append(self.lab.src.run(["bash", "-c", script], env=env,
                                                            timeout=7200).stdout))
        t0, t1, t2 = (float(x) for x in out[0].decode().split()[-3:])
        self.bzfs_times.append((t1 - t0, t2 - t1))
        return took


def cycle_cost(lab: Lab, repl: ZfsreplCli, area_src: str, area_dst: str, counts: list[int],
               rounds: int, warmup: int, counter: VmCounter | None,
               calls_dir: Path, changes: list[bool]) -> list[str]:
    """The table of cycle times, for each situation of `changes` (False: nothing
    changed, True: a small change); processes counted in one more cycle of each variant
    unless `counter` is None."""
    rows = []
    summary: dict[tuple[int, bool], dict[str, float]] = {}
    for n in counts:
        print(f"cycle cost, {n} filesystems: setting up (load {bl.load()})", flush=True)
        t = Trees(lab, repl, area_src, area_dst, n, "cyc")
        try:
            for _ in range(warmup):
                for v in VARIANTS:
                    t.run(v)
            for change in changes:
                times: dict[str, list[float]] = {v: [] for v in VARIANTS}
                for i in range(rounds):
                    if change:
                        t.change(seed=i + 1)
                    for v in bl.alternate(i, VARIANTS):
                        times[v].append(t.run(v))
                    print(f"  {n} fs, {'small change' if change else 'no change'}, round {i + 1}: "
                          + "  ".join(f"{v} {times[v][-1]:.1f}s" for v in VARIANTS), flush=True)
                calls = {}
                for v in VARIANTS:
                    if counter is None:
                        break
                    if change:
                        t.change(seed=rounds + 1)
                    counter.reset()
                    t.run(v, path=counter.path)
                    calls[v] = counter.read()
                    # every call of the counted cycle, for the analysis of where a cycle goes
                    (calls_dir / f"{n}fs-{'change' if change else 'nochange'}-{v}.log").write_text(
                        "\n".join(counter.lines()) + "\n")
                med = {v: bl.median(times[v]) for v in VARIANTS}
                summary[(n, change)] = med
                if "bzfs" in VARIANTS:
                    # bzfs's cycle is two runs: how much of it is the second (the source prune)
                    split = t.bzfs_times[-rounds - (1 if counter else 0):][:rounds]
                    print("  bzfs: replicate + prune destination "
                          f"{bl.median([a for a, _ in split]):.2f}s, prune source "
                          f"{bl.median([b for _, b in split]):.2f}s (medians)", flush=True)
                rows.append([n, "small change" if change else "no change",
                             *(f"{med[v]:.2f}" for v in VARIANTS),
                             *ratio_cells(med),
                             " · ".join(f"{v}: {calls[v][0]} / {calls[v][1]}" for v in VARIANTS)
                             if calls else "not counted"])
                print("  row: " + " | ".join(str(c) for c in rows[-1]), flush=True)
        finally:
            t.close()
    lines = bl.table(["filesystems", "situation", *(f"{v} median (s)" for v in VARIANTS),
                      *ratio_heads(), "local zfs / ssh processes per cycle"], rows)
    lo, hi = min(counts), max(counts)
    if lo != hi:
        lines.append("")
        for change in changes:
            a, b = summary[(lo, change)], summary[(hi, change)]
            lines.append(f"- {'small change' if change else 'no change'}: {hi} filesystems cost "
                         + ", ".join(f"{v} {b[v] / a[v]:.1f} x" for v in VARIANTS)
                         + f" of {lo}")
    return lines


def ratio_heads() -> list[str]:
    heads = []
    if "raw" in VARIANTS:
        heads.append("zfsrepl / raw")
    classic = classic_peers()
    if classic:
        best = f"best of {', '.join(classic)}" if len(classic) > 1 else classic[0]
        heads += [f"{best} / {v}" for v in zfsrepl_variants()]
    if "bzfs" in VARIANTS:
        heads += [f"bzfs / {v}" for v in zfsrepl_variants()]
    return heads


def classic_peers() -> list[str]:
    """The peers of the 5-times target that run (either may run without the other)."""
    return [v for v in ("syncoid", "zfs-autobackup") if v in VARIANTS]


def zfsrepl_variants() -> list[str]:
    return [v for v in VARIANTS if v.startswith("zfsrepl")]


def ratio_cells(med: dict[str, float]) -> list[str]:
    """The cells under ratio_heads(): zfsrepl against each peer, in the same run."""
    cells = []
    if "raw" in VARIANTS:
        cells.append(f"{med['zfsrepl'] / med['raw']:.2f}")
    if classic_peers():
        best = min(med[v] for v in classic_peers())
        cells += [f"{best / med[v]:.2f}" for v in zfsrepl_variants()]
    if "bzfs" in VARIANTS:
        cells += [f"**{med['bzfs'] / med[v]:.2f}**" for v in zfsrepl_variants()]
    return cells


def throughput(lab: Lab, repl: ZfsreplCli, area_src: str, area_dst: str, size_mib: int,
               rounds: int) -> list[str]:
    """Each round: a fresh tree per variant, full of `size_mib`, then as much again
    written and replicated incrementally."""
    full: dict[str, list[float]] = {v: [] for v in VARIANTS}
    incr: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(rounds):
        print(f"throughput round {i + 1}: setting up (load {bl.load()})", flush=True)
        t = Trees(lab, repl, area_src, area_dst, 1, f"tp{i}r")
        t.change(seed=0, size_kib=size_mib * 1024)
        for v in bl.alternate(i, VARIANTS):
            full[v].append(t.run(v))
        t.change(seed=1, size_kib=size_mib * 1024)
        for v in bl.alternate(i, VARIANTS):
            incr[v].append(t.run(v))
        t.destroy()
        print("  full: " + "  ".join(f"{v} {full[v][-1]:.1f}s" for v in VARIANTS)
              + "\n  incremental: " + "  ".join(f"{v} {incr[v][-1]:.1f}s" for v in VARIANTS),
              flush=True)
    rows = []
    for what, times in (("full", full), ("incremental", incr)):
        med = {v: bl.median(times[v]) for v in VARIANTS}
        rows.append([what, *(f"{med[v]:.1f}" for v in VARIANTS),
                     *(f"{med[v] / med['zfsrepl']:.2f}" for v in VARIANTS if v != "zfsrepl")])
    return bl.table(["stream", *(f"{v} median (s)" for v in VARIANTS),
                     *(f"{v} / zfsrepl" for v in VARIANTS if v != "zfsrepl")], rows)


ARC_MAX_PARAMETER = "/sys/module/zfs/parameters/zfs_arc_max"
# The lab image caps the VM's ARC at 256 MiB (tests/lab/openzfs/build.sh): enough for
# the tests, not for the metadata of hundreds of filesystems, where the ARC evicts and
# prunes without end (arc_prune busy, every dataset opened again from disk).
ARC_MAX_MIB = 1024


@contextlib.contextmanager
def arc_max(lab: Lab, mib: int) -> Iterator[None]:
    """The VM's ARC capped at `mib` MiB for the run (the kernel's module parameter,
    which one VM shares between both lab hosts), as it was afterwards."""
    before = bl.root_script(lab.src, 'cat "$1"', ARC_MAX_PARAMETER).strip()
    bl.root_script(lab.src, 'echo "$2" > "$1"', ARC_MAX_PARAMETER, str(mib << 20))
    try:
        yield
    finally:
        bl.root_script(lab.src, 'echo "$2" > "$1"', ARC_MAX_PARAMETER, before)


def arc_prunes(lab: Lab) -> int:
    """How often the ARC has had to prune since the VM started (its arcstats)."""
    out = bl.root_script(lab.src, "cat /proc/spl/kstat/zfs/arcstats")
    return next((int(line.split()[2]) for line in out.splitlines()
                 if line.startswith("arc_prune ")), -1)


def versions(lab: Lab) -> str:
    def first_line(argv: list[str]) -> str:
        out = lab.src.run(argv, check=False)
        text = (out.stdout + out.stderr).decode("utf-8", "replace").strip()
        return text.splitlines()[0] if text else "?"
    zfs = " ".join(first_line(["zfs", "version"]).split())
    syncoid = first_line(["sh", "-c", "dpkg-query -W -f='${Version}' sanoid"])
    zab = first_line(["zfs-autobackup", "--version"])
    bzfs = first_line(["bzfs", "--version"]).split(",")[0]
    return f"In the VM: {zfs}; syncoid (sanoid {syncoid}); {zab}; {bzfs}."


def main() -> int:
    global VARIANTS, KEEP
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,10", help="numbers of filesystems, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=WARMUP,
                        help="cycles of each variant before measuring")
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS),
                        help="the variants to run, comma-separated (zfsrepl always runs)")
    parser.add_argument("--no-throughput", action="store_true",
                        help="only the cycle cost")
    parser.add_argument("--keep", type=int, default=KEEP,
                        help="snapshots kept on each side (1 reaches the steady state, "
                             "pruning every cycle, after one warm-up cycle)")
    parser.add_argument("--situations", default=",".join(SITUATIONS),
                        help="the cycles to time, comma-separated: " + ", ".join(SITUATIONS))
    parser.add_argument("--no-count", action="store_true",
                        help="no extra cycle counting the processes (halves a long run)")
    sections = [s for s in (*bl.SECTIONS, *bl.EXTRA_SECTIONS) if s.startswith("peers")]
    parser.add_argument("--section", default="peers", choices=sections,
                        help="the section of RESULTS.md to write (another than run_all.py's "
                             "for a run by hand)")
    parser.add_argument("--arc-max-mib", type=int, default=ARC_MAX_MIB,
                        help="the VM's ARC limit for the run (the image's is 256 MiB, too "
                             "small for the metadata of hundreds of filesystems)")
    parser.add_argument("--keep-lab", action="store_true")
    args = parser.parse_args()
    bl.require_root()
    counts = [int(c) for c in args.counts.split(",")]
    if args.keep < 1:
        parser.error("--keep must be 1 or more")
    KEEP = args.keep
    chosen = set(args.variants.split(",")) | {"zfsrepl"}
    if chosen - set(KNOWN_VARIANTS):
        parser.error(f"unknown variant(s) {', '.join(sorted(chosen - set(KNOWN_VARIANTS)))}; "
                     f"known: {', '.join(KNOWN_VARIANTS)}")
    VARIANTS = tuple(v for v in KNOWN_VARIANTS if v in chosen)
    situations = args.situations.split(",")
    if not situations or set(situations) - set(SITUATIONS):
        parser.error(f"--situations takes {', '.join(SITUATIONS)}, comma-separated")
    calls_dir = Path(tempfile.mkdtemp(prefix="zfsrepl-bench-peers-calls-", dir="/var/tmp"))

    with lab_session(keep=args.keep_lab) as lab, claim_area(lab) as area, \
            bl.service_cli(lab, f"bench-{area.name}") as repl, arc_max(lab, args.arc_max_mib):
        counter = VmCounter(lab)
        try:
            prunes = arc_prunes(lab)
            head = f"{versions(lab)} The VM's ARC is capped at {args.arc_max_mib} MiB."
            load = bl.load()
            tp = ([] if args.no_throughput else
                  throughput(lab, repl, area.src, area.dst, args.size_mib, args.rounds))
            cc = cycle_cost(lab, repl, area.src, area.dst, counts, args.rounds, args.warmup,
                            None if args.no_count else counter, calls_dir,
                            [SITUATIONS[s] for s in situations])
            # the sign of an ARC too small for the run's filesystems (see ARC_MAX_MIB)
            head += f" The ARC pruned {arc_prunes(lab) - prunes} times during the run."
            # written before the area is destroyed: a long run's figures must not be lost
            lines = section(args, head, load, tp, cc)
            bl.write_section(args.section, lines)
            print("\n".join(lines), flush=True)
        finally:
            counter.close()
    if any(calls_dir.iterdir()):
        print(f"the calls of each counted cycle: {calls_dir}", flush=True)
    else:  # --no-count: nothing to keep
        calls_dir.rmdir()
    return 0


def section(args: argparse.Namespace, head: str, load: str, tp: list[str],
            cc: list[str]) -> list[str]:
    # the numbers RESULTS.md and its findings refer to
    number = {"peers": "7", "peers-bzfs": "9", "peers-100": "9b",
              "peers-100-change": "9c", "peers-100-agent": "9d",
              "peers-100-classic": "9e", "peers-100-zab": "9f"}[args.section]
    peers = [v for v in VARIANTS if not v.startswith("zfsrepl") and v != "raw"]
    names = ", ".join(peers[:-1]) + (" and " if len(peers) > 1 else "") + peers[-1] \
        if peers else "the raw pipeline"
    lines = [f"## {number}. Peers on current OpenZFS (the VM lab): {names}", "",
             f"{head} Load average at the start: {load}. The variants ({', '.join(VARIANTS)}) "
             "run as the delegated non-root user `src`, each on its own tree, alternating, "
             "with zfsrepl's cipher list. The VM is emulated (TCG, 2 vCPUs): absolute times "
             "are slow and only the ratios of the same run say something.", ""]
    if tp:
        lines += [f"### Throughput: one filesystem, {args.size_mib} MiB full, then "
                  f"{args.size_mib} MiB more incrementally ({args.rounds} rounds)", "", *tp, ""]
    lines += [f"### Cycle cost ({args.rounds} rounds after {args.warmup} warm-up cycles, keep = "
              f"{KEEP}; syncoid keeps only its newest sync snapshot)", "",
              "Targets: zfsrepl at least 5 times cheaper than syncoid and zfs-autobackup; "
              "ahead of bzfs (bzfs / zfsrepl > 1). bzfs's time is its two runs together.",
              "", *cc, ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
