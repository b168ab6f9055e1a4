"""`zfsrepl setup` in the lab: the wizard in a terminal, the root scripts, replays.

The wizard runs as the source user on the source host in a pseudo-terminal, logs in
to the destination with the destination user's password (the lab's destination sshd
accepts one for the length of the test), and is given wrong answers on the way; the
root scripts it asks for are run as root on their hosts. Then `runonce` replicates
through the agent, and `setup -r` of the response file leaves everything as it was.
"""

from __future__ import annotations

from typing import Iterator

import pexpect
import pytest
import tomllib
from test_setup_support import (
    PASSWORD,
    SetupCase,
    agent_log,
    authorized_keys,
    cleaned_up,
    expect,
    finish,
    home_file,
    mode_and_owner,
    replay,
    run_root_steps,
    service_lines,
    setup_zfs_command,
    without_other_services,
)

from lab import Area, Lab, LabHost, ZfsreplCli, snapshot_checksums, tree_checksums, write_tree
from zfsrepl import zfswrap

pytestmark = pytest.mark.backends("fuse", "openzfs")


@pytest.fixture
def case(lab: Lab, area: Area, repl: ZfsreplCli) -> Iterator[SetupCase]:
    the_case = SetupCase(lab, area, repl, name=f"setup-{area.name}")
    for i, (src, _) in enumerate(the_case.pairs):
        lab.src.zfs("create", src)
        write_tree(lab.src.mountpoint(src), seed=i)
    with cleaned_up(the_case):
        yield the_case


class Answers:
    """Answer the wizard's questions; a refused answer must be refused."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.refusals = 0

    def __call__(self, question: str, answer: str, *, refused: bool = False) -> None:
        expect(self.child, question)
        self.child.sendline(answer)
        if refused:
            expect(self.child, r"Refused: ([^\r\n]*)\. Please answer again\.")
            self.refusals += 1


def run_wizard(case: SetupCase) -> tuple[int, str, Answers, dict[str, str]]:
    lab, area = case.lab, case.area
    (src1, dst1), (src2, dst2) = case.pairs
    child = case.spawn("setup", "-i", "--ssh-option", "PubkeyAuthentication=no",
                       "--poll", "0.2")
    ask = Answers(child)
    ask("response file you want to create", "/nonexistent/folder/r.toml", refused=True)
    ask("response file you want to create", str(case.response))
    ask("source system name", lab.src.address)
    ask("destination system name", "bad host!", refused=True)
    ask("destination system name", lab.dst.address)
    ask("user name on the destination system", lab.dst.user)
    # said before OpenSSH asks
    expect(child, "Please enter the password of the destination user if asked")
    if expect(child, [r"\(yes/no[^)]*\)\? ", r"password: "]) == 0:
        child.sendline("yes")
        expect(child, "password: ")
    child.sendline(PASSWORD)
    ask("How many filesystems", "none", refused=True)
    ask("How many filesystems", "2")
    # Through sudo, zfs answers only after the root steps (the wrapper and its rules):
    # there the wizard notes that it cannot check a filesystem yet and goes on.
    checks = "sudo" not in lab.features
    if checks:
        ask(r"source zfs filesystem\[1\]", f"{area.src}/missing", refused=True)
    ask(r"source zfs filesystem\[1\]", src1)
    if checks:
        ask(r"destination zfs filesystem\[1\]", f"{area.dst}/no-parent/fs1", refused=True)
    ask(r"destination zfs filesystem\[1\]", dst1)
    ask(r"source zfs filesystem\[2\]", src1, refused=True)  # twice the same
    ask(r"source zfs filesystem\[2\]", src2)
    ask(r"destination zfs filesystem\[2\]", dst2)
    ask("replication interval", "soon", refused=True)
    ask("replication interval", "")
    ask("number of retries", "")
    ask("number of snapshots to keep", "-1", refused=True)
    ask("number of snapshots to keep", "2")
    ask("before the snapshot is taken", "relative/script", refused=True)
    ask("before the snapshot is taken", "")
    ask("after the snapshot is taken", "")
    ask("service name", "bad name!", refused=True)
    ask("service name", case.name)
    expect(child, "Summary of the replication service")
    ask("make changes now", "y")
    ran = run_root_steps(child, lab)
    code, rest = finish(child)
    return code, rest, ask, ran


def installed_state(case: SetupCase) -> dict[str, str]:
    """What setup leaves on both hosts, with contents, modes and change times (and the
    service's authorized_keys line: other tests change the rest of that file)."""
    lab, cfg = case.lab, case.repl.config_dir
    files = {
        lab.src: [str(cfg / "services" / f"{case.name}.toml"), str(case.key),
                  f"{case.key}.pub", home_file(lab.src, f"zfsrepl-root.{case.name}.source.sh")],
        lab.dst: [str(case.destination_config_dir / "services" / f"{case.name}.toml"),
                  home_file(lab.dst, f"zfsrepl-root.{case.name}.destination.sh")],
    }
    if "sudo" in lab.features:  # where `zfs allow` works, the rights are in ZFS instead
        for host, side in ((lab.src, "source"), (lab.dst, "destination")):
            files[host] += [f"/etc/sudoers.d/zfsrepl-{host.user}",
                            f"{zfswrap.RULES_DIR}/{host.user}/{case.name}.{side}.json",
                            zfswrap.WRAPPER_PATH]
    state = {"key line": "\n".join(service_lines(lab, case.marker))}
    for host, paths in files.items():
        for path in paths:
            stat = host.root(["stat", "-c", "%a %U %s %y", path]).stdout.decode()
            data = host.root(["sha256sum", path]).stdout.decode().split()[0]
            state[f"{host.name}:{path}"] = f"{stat.strip()} {data}"
    return state


def check_replication(case: SetupCase, seed: int) -> str:
    """runonce through the agent; every file of the newest snapshot equal on both sides."""
    lab = case.lab
    for i, (src, _) in enumerate(case.pairs):
        write_tree(lab.src.mountpoint(src), seed=seed + i)
    case.repl.run("runonce", case.name)
    newest = ""
    for i, (src, dst) in enumerate(case.pairs):
        snaps = lab.dst.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg",
                            "-r", dst).split("\n")
        newest = [s for s in snaps if s.startswith(f"{dst}@")][-1].split("@", 1)[1]
        expected = tree_checksums(lab.src.mountpoint(src))
        assert snapshot_checksums(lab.src, f"{src}@{newest}") == expected
        assert snapshot_checksums(lab.dst, f"{dst}@{newest}") == expected, (i, newest)
    return newest


