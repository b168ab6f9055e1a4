"""`zfsrepl run` between the lab's hosts, as user src, over real ssh and real ZFS:
cycles, maintenance when the destination goes away, SIGTERM in the middle of a
transfer, runonce against a running service, status and metrics.

Replicas are checked by content: every snapshot on the destination must hold the
same files as the source snapshot of the same name. Waits are bounded (a hang
fails the test) but no test asserts how long anything took.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab import (
    Area,
    Lab,
    ZfsreplCli,
    own_snapshots,
    snapshot_checksums,
    snapshot_prefix,
    tree_checksums,
    wait_for,
    write_tree,
)

# zfs-fuse only: these tests read the service's state and metrics files and the pids of
# its processes on this machine ("local-processes"); in the OpenZFS VM those live in
# the guest. The daemon's cycles themselves are runonce's, which runs on both.
pytestmark = pytest.mark.backends("fuse")

SERVICE = "testrepl"
EXIT_MAINTENANCE = 96
# zfsrepl's own per-stream limit, 2 MiB/s: a stream of tens of MiB stays in flight for
# seconds (the lab does ~170 MB/s).
THROTTLED = {"bandwidth_limit": "2M"}


def assert_replicas_equal_sources(lab: Lab, src: str, dst: str) -> list[str]:
    """Every snapshot of the service on `dst` holds what `src` held at that snapshot."""
    replicated = own_snapshots(lab, lab.dst, dst)
    assert replicated
    for snap in replicated:
        assert snapshot_checksums(lab.dst, f"{dst}@{snap}") == \
            snapshot_checksums(lab.src, f"{src}@{snap}"), snap
    return replicated


class Daemon:
    """`zfsrepl run testrepl` as the source user, its output kept in a file."""

    def __init__(self, lab: Lab, repl: ZfsreplCli, out: Path) -> None:
        self.log_dir = repl.base / "log"
        self.out = out
        with open(out, "wb") as sink:  # the child keeps its own copy of the descriptor
            self.proc = lab.src.popen(
                repl.argv("run", "--log-dir", str(self.log_dir), SERVICE),
                stdout=sink.fileno(), stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, timeout: float = 120.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait()


def control_master(daemon: Daemon) -> int:
    """The pid of the daemon's one ssh ControlMaster (it runs between cycles too)."""
    def masters() -> list[int]:
        ps = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(daemon.proc.pid)],
                            capture_output=True, text=True).stdout
        return [int(ln.split()[0]) for ln in ps.splitlines() if " -M " in f" {ln} "]

    (pid,) = wait_for("the daemon's ControlMaster", masters)
    return pid


def start_fs(lab: Lab, area: Area, seed: int = 1) -> tuple[str, str, Path]:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    lab.src.zfs("create", src)
    mnt = lab.src.mountpoint(src)
    write_tree(mnt, seed=seed)
    return src, dst, mnt


def status_json(repl: ZfsreplCli) -> dict[str, Any]:
    """The service's status; `status` exits with the health (0 to 3), as the JSON says."""
    proc = repl.run("status", "--json", SERVICE, check=False)
    data = json.loads(proc.stdout)
    assert proc.returncode == data["exit_code"] and data["schema_version"] == 1
    (one,) = data["services"]
    return one


def recorded(status: dict[str, Any], cycles: int) -> dict[str, Any]:
    """`status` once it records `cycles` finished cycles, one of them a success; else {}."""
    done = status["cycles_total"] >= cycles and status["last_success"] is not None
    return status if done else {}


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def put_script(lab: Lab, repl: ZfsreplCli, name: str, body: str) -> Path:
    path = repl.base / name
    repl.put(path, f"#!/bin/sh\n{body}".encode())
    lab.src.run(["chmod", "755", str(path)])
    return path


