"""A real Pacemaker and Corosync managing a resource group in the lab: a pool
(ocf:heartbeat:ZFS), a floating address (ocf:heartbeat:IPaddr2) and a zfsrepl service
(ocf:zfsrepl:service), on a one-node cluster whose node is the lab's source host.

It covers start, replication, a killed service recovered by the cluster, a service in
maintenance shown as a failed resource with its reason, the group stopped (the pool
exported) and started again (imported) with replication going on incrementally, and
the maintenance found after that by a node without the service's state folder.

What it cannot cover: a second node. The lab's hosts share one zfs-fuse daemon and
one mount table, so a pool cannot be imported "on another node"; `pcs resource move`
and fencing need one. A group stop and start stands in for the move: the pool is
exported and imported again, the address removed and added again.

zfs-fuse only ("local-processes": the cluster runs on this machine, in the source
host's network namespace). Needs the Debian packages pacemaker, corosync,
pacemaker-cli-utils and resource-agents; skipped without them, or when a Pacemaker
or Corosync already runs on this machine or has a configuration here. Every process
it starts is ended by PID at the end, and the files the cluster wrote are removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Area, Lab, ZfsreplCli, toml_dumps, wait_for, write_tree

pytestmark = pytest.mark.backends("fuse")

SERVICE = "testrepl"
POOL = "zr_pcmk"
FLOATING = "198.51.100.21"  # the group's address, added and removed by IPaddr2
AGENT = Path(__file__).resolve().parents[2] / "packaging" / "ocf" / "service"
AGENT_DIR = Path("/usr/lib/ocf/resource.d/zfsrepl")
STATE_DIRS = (Path("/var/lib/pacemaker/cib"), Path("/var/lib/pacemaker/pengine"),
              Path("/var/lib/corosync"))
RUN_DIRS = (Path("/run/crm"), Path("/run/resource-agents"))
CLUSTER_BINARIES = ("/usr/sbin/corosync", "/usr/sbin/pacemakerd")
PACEMAKER_DAEMONS = "/usr/lib/pacemaker/"
TIMEOUT = 240.0  # a bound against hanging on a loaded machine, not a timing check

COROSYNC_CONF = """\
totem {{
    version: 2
    cluster_name: zfsrepl-lab
    crypto_cipher: none
    crypto_hash: none
}}
logging {{
    to_stderr: no
    to_syslog: no
    to_logfile: yes
    logfile: {log}
}}
quorum {{
    provider: corosync_votequorum
}}
nodelist {{
    node {{
        name: node1
        nodeid: 1
        ring0_addr: 127.0.0.1
    }}
}}
"""


def cluster_pids(netns_inode: int | None = None) -> list[int]:
    """Corosync and Pacemaker processes (in the namespace with that inode, if given)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
            inode = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        ours = netns_inode is None or inode == netns_inode
        if ours and (exe in CLUSTER_BINARIES or exe.startswith(PACEMAKER_DAEMONS)):
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Cluster:
    """Corosync and Pacemaker in the source host's network namespace."""

    def __init__(self, lab: Lab, work: Path) -> None:
        self.netns = f"/run/netns/{lab.src.netns}"
        self.inode = os.stat(self.netns).st_ino
        self.work = work
        self.children: list[subprocess.Popen[bytes]] = []

    def command(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.netns}", *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.command(*argv), capture_output=True, text=True,
                              timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {proc.stdout}{proc.stderr}")
        return proc

    def start(self) -> None:
        conf = self.work / "corosync.conf"
        conf.write_text(COROSYNC_CONF.format(log=self.work / "corosync.log"))
        env = {**os.environ, "PCMK_logfile": str(self.work / "pacemaker.log")}
        for argv in (["corosync", "-f", "-c", str(conf)], ["pacemakerd"]):
            proc = subprocess.Popen(self.command(*argv), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
            self.children.append(proc)
            if argv[0] == "corosync":
                wait_for("corosync to be quorate", lambda: "Quorate: " in self.run(
                    "corosync-quorumtool", "-s", check=False).stdout, timeout=TIMEOUT)
        wait_for("a designated controller",
                 lambda: self.status().find("summary/current_dc[@present='true']")
                 is not None, timeout=TIMEOUT)
        self.run("crm_attribute", "--type", "crm_config", "--name", "stonith-enabled",
                 "--update", "false")

    def status(self) -> ET.Element:
        out = self.run("crm_mon", "-1", "--output-as=xml", check=False).stdout
        try:
            return ET.fromstring(out)
        except ET.ParseError:
            return ET.Element("none")

    def role(self, resource: str) -> str | None:
        found = self.status().find(f".//resource[@id='{resource}']")
        if found is None or found.get("active") != "true" or found.get("failed") == "true":
            return None
        return found.get("role")

    def failures(self, resource: str) -> list[dict[str, str]]:
        return [dict(f.attrib) for f in self.status().iter("failure")
                if f.get("op_key", "").startswith(f"{resource}_")]

    def stop(self) -> None:
        """End every process the cluster runs, by PID: Pacemaker first (it stops its own
        daemons), then Corosync; SIGKILL for what did not go within a minute."""
        for binary, group in (("/usr/sbin/pacemakerd", ("pacemakerd", PACEMAKER_DAEMONS)),
                              ("/usr/sbin/corosync", ("/usr/sbin/corosync",))):
            for pid in cluster_pids(self.inode):
                if _exe(pid) == binary:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                    alive(p) and any(g in _exe(p) for g in group)
                    for p in cluster_pids(self.inode)):
                time.sleep(0.2)
        for pid in cluster_pids(self.inode):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def resources_xml(pool_dir: Path, config_dir: Path, repl: ZfsreplCli, lab: Lab,
                  veth: str) -> str:
    def params(rid: str, values: dict[str, str]) -> str:
        pairs = "".join(f'<nvpair id="{rid}-{k}" name="{k}" value="{v}"/>'
                        for k, v in values.items())
        return f'<instance_attributes id="{rid}-ia">{pairs}</instance_attributes>'

    def op(rid: str, interval: str) -> str:
        return (f'<operations><op id="{rid}-mon" name="monitor" interval="{interval}" '
                'timeout="30s"/></operations>')

    return (
        '<group id="repl-src">'
        '<primitive id="repl-pool" class="ocf" provider="heartbeat" type="ZFS">'
        + params("repl-pool", {"pool": POOL, "importargs": f"-d {pool_dir}"})
        + op("repl-pool", "10s") + "</primitive>"
        '<primitive id="repl-ip" class="ocf" provider="heartbeat" type="IPaddr2">'
        + params("repl-ip", {"ip": FLOATING, "cidr_netmask": "24", "nic": veth})
        + op("repl-ip", "10s") + "</primitive>"
        '<primitive id="repl-svc" class="ocf" provider="zfsrepl" type="service">'
        + params("repl-svc", {"service": SERVICE, "user": lab.src.user,
                              "config_dir": str(config_dir), "state_dir": str(repl.state_dir),
                              "log_dir": str(repl.base / "log"),
                              "zfsrepl": str(lab.bin_dir / "zfsrepl")})
        + op("repl-svc", "3s") + "</primitive></group>")


