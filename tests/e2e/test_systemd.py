"""The Debian package under a real systemd: the OpenZFS VM boots Debian 12 with systemd
as PID 1, so `zfsrepl enable` meets the real thing there.

The package built by scripts/build-deb is installed with dpkg in the VM, which holds
both lab hosts: one installation serves the source (the unit, /usr/bin/zfsrepl) and
the destination (the agent, the forced command of the service's key, as setup writes
it). One service then goes through its life under systemd: enabled and active,
replicating (checked by content), maintenance (a failed unit whose status shows the
reason, the ALARM line in the journal at priority alert), cleared by root's `zfsrepl
clear`, restarted, started again the way a boot starts it, and disabled.

Waits are bounded and poll for states; none is a measure of time.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Iterator, cast

import pytest

from lab import (
    Area,
    Lab,
    own_snapshots,
    service_definition,
    snapshot_checksums,
    toml_dumps,
    tree_checksums,
    wait_for,
    write_tree,
)
from lab.openzfs import VmHost

pytestmark = pytest.mark.backends("openzfs")

NAME = "sysdtest"
UNIT = f"zfsrepl@{NAME}.service"
ZFSREPL = "/usr/bin/zfsrepl"  # the package's, not the lab's copy of the work tree
DEFINITION = f"/etc/zfsrepl/services/{NAME}.toml"
DROPIN_DIR = f"/etc/systemd/system/{UNIT}.d"
KEY = f"/home/src/.ssh/zfsrepl-{NAME}"
AGENT_LOG = f"/var/log/zfsrepl/agent.{NAME}.log"
MARKER = f"zfsrepl:{NAME}:test"
EXIT_MAINTENANCE = 96
# Every cycle the test waits for is the one a start of the service runs at once: the
# next by the interval never comes while the test runs, so no stop or restart cuts a
# cycle between its snapshot and the receive (the next cycle would then send -I).
INTERVAL = 3600
# Test-only: the lab's source host is the network namespace zr-src inside the VM (its
# own namespace routes the lab's addresses nowhere), so the unit joins it. On a real
# source host the unit runs in the host's namespace and needs no such drop-in.
NETNS_DROPIN = """\
# zfsrepl e2e test (tests/e2e/test_systemd.py): run the service on the lab's source
# host, the network namespace zr-src, which alone reaches the destination's sshd.
[Service]
NetworkNamespacePath=/run/netns/zr-src
"""


def vm(lab: Lab, script: str, *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """`script` as root in the VM's own namespace, where systemd and journald are."""
    return cast(VmHost, lab.src).vm(script, check=check)


def out(lab: Lab, script: str, *, check: bool = True) -> str:
    return vm(lab, script, check=check).stdout.decode("utf-8", "replace")


def is_active(lab: Lab) -> str:
    return out(lab, f"systemctl is-active {UNIT}", check=False).strip()


def unit_property(lab: Lab, name: str) -> str:
    return out(lab, f"systemctl show -p {name} --value {UNIT}").strip()


def wait_active(lab: Lab, state: str, timeout: float = 120.0) -> None:
    wait_for(f"{UNIT} {state}", lambda: is_active(lab) == state, timeout=timeout)


@pytest.fixture(scope="module")
def installed(lab: Lab, deb: Path) -> Iterator[None]:
    """The package installed in the VM for this module; purged afterwards."""
    assert "systemd" in out(lab, "readlink /proc/1/exe"), "PID 1 of the VM is not systemd"
    target = "/var/tmp/zfsrepl-systemd-test.deb"
    lab.src.root(["sh", "-c", f"cat > {target}"], input=deb.read_bytes())
    try:
        # dpkg -i fails on an unmet dependency: the image must already hold them all
        vm(lab, f"dpkg -i {target} && rm -f {target}")
        yield
    finally:
        vm(lab, f"rm -f {target}; dpkg --purge zfsrepl; systemctl daemon-reload", check=False)


