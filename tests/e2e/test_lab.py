"""The lab itself: separate hosts, ssh between them, the helpers tests rely on.

Nothing here runs zfsrepl, so these tests say whether a failure elsewhere is the
lab's or the tool's.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab import (
    CHECK_CLONE_PREFIX,
    DELEGATED_PERMISSIONS,
    Area,
    Lab,
    LabHost,
    ZfsreplCli,
    claim_area,
    exists,
    retry_busy,
    service_definition,
    snapshot_checksums,
    toml_dumps,
    tree_checksums,
    write_tree,
)

pytestmark = pytest.mark.backends("fuse", "openzfs")

ROOT = Path(__file__).resolve().parents[2]


def ssh(
    client: LabHost, server: LabHost, *command: str, user: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """``ssh USER@SERVER COMMAND`` run by ``client``'s user on the client host."""
    target = f"{user or server.user}@{server.address}"
    opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
    return client.run(["ssh", *opts, target, *command], check=check)


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode().strip()


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- hosts and ssh ---------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["src->dst", "dst->src"])
@pytest.mark.parametrize("as_user", ["src", "dst"])
def test_each_user_can_ssh_to_each_host_and_run_zfs(lab: Lab, direction: str, as_user: str) -> None:
    client, server = (lab.src, lab.dst) if direction == "src->dst" else (lab.dst, lab.src)
    listing = ssh(client, server, "zfs", "list", "-H", "-o", "name", server.pool, user=as_user)
    assert out(listing) == server.pool
    assert out(ssh(client, server, "id", "-un", user=as_user)) == as_user


def test_hosts_are_separate_network_namespaces(lab: Lab) -> None:
    netns = {out(h.run(["readlink", "/proc/self/ns/net"])) for h in lab.hosts}
    assert len(netns) == 2
    if "local-processes" in lab.features:
        assert os.readlink("/proc/self/ns/net") not in netns
    for host, other in ((lab.src, lab.dst), (lab.dst, lab.src)):
        addresses = out(host.run(["ip", "-4", "-o", "addr", "show"]))
        assert host.address in addresses
        assert other.address not in addresses


def test_lab_addresses_are_unreachable_from_the_host_namespace(lab: Lab) -> None:
    # checked without sending a packet first: the guard route answers locally
    route = subprocess.run(["ip", "route", "get", lab.dst.address], capture_output=True, text=True)
    assert route.returncode != 0, route.stdout
    with pytest.raises(OSError):
        socket.create_connection((lab.dst.address, 22), timeout=2).close()


def test_user_environment(lab: Lab) -> None:
    for host in lab.hosts:
        script = 'id -un; echo "$HOME"; command -v zfs; command -v zfsrepl'
        user, home, zfs, zfsrepl = out(host.run(["sh", "-c", script])).splitlines()
        assert user == host.user
        assert home == f"/home/{host.user}"
        assert zfsrepl == str(lab.bin_dir / "zfsrepl")
        if "sudo" in lab.features:  # zfs-fuse: a wrapper that uses the sudo rule
            assert zfs == str(lab.bin_dir / "zfs")
        else:  # OpenZFS: zfs itself, with `zfs allow` rights (Debian links /bin/zfs)
            assert out(host.run(["readlink", "-f", zfs])) == "/usr/sbin/zfs"
        assert out(host.root(["id", "-u"])) == "0"


def test_users_reach_zfs_only_through_the_sudo_rule(lab: Lab) -> None:
    if "sudo" not in lab.features:
        pytest.skip("this lab gives zfs rights by delegation")
    assert out(lab.src.run(["zfs", "list", "-H", "-o", "name", lab.src.pool])) == lab.src.pool
    assert lab.src.run(["/usr/sbin/zfs", "list"], check=False).returncode != 0
    assert lab.src.run(["sudo", "-n", "/usr/bin/id"], check=False).returncode != 0


