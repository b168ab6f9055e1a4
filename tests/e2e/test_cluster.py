"""Clusters, in the lab: a logical destination host whose address moves to a node with
another host key, the maintenance that moves with the pool, the OCF resource agent
(ocf-tester against a real service) and start-all/stop-all.

zfs-fuse only: the tests start sshds in the destination's network namespace, read the
run lock of services and run the resource agent as root on this machine
("local-processes").

The move of the destination is played in its namespace: an sshd with one host key
serves the logical address, then it goes and one with another key takes its place,
as when the address moves to the other node of a cluster (the pool with it; here it
is the same pool). A real Pacemaker runs in test_cluster_pacemaker.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Area, Lab, ZfsreplCli, snapshot_checksums, tree_checksums, wait_for, write_tree

pytestmark = pytest.mark.backends("fuse")

SERVICE = "testrepl"
LOGICAL = "dst-logical"  # the destination's logical host name: in no DNS, only in the definition
EXIT_MAINTENANCE = 96
AGENT = Path(__file__).resolve().parents[2] / "packaging" / "ocf" / "service"
PORT = 2201  # the moving sshd's, on the destination's address


def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    return (proc.stdout + proc.stderr).decode(errors="replace")


def snapshots_named(lab: Lab, fs: str, host_name: str) -> list[tuple[str, str]]:
    """(name, guid) of the service's snapshots of `fs` on the destination, oldest first."""
    out = lab.dst.zfs("get", "-Hp", "-r", "-d", "1", "-o", "name,value", "guid", fs)
    prefix = f"zfsrepl-{lab.src.user}-{lab.dst.user}-{host_name}-"
    found = []
    for line in out.splitlines():
        name, _, guid = line.partition("\t")
        snap = name.partition("@")[2]
        if snap.startswith(prefix):
            found.append((snap, guid))
    return sorted(found, key=lambda s: int(s[0].rsplit("-", 1)[1]))


# ---------------------------------------------------------------------------- nodes


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout.split()
    found = []
    for child in map(int, out):
        found += [child, *_descendants(child)]
    return found