@pytest.fixture
def service(lab: Lab, area: Area, installed: None) -> Iterator[tuple[str, str]]:
    """A definition in /etc/zfsrepl, a service key for the packaged agent, the test's
    drop-in; all of it, and what the service made, removed afterwards, pass or fail
    (before the area's datasets go)."""
    src, dst = f"{area.src}/data", f"{area.dst}/data"
    lab.src.zfs("create", src)
    agent = [ZFSREPL, "agent", "--service", NAME, "--source-user", lab.src.user,
             "--destination-user", lab.dst.user, "--destination-host", lab.dst.address,
             "--zfs-command", lab.zfs_command, "--log", AGENT_LOG, "--filesystem", dst]
    definition = service_definition(
        lab, [(src, dst)], name=NAME, interval=INTERVAL, retries=1, retry_delay=0.5, keep=50,
        source={"zfs_command": lab.zfs_command},
        destination={"zfs_command": lab.zfs_command, "identity": KEY})
    try:
        vm(lab, f"""set -e
rm -f {KEY} {KEY}.pub
runuser -u {lab.src.user} -- ssh-keygen -q -t ed25519 -N '' -C {MARKER} -f {KEY}
ak=~{lab.dst.user}/.ssh/authorized_keys
grep -v ' {MARKER}$' "$ak" > "$ak.new" || true
echo "restrict,command=\\"{shlex.join(agent)}\\" $(cut -d' ' -f1,2 {KEY}.pub) {MARKER}" >> "$ak.new"
chown {lab.dst.user} "$ak.new"; chmod 0600 "$ak.new"; mv "$ak.new" "$ak"
install -o {lab.dst.user} -m 0640 /dev/null {AGENT_LOG}
mkdir -p {DROPIN_DIR}
""")
        lab.src.root(["sh", "-c", f"cat > {DROPIN_DIR}/lab-netns.conf"],
                     input=NETNS_DROPIN.encode())
        lab.src.root(["sh", "-c", f"cat > {DEFINITION}"],
                     input=toml_dumps(definition).encode())
        vm(lab, "systemctl daemon-reload")
        yield src, dst
    finally:
        lab.dst.start_sshd()  # whatever the test left stopped
        vm(lab, f"""systemctl disable --now {UNIT}; systemctl reset-failed {UNIT}
rm -rf {DROPIN_DIR} {DEFINITION} /var/lib/zfsrepl/services/{NAME} \
    /var/lib/zfsrepl/metrics/{NAME}.prom /var/log/zfsrepl/{NAME}.log* {AGENT_LOG} {KEY} {KEY}.pub
rmdir --ignore-fail-on-non-empty /var/lib/zfsrepl/services /var/lib/zfsrepl/metrics
ak=~{lab.dst.user}/.ssh/authorized_keys
grep -v ' {MARKER}$' "$ak" > "$ak.new"; chown {lab.dst.user} "$ak.new"; chmod 0600 "$ak.new"
mv "$ak.new" "$ak"
systemctl daemon-reload""", check=False)


def new_replica(lab: Lab, dst: str, seen: list[str], what: str) -> str:
    """Wait for a snapshot of the service on the destination that is not in `seen`."""
    def arrived() -> str | None:
        snaps = own_snapshots(lab, lab.dst, dst)
        return snaps[-1] if snaps and snaps[-1] not in seen else None

    snap = wait_for(what, arrived)
    assert snap is not None
    return snap


def change(lab: Lab, src: str, seed: int) -> tuple[dict[str, str], list[str]]:
    """Change the source; what it holds now, and the snapshots it had before."""
    mnt = lab.src.mountpoint(src)
    write_tree(mnt, seed=seed)
    return tree_checksums(mnt), own_snapshots(lab, lab.src, src)


def replicated(lab: Lab, dst: str, changed: tuple[dict[str, str], list[str]],
               what: str) -> None:
    """A cycle after the change reaches the destination, holding the changed files."""
    expected, before = changed
    snap = new_replica(lab, dst, before, what)
    assert snapshot_checksums(lab.dst, f"{dst}@{snap}") == expected