# Not on the OpenZFS VM: backend-neutral, and minutes of emulated time (the e2e run
# there is kept to what OpenZFS changes).
@pytest.mark.backends("fuse")
def test_wizard_sets_up_a_service_that_replicates_through_the_agent(case: SetupCase) -> None:
    lab = case.lab
    keys_before = without_other_services(authorized_keys(lab), case.marker)

    with lab.dst.password_login(PASSWORD):
        code, rest, ask, ran = run_wizard(case)
    assert code == 0, rest
    assert "The installation is correct." in rest
    assert ask.refusals == (10 if "sudo" not in lab.features else 8)
    assert set(ran) == {"source", "destination"}

    # keys and scripts: private to their users
    key_dir = str(case.key.parent)
    assert mode_and_owner(lab.src, key_dir) == (0o700, lab.src.user)
    assert mode_and_owner(lab.src, str(case.key)) == (0o600, lab.src.user)
    assert mode_and_owner(lab.src, f"{case.key}.pub") == (0o644, lab.src.user)
    assert mode_and_owner(lab.src, ran["source"]) == (0o700, lab.src.user)
    assert mode_and_owner(lab.dst, ran["destination"]) == (0o700, lab.dst.user)

    # one restricted line for the service; the rest of the file as it was
    lines = service_lines(lab, case.marker)
    assert len(lines) == 1
    assert lines[0].startswith('restrict,command="') and f" --service {case.name} " in lines[0]
    after = without_other_services(authorized_keys(lab), case.marker)
    assert after.replace(lines[0].encode() + b"\n", b"") == keys_before

    # the definition, on the source, and its copy marked as the destination's
    cfg = case.repl.config_dir
    installed = lab.src.root(["cat", str(cfg / "services" / f"{case.name}.toml")]).stdout
    assert installed == lab.src.root(["cat", str(case.response)]).stdout
    copy = case.destination_config_dir / "services" / f"{case.name}.toml"
    remote = tomllib.loads(lab.dst.root(["cat", str(copy)]).stdout.decode())
    assert remote.pop("role") == "destination"
    assert remote == tomllib.loads(installed.decode())

    # full, then incremental, through the agent
    first = check_replication(case, seed=10)
    second = check_replication(case, seed=20)
    assert first != second
    log = agent_log(case)
    assert "receive -u -F" in log and "refused" not in log
    if "sudo" in lab.features:
        # no zfs allow: zfs through sudo and the wrapper, which is all the rule allows
        assert f"running: sudo -n {zfswrap.WRAPPER_PATH} receive -u -F" in log
        for host in lab.hosts:
            rule = host.root(["cat", f"/etc/sudoers.d/zfsrepl-{host.user}"]).stdout.decode()
            assert rule == f"{host.user} ALL=(root) NOPASSWD: {zfswrap.WRAPPER_PATH}\n"
        # set-uid programs and devices received into a replica do not count
        for _, dst in case.pairs:
            for prop in ("setuid", "devices"):
                assert lab.dst.zfs("get", "-H", "-o", "value", prop, dst).strip() == "off"

    # replaying the response file changes nothing, twice
    state = installed_state(case)
    for _ in range(2):
        code, rest, ran = replay(case)
        assert code == 0, rest
        assert ran == {}, "the root steps were done already"
        assert "The key line was in place already." in rest
        assert "The installation is correct." in rest
        assert installed_state(case) == state