class Node:
    """An sshd in the destination's namespace on PORT with a host key of its own: one
    cluster node serving the logical address."""

    def __init__(self, lab: Lab, work: Path, name: str) -> None:
        self.key = work / f"{name}_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                        str(self.key)], check=True)
        # the lab's own sshd of the destination (tests/lab/fuse/setup.sh), on another port
        lab_config = lab.known_hosts.parent / str(lab.dst.netns) / "sshd_config"
        lines = []
        for line in lab_config.read_text().splitlines():
            if line.startswith("Port "):
                line = f"Port {PORT}"
            elif line.startswith("HostKey "):
                line = f"HostKey {self.key}"
            elif line.startswith("PidFile "):
                line = f"PidFile {work / (name + '.pid')}"
            lines.append(line)
        self.config = work / f"{name}_sshd_config"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = work / f"{name}_sshd.log"
        self.netns = str(lab.dst.netns)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def public_key(self) -> str:
        return " ".join(Path(f"{self.key}.pub").read_text().split()[:2])

    def start(self) -> None:
        self.log.write_text("")
        # -D: stays in the foreground, so its pid is the Popen's (nsenter execs it)
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "/usr/sbin/sshd", "-D", "-f",
             str(self.config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("the node's sshd to listen",
                 lambda: "Server listening" in self.log.read_text()
                 or self.proc is None or self.proc.poll() is not None, timeout=30)
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self) -> None:
        """The node goes away, with the sessions it served."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        children = _descendants(proc.pid)
        proc.terminate()
        proc.wait(timeout=30)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture
def nodes(lab: Lab, tmp_path: Path) -> Iterator[list[Node]]:
    work = tmp_path / "nodes"
    work.mkdir()
    made = [Node(lab, work, name) for name in ("node1", "node2", "stranger")]
    try:
        yield made
    finally:
        for node in made:
            node.stop()


def test_the_destination_moves_to_a_node_with_another_host_key(
        lab: Lab, area: Area, repl: ZfsreplCli, nodes: list[Node]) -> None:
    node1, node2, stranger = nodes
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    lab.src.zfs("create", src)
    mnt = lab.src.mountpoint(src)
    write_tree(mnt, seed=1)
    # Both nodes' keys under the logical name, as setup's documentation says to list them.
    known_hosts = repl.base / "known_hosts"
    repl.put(known_hosts, "".join(f"{LOGICAL} {n.public_key}\n" for n in (node1, node2)).encode())
    repl.write_service(filesystems=[(src, dst)], retries=1, keep=5, destination={
        "host": LOGICAL, "address": lab.dst.address, "port": PORT,
        "ssh_options": [f"UserKnownHostsFile={known_hosts}"]})

    node1.start()
    out = text(repl.run("runonce", SERVICE))
    assert "starting full send" in out, out
    first = snapshots_named(lab, dst, LOGICAL)
    assert len(first) == 1  # named after the logical host, not the address

    # The logical address moves to node2: another host key, the same known name.
    node1.stop()
    node2.start()
    write_tree(mnt, seed=2)
    out = text(repl.run("runonce", SERVICE))
    assert "starting incremental" in out and "full send" not in out, out
    after = snapshots_named(lab, dst, LOGICAL)
    assert after[0] == first[0]  # the replica was not sent again: same snapshot, same GUID
    assert len(after) == 2
    assert snapshot_checksums(lab.dst, f"{dst}@{after[-1][0]}") == tree_checksums(mnt)

    # A node whose key is not listed for the logical name is refused, by name.
    node2.stop()
    stranger.start()
    refused = repl.run("runonce", SERVICE, check=False)
    out = text(refused)
    assert refused.returncode == 1, out
    assert f"cannot connect to {lab.dst.user}@{LOGICAL}" in out, out
    assert "host key verification failed for dst-logical: its host key is not the one " \
        "known_hosts lists for it" in out, out
    assert "Traceback" not in out
    assert snapshots_named(lab, dst, LOGICAL) == after  # nothing received from it


# ---------------------------------------------------------------------------- state that moves


def zfs_value(lab: Lab, fs: str, prop: str) -> str:
    return lab.src.zfs("get", "-H", "-o", "value", prop, fs).strip()


def test_maintenance_moves_with_the_pool(lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    lab.src.zfs("create", src)
    # Nothing listens on port 9 of the destination: the one attempt fails at once.
    repl.write_service(filesystems=[(src, dst)], retries=1, retry_delay=0.0,
                       destination={"port": 9})
    run = repl.run("run", SERVICE, check=False)
    assert run.returncode == EXIT_MAINTENANCE, text(run)
    prop = f"zfsrepl:maintenance:{SERVICE}"
    recorded = zfs_value(lab, src, prop)
    since, _, reason = recorded.partition(" ")
    assert since.isdigit() and "Connection refused" in reason, recorded

    # The node that takes the pool over has no state folder of this service.
    lab.src.run(["rm", "-rf", str(repl.state_dir / "services" / SERVICE)])
    shown = repl.run("status", SERVICE, check=False)
    assert shown.returncode == 2, text(shown)  # maintenance: critical, as monitoring reads it
    status = shown.stdout.decode()
    assert f"{SERVICE}: maintenance since" in status, status
    assert f"reason: {reason}" in status, status
    assert repl.run("state", SERVICE).stdout.decode() == f"maintenance {reason}\n"
    again = repl.run("run", SERVICE, check=False)
    assert again.returncode == EXIT_MAINTENANCE and "is in maintenance since" in text(again)

    cleared = text(repl.run("clear", SERVICE))
    assert f"maintenance of {SERVICE} cleared (it was: {reason})" in cleared, cleared
    assert zfs_value(lab, src, prop) == "-"
    assert repl.run("state", SERVICE).stdout.decode() == "offline\n"
    after = repl.run("status", SERVICE, check=False).stdout.decode()
    assert "maintenance" not in after.splitlines()[0], after


# ---------------------------------------------------------------------------- the resource agent


class Resource:
    """ocf:zfsrepl:service for this test's service, run as root like Pacemaker does; zfsrepl
    itself runs as the source user on the source host (the lab's on-src)."""

    def __init__(self, lab: Lab, repl: ZfsreplCli, tmp_path: Path) -> None:
        self.params = {"service": SERVICE, "config_dir": str(repl.config_dir),
                       "state_dir": str(repl.state_dir), "log_dir": str(repl.base / "log"),
                       "zfsrepl": f"{lab.bin_dir}/on-src zfsrepl"}
        self.rsctmp = tmp_path / "rsctmp"
        self.rsctmp.mkdir()
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "HA_RSCTMP": str(self.rsctmp), "OCF_ROOT": "/usr/lib/ocf",
                    "OCF_RESOURCE_INSTANCE": f"zfsrepl-{SERVICE}",
                    "OCF_RESKEY_CRM_meta_timeout": "60000",
                    "OCF_RESKEY_CRM_meta_interval": "10000",
                    **{f"OCF_RESKEY_{k}": v for k, v in self.params.items()}}

    def __call__(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(AGENT), action], env=self.env, capture_output=True,
                              text=True, timeout=120, check=False)