def test_users_have_exactly_the_delegated_rights(lab: Lab) -> None:
    if "zfs-allow" not in lab.features:
        pytest.skip("this lab gives zfs rights by a sudo rule")
    wanted = sorted(set().union(*DELEGATED_PERMISSIONS.values()))
    for host in lab.hosts:
        allowed = host.zfs("allow", host.pool)
        for user in ("src", "dst"):
            line = next(x for x in allowed.splitlines() if x.strip().startswith(f"user {user} "))
            assert sorted(line.split()[2].split(",")) == wanted, allowed
        # zfs itself, no sudo; and nothing beyond the grant (compression is not in it)
        assert out(host.run(["zfs", "list", "-H", "-o", "name", host.pool])) == host.pool
        assert host.run(["sudo", "-n", "/usr/bin/id"], check=False).returncode != 0
        denied = host.run(["zfs", "set", "compression=off", host.pool], check=False)
        assert denied.returncode != 0 and b"permission denied" in denied.stderr


def test_sync_code_gives_the_users_the_work_tree_package(lab: Lab) -> None:
    lab.sync_code()
    package = ROOT / "src" / "zfsrepl"
    copy = lab.bin_dir.parent / "py" / "zfsrepl"
    # sha256 of every .py below the package, read on the host (the copy may be in a VM)
    listing = (
        "import hashlib, pathlib, sys; r = pathlib.Path(sys.argv[1]); "
        "[print(p.relative_to(r), hashlib.sha256(p.read_bytes()).hexdigest()) "
        "for p in sorted(r.rglob('*.py'))]"
    )
    there = out(lab.src.run(["/usr/bin/python3", "-c", listing, str(copy)])).splitlines()
    here = [
        f"{p.relative_to(package)} {hashlib.sha256(p.read_bytes()).hexdigest()}"
        for p in sorted(package.rglob("*.py"))
    ]
    assert there == here
    locate = "import importlib.util as u; print(u.find_spec('zfsrepl').origin)"
    env = {"PYTHONPATH": str(copy.parent)}
    origin = out(lab.src.run(["/usr/bin/python3", "-c", locate], env=env))
    assert Path(origin) == copy / "__init__.py"
    assert lab.src.run(["cat", origin]).stdout == (package / "__init__.py").read_bytes()


# -- processes -------------------------------------------------------------------------


def test_popen_pid_is_the_command_and_gets_sigterm(lab: Lab) -> None:
    script = 'trap "echo got-term; exit 3" TERM; echo ready $(id -un); while :; do sleep 0.1; done'
    proc = lab.src.popen(["sh", "-c", script])
    assert proc.stdout is not None
    assert proc.stdout.readline() == f"ready {lab.src.user}\n".encode()
    if "local-processes" in lab.features:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:2] == [b"sh", b"-c"]
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uid = int(out(lab.src.run(["id", "-u"])))
        assert f"\nUid:\t{uid}\t" in status
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=10)
    assert (proc.returncode, stdout) == (3, b"got-term\n")


def test_popen_of_a_command_without_trap_dies_of_sigterm(lab: Lab) -> None:
    proc = lab.src.popen(["sh", "-c", "echo ready; exec sleep 60"])
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.terminate()
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGTERM


def test_mounts_on_the_hosts_are_local_paths(lab: Lab, area: Area) -> None:
    fs = f"{area.dst}/seen"
    lab.dst.zfs("create", fs)
    mnt = lab.dst.mountpoint(fs)
    (mnt / "written-here").write_bytes(b"from the test process")
    assert lab.dst.root(["cat", str(mnt / "written-here")]).stdout == b"from the test process"
    lab.dst.root(["sh", "-c", 'echo "from the host" > "$1"/written-there', "sh", str(mnt)])
    assert (mnt / "written-there").read_text() == "from the host\n"
    retry_busy(lambda: lab.dst.zfs("unmount", fs))
    assert not (mnt / "written-here").exists()
    lab.dst.zfs("mount", fs)
    assert sorted(p.name for p in lab.dst.mountpoint(fs).iterdir()) == [
        "written-here", "written-there"
    ]  # fmt: skip