def random_file(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


# ---------------------------------------------------------------------------- cycles


def test_daemon_replicates_cycle_after_cycle_with_status_and_metrics(
        lab: Lab, area: Area, repl: ZfsreplCli, tmp_path: Path) -> None:
    src, dst, mnt = start_fs(lab, area)
    port = 20000 + os.getpid() % 20000
    repl.write_service(filesystems=[(src, dst)], interval=2, retries=2, retry_delay=1.0,
                       keep=30, metrics_port=port)
    daemon = Daemon(lab, repl, tmp_path / "run.out")
    try:
        # New data after every cycle, so that each snapshot differs from the last.
        def cycles(n: int) -> None:
            done = len(own_snapshots(lab, lab.dst, dst))
            wait_for(f"{n} more cycle(s)",
                     lambda: len(own_snapshots(lab, lab.dst, dst)) >= done + n)

        for seed in (2, 3):
            cycles(1)
            write_tree(mnt, seed=seed)
            if seed == 2:
                master = control_master(daemon)
        cycles(2)  # the last of them snapshots the data as it is now
        # one ssh handshake for the life of the service, not one per cycle
        assert control_master(daemon) == master

        # A snapshot reaches the destination before its cycle ends and is recorded: wait
        # for the record of the cycles counted above, not just for their snapshots.
        running = wait_for("status to record three finished cycles",
                           lambda: recorded(status_json(repl), cycles=3))
        scraped = lab.src.run(
            ["python3", "-c", "import sys, urllib.request; sys.stdout.write(urllib.request."
             "urlopen(sys.argv[1], timeout=10).read().decode())",
             f"http://127.0.0.1:{port}/metrics"]).stdout.decode()
        textfile = (repl.state_dir / "metrics" / f"{SERVICE}.prom").read_text()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output()

    replicated = assert_replicas_equal_sources(lab, src, dst)
    assert len(replicated) >= 4
    assert [int(s.rsplit("-", 1)[1]) for s in replicated] == \
        list(range(1, len(replicated) + 1))  # every cycle reached the destination
    assert snapshot_checksums(lab.dst, f"{dst}@{replicated[-1]}") == tree_checksums(mnt)
    assert len({json.dumps(snapshot_checksums(lab.dst, f"{dst}@{s}"), sort_keys=True)
                for s in replicated}) >= 3

    out = daemon.output()
    assert out.count("starting full send") == 1 and "starting incremental" in out
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO service testrepl stopped by SIGTERM",
                     out, re.M)
    assert (daemon.log_dir / f"{SERVICE}.log").read_text() == out

    # status while it ran: every documented field, with live lag from ZFS
    assert running["state"] == "online" and running["pid"] == daemon.proc.pid
    assert running["reason"] is None and running["last_error"] is None
    assert running["last_success"] > 0 and running["next_run"] > 0
    assert running["interval"] == 2 and running["cycles_total"] >= 3
    assert running["sent_bytes_total"] > 0
    (fs,) = running["filesystems"]
    assert (fs["source"], fs["destination"], fs["cached"]) == (src, dst, False)
    assert fs["lag_seconds"] >= 0 and fs["newest_snapshot"].startswith(snapshot_prefix(lab))
    assert fs["pending"] in (0, 1)  # a cycle may be sending right now

    for text in (scraped, textfile):
        samples = metric_samples(text)
        assert samples[("zfsrepl_service_state",
                        (("service", SERVICE), ("state", "online")))] == 1
        assert samples[("zfsrepl_cycles_total", (("service", SERVICE),))] >= 1
        assert samples[("zfsrepl_sent_bytes_total", (("service", SERVICE),))] > 0
        assert ("zfsrepl_lag_seconds", (("destination", dst), ("filesystem", src),
                                        ("service", SERVICE))) in samples
        assert ("zfsrepl_last_success_timestamp_seconds", (("service", SERVICE),)) in samples
        assert ("zfsrepl_last_cycle_duration_seconds", (("service", SERVICE),)) in samples

    stopped = status_json(repl)
    assert stopped["state"] == "offline" and stopped["pid"] is None
    # every replicated snapshot was a recorded cycle (the one SIGTERM cut may be missing)
    assert stopped["cycles_total"] >= len(replicated) - 1 and stopped["last_success"] > 0
    after = metric_samples((repl.state_dir / "metrics" / f"{SERVICE}.prom").read_text())
    assert after[("zfsrepl_service_state", (("service", SERVICE), ("state", "offline")))] == 1


# ---------------------------------------------------------------------------- maintenance

# Holds one cycle after its snapshot (when the test asks) until the test says go.
POST_HOOK = """\
if [ -e {dir}/block ]; then
    rm -f {dir}/block
    touch {dir}/blocked
    n=0
    while [ ! -e {dir}/go ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done
fi
"""