def journal(lab: Lab) -> list[dict[str, str]]:
    text = out(lab, f"journalctl -u {UNIT} -o json --no-pager")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_packaged_service_under_systemd(lab: Lab, service: tuple[str, str]) -> None:
    src, dst = service

    # enable: the package's unit, run as the definition's user, active; its first
    # cycle sends the source through the packaged agent on the destination
    first = change(lab, src, seed=1)
    enabled = vm(lab, f"{ZFSREPL} enable {NAME}")
    assert f"enabled and started {UNIT}" in enabled.stdout.decode()
    assert unit_property(lab, "FragmentPath") in ("/lib/systemd/system/zfsrepl@.service",
                                                  "/usr/lib/systemd/system/zfsrepl@.service")
    assert unit_property(lab, "User") == lab.src.user
    wait_active(lab, "active")
    assert out(lab, f"systemctl is-enabled {UNIT}").strip() == "enabled"
    replicated(lab, dst, first, "the first cycle on the destination")
    assert f"agent[{NAME}]" in out(lab, f"cat {AGENT_LOG}")

    # a restart is a new process, and replication resumes: an incremental cycle
    second = change(lab, src, seed=2)
    pid = unit_property(lab, "MainPID")
    vm(lab, f"systemctl restart {UNIT}")
    wait_active(lab, "active")
    assert unit_property(lab, "MainPID") not in ("0", pid)
    replicated(lab, dst, second, "a cycle after the restart")

    # maintenance: the destination is away when the service starts; the retries run
    # out; the unit is failed and stays so (96 is not restarted), its status says why
    lab.dst.stop_sshd()
    try:
        vm(lab, f"systemctl restart {UNIT}")
        wait_active(lab, "failed")
    finally:
        lab.dst.start_sshd()
    assert unit_property(lab, "ExecMainStatus") == str(EXIT_MAINTENANCE)
    assert unit_property(lab, "Result") == "exit-code"
    assert unit_property(lab, "NRestarts") == "0"
    cached = json.loads(out(lab, f"{ZFSREPL} status --json --cached {NAME}", check=False))
    (st,) = cached["services"]
    reason = st["reason"]
    assert st["state"] == "maintenance" and reason

    # what an administrator sees first (exit 3: the unit is not active), with the last
    # lines of its journal, as they reach it
    def status_with_reason() -> str | None:
        text = out(lab, f"systemctl status --no-pager {UNIT}", check=False)
        return text if reason in text else None

    status = wait_for("the reason in systemctl status", status_with_reason)
    assert status is not None
    assert "Active: failed (Result: exit-code)" in status, status
    assert f"status={EXIT_MAINTENANCE}" in status, status

    # the journal: every line under the service's identifier with its own priority,
    # the ALARM line at alert (1), which `-p err` shows, without the INFO lines
    entries = wait_for("the ALARM line in the journal", lambda: [
        e for e in journal(lab) if str(e.get("MESSAGE", "")).startswith("ALARM ")])
    alarm = entries[-1]
    assert alarm["PRIORITY"] == "1" and alarm["SYSLOG_IDENTIFIER"] == f"zfsrepl-{NAME}"
    assert reason in alarm["MESSAGE"]
    own_lines = [e for e in journal(lab) if e.get("SYSLOG_IDENTIFIER") == f"zfsrepl-{NAME}"]
    priorities = {e["MESSAGE"].split(" ", 1)[0]: e["PRIORITY"] for e in own_lines}
    assert priorities["INFO"] == "6" and priorities["WARNING"] == "4", priorities
    errors = out(lab, f"journalctl -u {UNIT} -p err -o cat --no-pager")
    assert alarm["MESSAGE"] in errors and "\nINFO " not in f"\n{errors}"

    # clear, as root: the state (the service user's) is cleared, the unit started
    # again, and it sends what changed meanwhile
    third = change(lab, src, seed=3)
    cleared = vm(lab, f"{ZFSREPL} clear {NAME}", check=False)
    assert cleared.returncode == 0, cleared.stderr.decode()
    assert f"started {UNIT}" in cleared.stdout.decode()
    wait_active(lab, "active")
    replicated(lab, dst, third, "a cycle after clear")

    # as at boot: stopped, it comes back with multi-user.target, which wants it
    fourth = change(lab, src, seed=4)
    vm(lab, f"systemctl stop {UNIT}")
    assert is_active(lab) == "inactive"
    vm(lab, "systemctl start multi-user.target")
    wait_active(lab, "active")
    replicated(lab, dst, fourth, "a cycle after starting multi-user.target")

    # disable stops it, and it stays off
    disabled = vm(lab, f"{ZFSREPL} disable {NAME}")
    assert f"stopped and disabled {UNIT}" in disabled.stdout.decode()
    assert is_active(lab) == "inactive"
    assert out(lab, f"systemctl is-enabled {UNIT}", check=False).strip() == "disabled"
    assert unit_property(lab, "MainPID") == "0"
    assert out(lab, f"pgrep -u {lab.src.user} -f 'zfsrepl run {NAME}'", check=False) == ""


def test_remove_stops_the_services_and_purge_leaves_only_the_definitions(
        lab: Lab, service: tuple[str, str]) -> None:
    """Runs last in this module: it removes the package the module installed."""
    src, dst = service
    wants = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"
    first = change(lab, src, seed=5)
    vm(lab, f"{ZFSREPL} enable {NAME}")
    wait_active(lab, "active")
    replicated(lab, dst, first, "the first cycle before the package is removed")
    made = out(lab, f"ls -d /var/lib/zfsrepl/services/{NAME} /var/lib/zfsrepl/metrics "
                    f"{wants} {DROPIN_DIR}/zfsrepl-user.conf").split()
    assert len(made) == 4, made

    # remove: the running instance is stopped before its program goes; nothing of it
    # keeps running, and what the administrator made stays
    vm(lab, "dpkg -r zfsrepl")
    assert is_active(lab) in ("inactive", "unknown")
    assert out(lab, f"pgrep -u {lab.src.user} -f 'zfsrepl run {NAME}'", check=False) == ""
    assert out(lab, "test -e /usr/bin/zfsrepl && echo left", check=False) == ""
    assert out(lab, f"ls -d {DEFINITION} /var/lib/zfsrepl/services/{NAME}").split() \
        == [DEFINITION, f"/var/lib/zfsrepl/services/{NAME}"]

    # purge: what zfsrepl made at run time is gone; the definition stays
    vm(lab, "dpkg --purge zfsrepl")
    gone = f"/var/lib/zfsrepl /var/log/zfsrepl {wants} {DROPIN_DIR}/zfsrepl-user.conf"
    assert out(lab, f"for p in {gone}; do test -e $p -o -L $p && echo $p; done",
               check=False) == ""
    assert out(lab, f"test -s {DEFINITION} && echo kept").strip() == "kept"
    # the replica is untouched by all of it
    assert own_snapshots(lab, lab.dst, dst)