def dst_snapshots(lab: Lab, fs: str) -> list[tuple[str, str]]:
    """(name, guid) of the destination's snapshots of `fs`, oldest first."""
    proc = lab.dst.root(["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,value", "guid",
                         fs], check=False)
    rows = [ln.split("\t") for ln in proc.stdout.decode().splitlines() if "@" in ln]
    return sorted(((n.split("@")[1], g) for n, g in rows),
                  key=lambda s: int(s[0].rsplit("-", 1)[1]))


@pytest.fixture
def machine(lab: Lab, tmp_path: Path) -> Iterator[Path]:
    """The cluster's files on this machine: checked free before, cleaned after."""
    for tool in ("corosync", "pacemakerd", "crm_mon", "cibadmin", "crm_resource"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing: apt-get install pacemaker corosync "
                        "pacemaker-cli-utils resource-agents")
    if not Path("/usr/lib/ocf/resource.d/heartbeat/ZFS").exists():
        pytest.skip("ocf:heartbeat:ZFS is missing: apt-get install resource-agents")
    if cluster_pids():
        pytest.skip("a Corosync or Pacemaker already runs on this machine")
    if any(Path("/var/lib/pacemaker/cib").iterdir()):
        pytest.skip("this machine has a Pacemaker configuration (/var/lib/pacemaker/cib)")
    if (AGENT_DIR / "service").exists() and not (AGENT_DIR / "service").is_symlink():
        pytest.skip(f"{AGENT_DIR}/service is installed here (a package): not replacing it")
    before = {d: set(d.iterdir()) if d.is_dir() else set() for d in STATE_DIRS}
    run_dirs = [d for d in RUN_DIRS if not d.exists()]
    agent_dir_made = not AGENT_DIR.exists()
    AGENT_DIR.mkdir(parents=True, exist_ok=True)
    link = AGENT_DIR / "service"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(AGENT)
    work = tmp_path / "cluster"
    work.mkdir()
    try:
        yield work
    finally:
        link.unlink()
        if agent_dir_made:
            AGENT_DIR.rmdir()
        for d, old in before.items():
            for path in set(d.iterdir()) - old if d.is_dir() else ():
                path.unlink()
        for d in run_dirs:
            if d.exists():
                shutil.rmtree(d)