def test_ocf_tester_passes_on_a_real_service_and_maintenance_fails_it_with_its_reason(
        lab: Lab, area: Area, repl: ZfsreplCli, tmp_path: Path) -> None:
    tester = shutil.which("ocf-tester")
    if tester is None:
        pytest.skip("ocf-tester is missing: apt-get install resource-agents")
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    lab.src.zfs("create", src)
    write_tree(lab.src.mountpoint(src), seed=4)
    repl.write_service(filesystems=[(src, dst)], retries=1, interval=3600)
    resource = Resource(lab, repl, tmp_path)
    try:
        argv = [tester, "-n", f"zfsrepl-{SERVICE}"]
        for key, value in resource.params.items():
            argv += ["-o", f"{key}={value}"]
        tested = subprocess.run([*argv, str(AGENT)], env=resource.env, capture_output=True,
                                text=True, timeout=600, check=False)
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert "passed all tests" in tested.stdout
        # It started the real service: the first cycle replicated.
        assert resource("start").returncode == 0
        wait_for("the first cycle on the destination",
                 lambda: snapshots_named(lab, dst, lab.dst.address))
        assert resource("stop").returncode == 0
        assert resource("monitor").returncode == 7

        # In maintenance (the destination refuses): a failure, with the reason.
        repl.write_service(filesystems=[(src, dst)], retries=1, retry_delay=0.0,
                           interval=3600, destination={"port": 9})
        assert resource("start").returncode in (0, 1)  # it may be in maintenance already
        wait_for("maintenance", lambda: resource("monitor").returncode == 1)
        failed = resource("monitor")
        assert "ocf-exit-reason:in maintenance: " in failed.stderr, failed.stderr
        assert "Connection refused" in failed.stderr, failed.stderr
        start = resource("start")
        assert start.returncode == 1 and "Connection refused" in start.stderr
        assert resource("stop").returncode == 0
    finally:
        resource("stop")


def test_start_all_and_stop_all_for_one_logical_host(lab: Lab, area: Area,
                                                     repl: ZfsreplCli) -> None:
    src = f"{area.src}/fs"
    lab.src.zfs("create", src)
    repl.write_service(filesystems=[(src, f"{area.dst}/fs")], interval=3600)
    repl.write_service(name="other", filesystems=[(src, f"{area.dst}/other")],
                       source={"host": "another-logical-host"}, interval=3600)
    try:
        started = text(repl.run("start-all", "--host", lab.src.address))
        assert f"{SERVICE}: started (process" in started and "other" not in started, started
        state = repl.run("state", SERVICE).stdout.decode()
        assert state.startswith("online "), state
        assert repl.run("state", "other").stdout.decode() == "offline\n"
        stopped = text(repl.run("stop-all", "--host", lab.src.address))
        assert f"{SERVICE}: stopped (process {state.split()[1]})" in stopped, stopped
        assert repl.run("state", SERVICE).stdout.decode() == "offline\n"
    finally:
        repl.run("stop-all", check=False)