def test_hosts_share_the_machines_mounts(lab: Lab, area: Area) -> None:
    if "local-processes" not in lab.features:
        pytest.skip("the hosts' processes are not on this machine")
    # a copy of the mount table would pin datasets, and zfs-fuse unmounts in the
    # client's own mount namespace: a user's unmount must reach the real mount
    sleeper = lab.dst.popen(["sleep", "60"])
    wait_for(lambda: Path(f"/proc/{sleeper.pid}/cmdline").read_bytes().startswith(b"sleep"))
    assert os.readlink(f"/proc/{sleeper.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    fs = f"{area.dst}/mounted"
    lab.dst.zfs("create", fs)
    where = f" {lab.dst.mountpoint(fs)} "
    assert where in Path("/proc/self/mounts").read_text()
    retry_busy(lambda: lab.dst.run(["zfs", "unmount", fs]))
    assert where not in Path("/proc/self/mounts").read_text()
    lab.dst.run(["zfs", "mount", fs])
    retry_busy(lambda: lab.dst.run(["zfs", "destroy", fs]))
    assert not exists(lab.dst, fs)
    assert sleeper.poll() is None


# -- sshd control ----------------------------------------------------------------------


def test_stopping_dst_sshd_refuses_connections_and_ends_sessions(lab: Lab) -> None:
    session = lab.src.popen(
        ["ssh", "-o", "BatchMode=yes", f"{lab.dst.user}@{lab.dst.address}", "echo up; sleep 60"]
    )
    assert session.stdout is not None
    assert session.stdout.readline() == b"up\n"
    lab.dst.stop_sshd()
    try:
        refused = ssh(lab.src, lab.dst, "true", check=False)
        assert refused.returncode == 255
        assert b"Connection refused" in refused.stderr
        session.communicate(timeout=10)
        assert session.returncode == 255
    finally:
        lab.dst.start_sshd()
    assert out(ssh(lab.src, lab.dst, "echo", "back")) == "back"


def test_password_login_only_while_enabled(lab: Lab) -> None:
    pexpect = pytest.importorskip("pexpect")
    password = "Pass word-1!"
    argv = lab.src.command(
        [
            "ssh",
            "-o", "PubkeyAuthentication=no",
            "-o", "PreferredAuthentications=password",
            "-o", "NumberOfPasswordPrompts=1",
            f"{lab.dst.user}@{lab.dst.address}",
            "id -un",
        ]
    )  # fmt: skip
    shadow_before = lab.dst.root(["getent", "shadow", lab.dst.user]).stdout
    with lab.dst.password_login(password):
        child = pexpect.spawn(argv[0], argv[1:], timeout=20)
        child.expect("password: ")
        child.sendline(password)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        assert child.before.decode().strip().endswith(lab.dst.user)
    shadow_after = lab.dst.root(["getent", "shadow", lab.dst.user]).stdout
    assert shadow_after == shadow_before
    no_password = lab.src.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
         f"{lab.dst.user}@{lab.dst.address}", "true"],
        check=False,
    )  # fmt: skip
    assert no_password.returncode == 255
    assert b"Permission denied (publickey)" in no_password.stderr


# -- data helpers ----------------------------------------------------------------------