@pytest.fixture
def pool(lab: Lab) -> Iterator[tuple[str, Path]]:
    """A pool of this test's own, exported, for the cluster to import; destroyed after."""
    lab_dir = lab.known_hosts.parent.parent
    img_dir = lab_dir / "img" / POOL
    mnt = lab_dir / "mnt" / POOL
    if lab.src.root(["zpool", "list", POOL], check=False).returncode == 0:
        # what an earlier run of this test left (killed before its end)
        status = lab.src.root(["zpool", "status", POOL]).stdout.decode()
        assert str(img_dir) in status, f"a pool {POOL} not made by this test exists"
        lab.src.root(["zpool", "destroy", "-f", POOL])
    shutil.rmtree(img_dir, ignore_errors=True)
    img_dir.mkdir(parents=True)
    (img_dir / "disk").write_bytes(b"")
    os.truncate(img_dir / "disk", 256 << 20)
    lab.src.root(["zpool", "create", "-o", "cachefile=none", "-m", str(mnt), POOL,
                  str(img_dir / "disk")])
    try:
        yield POOL, img_dir
    finally:
        destroy_pool(lab, img_dir)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def destroy_pool(lab: Lab, img_dir: Path) -> None:
    """Import the pool if the cluster exported it, destroy it (riding out "busy"), and
    only then remove its disk: never the disk of a pool still imported."""
    why = ""
    deadline = time.monotonic() + 60
    while True:
        if lab.src.root(["zpool", "list", POOL], check=False).returncode != 0:
            lab.src.root(["zpool", "import", "-d", str(img_dir), "-o", "cachefile=none",
                          POOL], check=False)
            if lab.src.root(["zpool", "list", POOL], check=False).returncode != 0:
                break  # neither imported nor importable: nothing left of it in ZFS
        destroyed = lab.src.root(["zpool", "destroy", "-f", POOL], check=False)
        if destroyed.returncode == 0:
            break
        why = (destroyed.stderr + destroyed.stdout).decode(errors="replace").strip()
        if time.monotonic() > deadline:
            raise AssertionError(f"cannot destroy the pool {POOL}: {why}")
        time.sleep(0.5)
    shutil.rmtree(img_dir, ignore_errors=True)