def test_replay_of_a_response_file_sets_up_from_scratch(case: SetupCase) -> None:
    """The manual's failback ends with `setup -r` of a copied definition: the same
    service, without one question."""
    lab = case.lab
    zfs = setup_zfs_command(lab)
    text = "\n".join([
        f'name = "{case.name}"', "interval = 30", "retries = 2", "keep = 2",
        'pre_snapshot = "none"', 'post_snapshot = "none"', "",
        "[source]", f'host = "{lab.src.address}"', f'user = "{lab.src.user}"',
        f'zfs_command = "{zfs}"', "",
        "[destination]", f'host = "{lab.dst.address}"', f'user = "{lab.dst.user}"',
        f'zfs_command = "{zfs}"', "",
        *(f'[[filesystem]]\nsource = "{s}"\ndestination = "{d}"\n' for s, d in case.pairs),
    ])
    case.repl.put(case.response, text.encode())
    code, rest, ran = replay(case)
    assert code == 0, rest
    assert set(ran) == {"source", "destination"}
    assert "The installation is correct." in rest
    assert len(service_lines(lab, case.marker)) == 1
    check_replication(case, seed=30)
    check_replication(case, seed=40)
    # the third cycle prunes (keep = 2): the destination's destroys are one request
    check_replication(case, seed=50)
    for src, dst in case.pairs:
        kept = [own_snapshots(lab.src, src), own_snapshots(lab.dst, dst)]
        assert len(kept[0]) == 2 and kept[0] == kept[1], kept
    logged = agent_log(case)
    assert "destroy: 2 in one request" in logged
    if "openzfs" in lab.features:  # the agent runs /usr/sbin/zfs: libzfs_core takes them
        assert "destroy: 2 in one transaction group (pool " in logged, logged
        # each cycle moves the bases' holds: the new ones held, the old released
        assert f"hold: {len(case.pairs)} in one transaction group (pool " in logged, logged
        assert f"release: {len(case.pairs)} in one transaction group (pool " in logged, logged


def own_snapshots(host: LabHost, fs: str) -> list[str]:
    out = host.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-d", "1", fs)
    return [ln.split("@", 1)[1] for ln in out.splitlines() if "@zfsrepl-" in ln]