def test_write_tree_is_deterministic(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    for d, seed in ((a, 1), (b, 1), (c, 2)):
        d.mkdir()
        write_tree(d, seed)
    sums = tree_checksums(a)
    assert sums == tree_checksums(b)
    other = tree_checksums(c)
    assert other.keys() == sums.keys() and other != sums
    assert sums["name with space.txt"].startswith("file 0644 ")
    assert sums["sub/run.sh"].startswith("file 0755 ")
    assert sums["sub/deeper"] == "dir 0755"
    assert sums["link-to-first"] == "link -> file-00.bin"


def test_snapshot_checksums_show_the_snapshot_not_the_live_data(lab: Lab, area: Area) -> None:
    fs = f"{area.src}/data"
    lab.src.zfs("create", fs)
    mnt = lab.src.mountpoint(fs)
    write_tree(mnt, seed=1)
    first = tree_checksums(mnt)
    lab.src.zfs("snapshot", f"{fs}@one")
    assert snapshot_checksums(lab.src, f"{fs}@one") == first

    (mnt / "sub" / "nested.bin").write_bytes(b"changed")
    second = tree_checksums(mnt)
    assert second != first
    lab.src.zfs("snapshot", f"{fs}@two")
    assert snapshot_checksums(lab.src, f"{fs}@two") == second
    assert snapshot_checksums(lab.src, f"{fs}@one") == first
    pool = lab.src.zfs("list", "-H", "-o", "name", "-r", lab.src.pool)
    assert CHECK_CLONE_PREFIX not in pool


def test_replica_received_unmounted_is_read_through_its_snapshot(lab: Lab, area: Area) -> None:
    fs, replica = f"{area.src}/data", f"{area.dst}/data"
    lab.src.zfs("create", fs)
    write_tree(lab.src.mountpoint(fs), seed=3)
    lab.src.zfs("snapshot", f"{fs}@one")
    # by hand, the way a replication tool does it: the src user pipes into ssh
    pipeline = 'zfs send "$1" | ssh -o BatchMode=yes "$2" zfs receive -u "$3"'
    target = f"{lab.dst.user}@{lab.dst.address}"
    lab.src.run(["sh", "-c", pipeline, "sh", f"{fs}@one", target, replica])
    assert lab.dst.zfs("get", "-H", "-o", "value", "mounted", replica).strip() == "no"
    assert snapshot_checksums(lab.dst, f"{replica}@one") == snapshot_checksums(lab.src, f"{fs}@one")
    assert lab.dst.zfs("get", "-H", "-o", "value", "mounted", replica).strip() == "no"


# -- areas and service files -----------------------------------------------------------


def test_claim_area_removes_everything_it_held(lab: Lab) -> None:
    with claim_area(lab) as area:
        assert lab.dst.zfs("get", "-H", "-o", "value", "readonly", area.dst).strip() == "off"
        for host, parent in ((lab.src, area.src), (lab.dst, area.dst)):
            fs = f"{parent}/fs"
            host.zfs("create", fs)
            write_tree(host.mountpoint(fs), seed=4, n_files=1)
            host.zfs("snapshot", f"{fs}@s")
            # as left by a test that failed inside snapshot_checksums
            host.zfs("clone", f"{fs}@s", f"{host.pool}/{CHECK_CLONE_PREFIX}left")
    for host, parent in ((lab.src, area.src), (lab.dst, area.dst)):
        assert not exists(host, parent)
        assert not exists(host, f"{host.pool}/{CHECK_CLONE_PREFIX}left")


_seen: dict[str, Any] = {}


def test_area_fixture_gives_fresh_mounted_parents(lab: Lab, area: Area) -> None:
    for host, parent in ((lab.src, area.src), (lab.dst, area.dst)):
        assert host.zfs("list", "-H", "-o", "name", "-r", parent).split() == [parent]
        assert host.mountpoint(parent).is_dir()
        host.zfs("create", f"{parent}/child")
        host.zfs("snapshot", f"{parent}/child@s")
    _seen["area"] = area
    _seen["sleeper"] = lab.src.popen(["sleep", "300"])


def test_area_fixture_left_nothing_behind(lab: Lab) -> None:
    if "area" not in _seen:
        pytest.skip("runs after test_area_fixture_gives_fresh_mounted_parents")
    area = _seen["area"]
    assert not exists(lab.src, area.src)
    assert not exists(lab.dst, area.dst)
    assert _seen["sleeper"].poll() is not None  # stopped by the fixture


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_toml_dumps_round_trips_through_tomllib() -> None:
    import tomllib

    data = {
        "name": 'quote " backslash \\ tab \t newline \n bell \x07 del \x7f é',
        "n": 3,
        "ratio": 0.5,
        "on": True,
        "list": ["a", "b"],
        "empty": [],
        "key with space": "x",
        "table": {"k": 1, "nested": {"deep": "yes"}},
        "rows": [{"a": 1}, {"a": 2, "sub": {"b": "c"}}],
    }
    assert tomllib.loads(toml_dumps(data)) == data


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_repl_writes_service_files_the_src_user_owns(
    lab: Lab, area: Area, repl: ZfsreplCli
) -> None:
    import tomllib

    pair = (f"{area.src}/fs1", f"{area.dst}/fs1")
    path = repl.write_service(filesystems=[pair], keep=5, source={"port": 22})
    assert path == repl.config_dir / "services" / "testrepl.toml"
    written = tomllib.loads(out(lab.src.run(["cat", str(path)])))
    assert written == service_definition(lab, [pair], keep=5, source={"port": 22})
    assert written["source"] == {"host": lab.src.address, "user": lab.src.user, "port": 22}
    assert written["filesystem"] == [{"source": pair[0], "destination": pair[1]}]
    owners = out(lab.src.run(["stat", "-c", "%U", str(path), str(repl.state_dir)])).split()
    assert owners == [lab.src.user, lab.src.user]
    assert repl.argv("status")[:5] == [
        "zfsrepl", "--config-dir", str(repl.config_dir), "--state-dir", str(repl.state_dir)
    ]  # fmt: skip