def test_destination_down_maintenance_alarm_then_clear_catches_up(
        lab: Lab, area: Area, repl: ZfsreplCli, tmp_path: Path) -> None:
    src, dst, mnt = start_fs(lab, area)
    base = repl.base
    hook = put_script(lab, repl, "post.sh", POST_HOOK.format(dir=base))
    alarm_env = base / "alarm.env"
    on_alarm = put_script(lab, repl, "alarm.sh", f"env | grep ^ZFSREPL_ > {alarm_env}\n")
    repl.write_service(filesystems=[(src, dst)], interval=2, retries=2, retry_delay=1.0,
                       keep=10, post_snapshot=str(hook), on_alarm=str(on_alarm))

    daemon = Daemon(lab, repl, tmp_path / "run1.out")
    wait_for("the first cycle", lambda: own_snapshots(lab, lab.dst, dst))
    (base / "block").write_text("")
    wait_for("a cycle held after its snapshot", (base / "blocked").exists)
    held = own_snapshots(lab, lab.src, src)[-1]  # taken, not sent
    assert held not in own_snapshots(lab, lab.dst, dst)

    lab.dst.stop_sshd()
    try:
        write_tree(mnt, seed=2)  # changes while the destination is away
        (base / "go").write_text("")
        code = daemon.wait()
    finally:
        lab.dst.start_sshd()
    out = daemon.output()
    assert code == EXIT_MAINTENANCE, out
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING attempt 1 of 2 failed: ", out,
                     re.M), out
    alarm = re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ALARM could not replicate testrepl "
                      r"after 2 attempt\(s\): (.*)$", out, re.M)
    assert alarm, out
    reason = alarm.group(1)
    assert "now in maintenance" in out

    env = dict(line.split("=", 1) for line in alarm_env.read_text().splitlines() if "=" in line)
    assert env["ZFSREPL_SERVICE"] == SERVICE and env["ZFSREPL_STATE"] == "maintenance"
    assert env["ZFSREPL_REASON"] == reason
    assert env["ZFSREPL_DESTINATION"] == f"{lab.dst.user}@{lab.dst.address}"

    st = status_json(repl)
    assert st["state"] == "maintenance" and st["reason"] == reason
    assert st["exit_code"] == 2 and st["health"] == "critical"
    shown = repl.run("status", SERVICE, check=False)
    assert shown.returncode == 2  # what a monitoring check reads
    text = shown.stdout.decode()
    assert f"reason: {reason}" in text and "zfsrepl clear testrepl" in text

    # Started again before being cleared, it stays in maintenance.
    again = Daemon(lab, repl, tmp_path / "run2.out")
    assert again.wait() == EXIT_MAINTENANCE
    assert "is in maintenance since" in again.output()

    cleared = repl.run("clear", SERVICE).stdout.decode()
    assert "zfsrepl run testrepl" in cleared  # no service manager in the lab: start it by hand
    assert status_json(repl)["state"] == "offline"

    resumed = Daemon(lab, repl, tmp_path / "run3.out")
    try:
        def caught_up() -> bool:
            replicated = own_snapshots(lab, lab.dst, dst)
            return held in replicated and replicated[-1] != held

        wait_for("the held snapshot and a newer one on the destination", caught_up)
    finally:
        assert resumed.stop() == 0, resumed.output()
    replicated = assert_replicas_equal_sources(lab, src, dst)
    assert snapshot_checksums(lab.dst, f"{dst}@{replicated[-1]}") == tree_checksums(mnt)
    assert status_json(repl)["reason"] is None


# ---------------------------------------------------------------------------- signals


def source_pipeline(area: Area) -> list[str]:
    """Processes still sending from this test's filesystems (none after a clean stop)."""
    proc = subprocess.run(["pgrep", "-af", f"zfs send .*{area.src}/"], capture_output=True,
                          text=True)
    return [ln for ln in proc.stdout.splitlines() if "pgrep" not in ln]