def test_pacemaker_runs_pool_address_and_service(
        lab: Lab, area: Area, repl: ZfsreplCli, machine: Path,
        pool: tuple[str, Path]) -> None:
    name, img_dir = pool
    src, dst = f"{name}/fs", f"{area.dst}/fs"
    # The definitions live on the pool that moves: every node that imports it has them.
    lab.src.zfs("create", src)
    lab.src.zfs("create", f"{name}/zfsrepl")
    config_dir = lab.src.mountpoint(f"{name}/zfsrepl")
    (config_dir / "services").mkdir()
    destination: dict[str, Any] = {"host": lab.dst.address, "user": lab.dst.user,
                                   "zfs_command": lab.zfs_command}
    definition = {
        "name": SERVICE, "interval": 5, "retries": 1, "retry_delay": 0.0, "keep": 500,
        "pre_snapshot": "none", "post_snapshot": "none",
        "source": {"host": "repl-src", "user": lab.src.user, "zfs_command": lab.zfs_command},
        "destination": destination,
        "filesystem": [{"source": src, "destination": dst}],
    }
    service_file = config_dir / "services" / f"{SERVICE}.toml"
    service_file.write_text(toml_dumps(definition))
    write_tree(lab.src.mountpoint(src), seed=1)
    lab.src.root(["zpool", "export", name])
    veth = lab.src.root(["sh", "-c", "ip -o -4 addr show | awk '/198.51.100/ {print $2}'"]
                        ).stdout.decode().split()[0]

    cluster = Cluster(lab, machine)
    log_dir = repl.base / "log"
    log_file = log_dir / f"{SERVICE}.log"

    def zfsrepl(*args: str) -> str:
        """zfsrepl as the source user, with the definitions on the pool."""
        return lab.src.run(["zfsrepl", "--config-dir", str(config_dir), "--state-dir",
                            str(repl.state_dir), "--log-dir", str(log_dir), *args]
                           ).stdout.decode()

    try:
        cluster.start()
        cluster.run("cibadmin", "--create", "-o", "resources", "--xml-text",
                    resources_xml(img_dir, config_dir, repl, lab, veth))

        # Started in order: the pool imported, the address up, the service replicating.
        wait_for("the group started", lambda: cluster.role("repl-svc") == "Started",
                 timeout=TIMEOUT)
        assert cluster.role("repl-pool") == "Started"
        assert FLOATING in lab.src.root(["ip", "-o", "addr"]).stdout.decode()
        wait_for("the first replica", lambda: dst_snapshots(lab, dst), timeout=TIMEOUT)
        first = dst_snapshots(lab, dst)[0]

        # Failure and recovery: the service killed, the cluster starts it again.
        pid = int(zfsrepl("state", SERVICE).split()[1])
        os.kill(pid, signal.SIGKILL)
        wait_for("a failed monitor recorded",
                 lambda: cluster.failures("repl-svc"), timeout=TIMEOUT)

        def running_again() -> bool:
            words = zfsrepl("state", SERVICE).split()
            return words[:1] == ["online"] and words[1] != str(pid)

        wait_for("the service started again", running_again, timeout=TIMEOUT)
        cluster.run("crm_resource", "--cleanup", "--resource", "repl-svc")

        # The pool goes away and comes back (what a move to another node does to it):
        # replication goes on incrementally.
        cluster.run("crm_resource", "--resource", "repl-src", "--meta", "--set-parameter",
                    "target-role", "--parameter-value", "Stopped")
        wait_for("the group stopped", lambda: cluster.role("repl-pool") is None
                 and lab.src.root(["zpool", "list", name], check=False).returncode != 0,
                 timeout=TIMEOUT)
        assert FLOATING not in lab.src.root(["ip", "-o", "addr"]).stdout.decode()
        cluster.run("crm_resource", "--resource", "repl-src", "--meta", "--set-parameter",
                    "target-role", "--parameter-value", "Started")
        wait_for("the group started again", lambda: cluster.role("repl-svc") == "Started",
                 timeout=TIMEOUT)
        seen = len(dst_snapshots(lab, dst))
        wait_for("a replica after the move", lambda: len(dst_snapshots(lab, dst)) > seen,
                 timeout=TIMEOUT)
        assert dst_snapshots(lab, dst)[0] == first  # the chain was kept: same GUID
        text = log_file.read_text()
        assert text.count("starting full send") == 1, text
        assert "starting incremental" in text.rsplit("running as process", 1)[1], text

        # Maintenance: a failed resource, with the reason.
        destination["port"] = 9  # nothing listens there
        service_file.write_text(toml_dumps(definition))
        zfsrepl("stop-all")  # the cluster starts it again, with the new definition

        def failed_with_reason() -> str | None:
            for failure in cluster.failures("repl-svc"):
                if "in maintenance:" in failure.get("exitreason", ""):
                    return failure["exitreason"]
            return None

        reason = wait_for("the maintenance as a failed resource", failed_with_reason,
                          timeout=TIMEOUT)
        assert reason is not None and "Connection refused" in reason, reason
        assert cluster.role("repl-svc") is None

        # A node that takes the pool over has no state folder of the service: the
        # maintenance is found in ZFS all the same.
        cluster.run("crm_resource", "--resource", "repl-src", "--meta", "--set-parameter",
                    "target-role", "--parameter-value", "Stopped")
        wait_for("the group stopped", lambda: lab.src.root(
            ["zpool", "list", name], check=False).returncode != 0, timeout=TIMEOUT)
        lab.src.run(["rm", "-rf", str(repl.state_dir / "services" / SERVICE)])
        cluster.run("crm_resource", "--cleanup", "--resource", "repl-svc")
        cluster.run("crm_resource", "--resource", "repl-src", "--meta", "--set-parameter",
                    "target-role", "--parameter-value", "Started")
        wait_for("the pool imported again", lambda: cluster.role("repl-ip") == "Started",
                 timeout=TIMEOUT)
        reason = wait_for("the moved maintenance as a failed start", failed_with_reason,
                          timeout=TIMEOUT)
        assert reason is not None and "Connection refused" in reason, reason

        # Fixed and cleared: the cluster runs it again, and it catches up.
        del destination["port"]
        service_file.write_text(toml_dumps(definition))
        zfsrepl("clear", SERVICE)
        seen = len(dst_snapshots(lab, dst))
        cluster.run("crm_resource", "--cleanup", "--resource", "repl-svc")
        wait_for("the service running again", lambda: cluster.role("repl-svc") == "Started",
                 timeout=TIMEOUT)
        wait_for("replication going on", lambda: len(dst_snapshots(lab, dst)) > seen,
                 timeout=TIMEOUT)
        assert dst_snapshots(lab, dst)[0] == first
    finally:
        with contextlib.suppress(AssertionError, subprocess.SubprocessError):
            cluster.run("crm_resource", "--resource", "repl-src", "--meta",
                        "--set-parameter", "target-role", "--parameter-value", "Stopped",
                        check=False)
            wait_for("the group stopped", lambda: not any(
                cluster.role(r) for r in ("repl-svc", "repl-ip", "repl-pool")), timeout=120)
        cluster.stop()
        with contextlib.suppress(AssertionError, subprocess.SubprocessError):
            zfsrepl("stop-all")  # should anything be left of the service
        lab.src.root(["ip", "addr", "del", f"{FLOATING}/24", "dev", veth], check=False)
        assert not cluster_pids(cluster.inode)