def test_sigterm_cuts_a_large_transfer_and_the_next_runonce_completes(
        lab: Lab, area: Area, repl: ZfsreplCli, tmp_path: Path) -> None:
    src, dst, mnt = start_fs(lab, area)
    repl.write_service(filesystems=[(src, dst)], interval=60, retries=1, keep=10)
    repl.run("runonce", SERVICE)  # the full send, at full speed
    before = own_snapshots(lab, lab.dst, dst)

    random_file(mnt / "big.bin", 24)  # about 12 s through the throttle
    repl.write_service(filesystems=[(src, dst)], interval=60, retries=1, keep=10,
                       **THROTTLED)
    daemon = Daemon(lab, repl, tmp_path / "run.out")
    try:
        wait_for("the large incremental", lambda: "starting incremental" in daemon.output())
        time.sleep(1.0)  # well inside the stream
        assert "finished incremental" not in daemon.output(), "the stream was not throttled"
    finally:
        code = daemon.stop()
    out = daemon.output()
    assert code == 0, out
    assert "stopped by SIGTERM" in out and "ALARM" not in out
    assert source_pipeline(area) == []
    # The chain is as it was: the cut stream left nothing on the destination.
    assert own_snapshots(lab, lab.dst, dst) == before
    taken = own_snapshots(lab, lab.src, src)[-1]
    assert taken not in before

    repl.write_service(filesystems=[(src, dst)], interval=60, retries=1, keep=10)
    repl.run("runonce", SERVICE)
    replicated = assert_replicas_equal_sources(lab, src, dst)
    assert taken in replicated
    assert snapshot_checksums(lab.dst, f"{dst}@{replicated[-1]}") == tree_checksums(mnt)


# ---------------------------------------------------------------------------- locking


def test_runonce_while_run_is_in_a_cycle_waits_and_both_succeed(
        lab: Lab, area: Area, repl: ZfsreplCli, tmp_path: Path) -> None:
    src, dst, _ = start_fs(lab, area)
    base = repl.base
    # The daemon's first cycle is held after its snapshot (so inside the cycle, holding
    # the service's lock) until the test has seen runonce refuse and then wait.
    hook = put_script(lab, repl, "post.sh", POST_HOOK.format(dir=base))
    (base / "block").write_text("")
    repl.write_service(filesystems=[(src, dst)], interval=600, retries=1, keep=10,
                       post_snapshot=str(hook))
    daemon = Daemon(lab, repl, tmp_path / "run.out")
    log_dir = str(daemon.log_dir)
    waiter_out = tmp_path / "runonce.out"
    waiter = None
    try:
        wait_for("the daemon's cycle held after its snapshot", (base / "blocked").exists)
        refused = repl.run("runonce", "--no-wait", "--log-dir", log_dir, SERVICE, check=False)
        assert refused.returncode == 1
        assert (f"service testrepl is busy: process {daemon.proc.pid} (run) is replicating it"
                in refused.stderr.decode())
        with open(waiter_out, "wb") as sink:
            waiter = lab.src.popen(repl.argv("runonce", "--log-dir", log_dir, SERVICE),
                                   stdout=sink.fileno(), stderr=subprocess.STDOUT)
        wait_for("runonce to wait for the daemon's cycle",
                 lambda: "waiting: service testrepl is busy" in
                 waiter_out.read_text(errors="replace"))
        (base / "go").write_text("")
        assert waiter.wait(timeout=120) == 0, waiter_out.read_text(errors="replace")
    finally:
        (base / "go").write_text("")
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
            waiter.wait()
        code = daemon.stop()
    assert code == 0, daemon.output()
    assert f"waiting: service testrepl is busy: process {daemon.proc.pid} (run)" in \
        waiter_out.read_text(errors="replace")

    # One after the other: run's cycle ended before runonce took its snapshot.
    log = (daemon.log_dir / f"{SERVICE}.log").read_text()
    run_done = log.index("cycle of testrepl finished")
    runonce_snapshot = log.index(f"snapshot {src}@{snapshot_prefix(lab)}2 taken")
    assert run_done < runonce_snapshot
    replicated = assert_replicas_equal_sources(lab, src, dst)
    assert replicated == [f"{snapshot_prefix(lab)}1", f"{snapshot_prefix(lab)}2"]
    st = status_json(repl)
    assert st["cycles_total"] == 2 and st["cycle_failures_total"] == 0
