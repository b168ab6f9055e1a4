"""The agent through real ssh with the forced command setup wrote: refusals.

One service is set up (with `setup -r`) and replicated once; then each request a
service key must not be able to make is sent with that key, as ssh sends it. Every
one is refused with the agent's message, and afterwards both areas' datasets and
snapshots and the destination's authorized_keys are as they were.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_setup_support import (
    SetupCase,
    agent_log,
    authorized_keys,
    cleaned_up,
    listing,
    replay,
    setup_zfs_command,
    without_other_services,
)

from lab import Lab, LabHost, ZfsreplCli, claim_area
from zfsrepl import agent, zfswrap
from zfsrepl.naming import SnapshotNaming

# zfs-fuse only: the agent decides before any zfs runs, the same whatever ZFS is below;
# on OpenZFS it is exercised through setup (test_setup.py, test_wire_compression.py).
pytestmark = pytest.mark.backends("fuse")

REFUSED = agent.EXIT_REFUSED


@dataclass
class Installed:
    case: SetupCase
    own: str  # a destination filesystem of the service
    own_snapshot: str  # one of its snapshots, made by the service
    other_fs: str  # a filesystem beside it, not the service's
    control: str  # ControlMaster socket of a connection made with the service key

    @property
    def lab(self) -> Lab:
        return self.case.lab

    def ssh_argv(self, command: Sequence[str], *options: str) -> list[str]:
        """ssh as the source user with the service key (and nothing else)."""
        return ["ssh", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "ControlMaster=no", "-S", self.control, "-i", str(self.case.key),
                *options, f"{self.lab.dst.user}@{self.lab.dst.address}", *command]

    def send(self, command: str | bytes) -> tuple[int, str]:
        """Send `command` as the one remote command string; (exit code, stderr)."""
        text = os.fsdecode(command) if isinstance(command, bytes) else command
        proc = self.lab.src.run(self.ssh_argv([text]), check=False)
        return proc.returncode, proc.stderr.decode("utf-8", "replace")

    def state(self) -> tuple[str, str, bytes]:
        case = self.case
        return (listing(self.lab.src, case.area.src), listing(self.lab.dst, case.area.dst),
                without_other_services(authorized_keys(self.lab), case.marker))


@pytest.fixture(scope="module")
def installed(lab: Lab) -> Iterator[Installed]:
    with claim_area(lab) as area:
        repl = ZfsreplCli(lab, area.name)
        repl.create()
        case = SetupCase(lab, area, repl, name=f"agent-{area.name}")
        try:
            with cleaned_up(case):
                yield _install(case)
        finally:
            lab.stop_children()
            repl.destroy()


def _install(case: SetupCase) -> Installed:
    lab, area = case.lab, case.area
    zfs = setup_zfs_command(lab)
    lines = [f'name = "{case.name}"', "keep = 3",
             "[source]", f'host = "{lab.src.address}"', f'user = "{lab.src.user}"',
             f'zfs_command = "{zfs}"',
             "[destination]", f'host = "{lab.dst.address}"', f'user = "{lab.dst.user}"',
             f'zfs_command = "{zfs}"']
    for src, dst in case.pairs:
        lab.src.zfs("create", src)
        lines += ["[[filesystem]]", f'source = "{src}"', f'destination = "{dst}"']
    case.repl.put(case.response, ("\n".join(lines) + "\n").encode())
    code, out, _ = replay(case)
    assert code == 0, out
    case.repl.run("runonce", case.name)
    own = case.pairs[1][1]  # the one with a space
    naming = SnapshotNaming(lab.src.user, lab.dst.user, lab.dst.address)
    other_fs = f"{area.dst}/other"
    lab.dst.zfs("create", other_fs)
    # snapshots a refused request could destroy or roll back to: another service's
    # on the service's own filesystem, this service's name on a foreign filesystem,
    # and one made by hand
    other_service = SnapshotNaming(lab.src.user, "dst2", lab.dst.address)
    lab.dst.zfs("snapshot", f"{own}@{other_service.format(1)}")
    lab.dst.zfs("snapshot", f"{own}@by-hand")
    lab.dst.zfs("snapshot", f"{other_fs}@{naming.format(1)}")
    control = f"/tmp/zr-agent-test-{case.name}"
    master = lab.src.popen(["ssh", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                            "-i", str(case.key), "-M", "-N", "-S", control,
                            f"{lab.dst.user}@{lab.dst.address}"])
    inst = Installed(case, own, f"{own}@{naming.format(1)}", other_fs, control)
    for _ in range(200):
        if lab.src.run(["test", "-S", control], check=False).returncode == 0:
            break
        assert master.poll() is None, master.communicate()
        time.sleep(0.05)
    return inst


def _cases(inst: Installed) -> dict[str, str | bytes]:
    own, snap, other = inst.own, inst.own_snapshot, inst.other_fs
    q = shlex.quote
    listing_own = f"zfs list -H -o name {q(own)}"
    other_service = SnapshotNaming(inst.lab.src.user, "dst2", inst.lab.dst.address).format(1)
    ours_elsewhere = f"{other}@{snap.split('@', 1)[1]}"
    return {
        "get other dataset": "zfs get -Hp -r -d 1 -o name,property,value "
                             f"guid,createtxg,creation,userrefs {q(other)}",
        "list the pool": f"zfs list -H -o name {inst.lab.dst.pool}",
        "receive into another dataset": f"zfs receive -u -F {q(other)}",
        "destroy another service's snapshot": f"zfs destroy {q(own + '@' + other_service)}",
        "rollback to another service's snapshot": f"zfs rollback {q(own + '@' + other_service)}",
        "destroy a snapshot made by hand": f"zfs destroy {q(own + '@by-hand')}",
        "destroy own name on a foreign filesystem": f"zfs destroy {q(ours_elsewhere)}",
        # several at once: one foreign snapshot refuses them all, the own one too
        "destroy several, one foreign": f"zfs destroy {q(snap)} {q(ours_elsewhere)}",
        "destroy the filesystem": f"zfs destroy {q(own)}",
        "destroy recursively": f"zfs destroy -r {q(snap)}",
        "rollback -r": f"zfs rollback -r {q(snap)}",
        "send": f"zfs send {q(snap)}",
        "set a property": f"zfs set readonly=off {q(own)}",
        "semicolon": f"{listing_own}; zfs destroy -r {q(own)}",
        "and": f"{listing_own} && zfs destroy -r {q(own)}",
        "substitution": f"zfs destroy {q(own)}@$(echo {q(snap.split('@', 1)[1])})",
        "backticks": f"zfs list -H -o name `echo {q(own)}`",
        "newline": f"{listing_own}\nzfs destroy {q(snap)}",
        "unbalanced quote": f"zfs destroy '{snap}",
        "quotes around a shell": "'sh' '-c' 'zfs destroy -r zfsrepl_dst'",
        "pipe to a shell": f"{listing_own} | sh",
        # past the agent's limit, below what one argv string may hold (128 KiB)
        "very long": "zfs list -H -o name " + " ".join([q(own)] * (72000 // len(q(own)))),
        "not UTF-8": b"zfs destroy " + own.encode() + b"@\xff\xfe",
        "a shell": "sh",
        "zfsrepl itself": "zfsrepl setup-remote install-key",
    }


# the names of _cases(), known before the fixture runs (for parametrize)
CASES = [
    "get other dataset", "list the pool", "receive into another dataset",
    "destroy another service's snapshot", "rollback to another service's snapshot",
    "destroy a snapshot made by hand", "destroy own name on a foreign filesystem",
    "destroy several, one foreign",
    "destroy the filesystem", "destroy recursively", "rollback -r", "send",
    "set a property", "semicolon", "and", "substitution", "backticks", "newline",
    "unbalanced quote", "quotes around a shell", "pipe to a shell", "very long",
    "not UTF-8", "a shell", "zfsrepl itself",
]


def assert_refused(inst: Installed, command: str | bytes) -> None:
    before = inst.state()
    refusals = agent_log(inst.case).count(" refused: ")
    code, err = inst.send(command)
    assert code == REFUSED, (code, err)
    assert err.startswith("zfsrepl agent: refused: "), err
    assert err.count("\n") == 1, err
    assert agent_log(inst.case).count(" refused: ") == refusals + 1
    assert inst.state() == before


# The agent decides before any zfs runs, the same way whatever ZFS is below it: the
# refusals and the fuzzing run on zfs-fuse only (under the emulated VM they cost
# minutes); on OpenZFS, what a cycle needs must be allowed and work with zfs allow.
@pytest.mark.backends("fuse")
@pytest.mark.parametrize("name", CASES)
def test_refused(installed: Installed, name: str) -> None:
    assert_refused(installed, _cases(installed)[name])


def test_the_cases_are_all_tested(installed: Installed) -> None:
    assert sorted(_cases(installed)) == sorted(CASES)


def test_what_a_cycle_needs_is_allowed(installed: Installed) -> None:
    """The control: the same key and connection do get the service's own requests."""
    code, err = installed.send(f"zfs list -H -o name {shlex.quote(installed.own)}")
    assert (code, err) == (0, "")
    code, err = installed.send("hello")
    assert code == 0, err


def test_no_command_no_shell_no_pty(installed: Installed) -> None:
    before = installed.state()
    proc = installed.lab.src.run(installed.ssh_argv([]), check=False)
    assert proc.returncode == REFUSED
    assert b"no command given" in proc.stderr
    proc = installed.lab.src.run(installed.ssh_argv(["hello"], "-tt"), input=b"",
                                 check=False)
    assert b"PTY allocation request failed" in proc.stderr
    # restrict: no forwarding of any kind
    proc = installed.lab.src.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i",
         str(installed.case.key), "-W", f"{installed.lab.dst.address}:22",
         f"{installed.lab.dst.user}@{installed.lab.dst.address}"], input=b"", check=False)
    assert proc.returncode != 0
    assert installed.state() == before


INJECTIONS = [";", "&&", "||", "|", "$(id)", "`id`", "\n", "'", '"', "\\", ">", "<", "&",
              "*", "$HOME", "#", "-r", "-R", "-f", "-d", "@", ",", "%"]


@st.composite
def hostile(draw: st.DrawFn, own: str, snap: str, other: str) -> str | bytes:
    base = draw(st.sampled_from([
        f"zfs list -H -o name {shlex.quote(own)}",
        f"zfs destroy {shlex.quote(snap)}",
        f"zfs rollback {shlex.quote(snap)}",
        f"zfs receive -u -F {shlex.quote(own)}",
        "zfs get -Hp -r -d 1 -o name,property,value guid,createtxg,creation,userrefs "
        f"{shlex.quote(own)}",
        f"zfs destroy {shlex.quote(other)}",
        "hello",
    ]))
    words = base.split(" ")
    at = draw(st.integers(0, len(words)))
    extra = draw(st.lists(st.sampled_from(INJECTIONS) | st.text(max_size=6), min_size=1,
                          max_size=3))
    glue = draw(st.sampled_from(["", " "]))
    text = " ".join(words[:at]) + glue + glue.join(extra) + glue + " ".join(words[at:])
    if draw(st.booleans()):
        return text.encode("utf-8") + draw(st.binary(min_size=1, max_size=4))
    return text


@pytest.mark.backends("fuse")  # see test_refused
def test_fuzz(installed: Installed) -> None:
    own, snap, other = installed.own, installed.own_snapshot, installed.other_fs

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(hostile(own, snap, other))
    def check(command: str | bytes) -> None:
        raw = command if isinstance(command, bytes) else command.encode("utf-8")
        assume(b"\x00" not in raw)
        text = agent.decode_command(raw)
        # only what the agent itself would refuse: an accepted request changes things
        if isinstance(text, str):
            assume(isinstance(agent.decide(text, policy), agent.Refused))
        code, err = installed.send(command)
        assert code == REFUSED, (command, code, err)
        assert err.startswith("zfsrepl agent: refused: "), (command, err)

    policy = agent.Policy(installed.case.name, frozenset(d for _, d in installed.case.pairs),
                          SnapshotNaming(installed.lab.src.user, installed.lab.dst.user,
                                         installed.lab.dst.address),
                          tuple(setup_zfs_command(installed.lab).split()))
    before = installed.state()
    check()
    assert installed.state() == before


# ---------------------------------------------------------------------------- zfs wrapper


def wrapper_refuses(host: LabHost, *args: str) -> str:
    """Run the wrapper through sudo as the host's user; it must refuse: its line."""
    proc = host.run(["sudo", "-n", zfswrap.WRAPPER_PATH, *args], input=b"", check=False)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == zfswrap.EXIT_REFUSED, (args, proc.returncode, err)
    assert err.startswith("zfsrepl zfs wrapper: refused: ") and err.count("\n") == 1, err
    return err


def test_through_sudo_the_users_reach_only_their_services_filesystems(
        installed: Installed) -> None:
    """Where zfs rights come from sudo (zfs-fuse), setup's sudo rule names the wrapper;
    the service replicated through it (the fixture's runonce), and no property that
    reaches root, no dataset beside the service's, no form zfsrepl never runs passes."""
    lab = installed.lab
    if "sudo" not in lab.features:
        pytest.skip("this lab gives zfs rights by delegation")
    assert f"running: sudo -n {zfswrap.WRAPPER_PATH} receive" in agent_log(installed.case)
    own_src = installed.case.pairs[1][0]
    before = installed.state()
    mountpoints = [lab.src.zfs("get", "-H", "-o", "value", "mountpoint", own_src),
                   lab.dst.zfs("get", "-H", "-o", "value", "mountpoint", installed.own)]
    says = wrapper_refuses(lab.dst, "set", "mountpoint=/etc", installed.own)
    assert "mountpoint=/etc" in says
    wrapper_refuses(lab.src, "set", "mountpoint=/etc", own_src)
    wrapper_refuses(lab.dst, "set", "sharenfs=on", installed.own)
    wrapper_refuses(lab.dst, "set", "readonly=off", installed.other_fs)  # beside its own
    own_name = installed.own_snapshot.split("@", 1)[1]
    wrapper_refuses(lab.dst, "destroy", f"{installed.other_fs}@{own_name}")
    wrapper_refuses(lab.dst, "create", f"{installed.own}/x")
    wrapper_refuses(lab.dst, "destroy", "-r", installed.own)
    wrapper_refuses(lab.dst, "receive", "-u", f"{installed.other_fs}/x")
    wrapper_refuses(lab.src, "receive", "-u", "-F", own_src)  # a source only sends
    wrapper_refuses(lab.src, "snapshot", f"{lab.src.pool}@zfsrepl-x")
    wrapper_refuses(lab.src, "send", f"{installed.other_fs}@x")
    wrapper_refuses(lab.dst, "list", "-H", "-o", "name", "-r", lab.dst.pool)
    wrapper_refuses(lab.dst, "mount", f"{installed.own};sh")
    # a stream with properties (send -p) never reaches zfs receive
    snap = installed.own_snapshot.replace(installed.case.pairs[1][1], own_src)
    stream = lab.src.root(["/usr/sbin/zfs", "send", "-p", snap]).stdout
    proc = lab.dst.run(["sudo", "-n", zfswrap.WRAPPER_PATH, "receive", "-u", installed.own],
                       input=stream, check=False)
    assert proc.returncode == zfswrap.EXIT_REFUSED, proc.stderr
    assert b"replication stream" in proc.stderr
    # nothing changed; the service's own forms still pass
    assert installed.state() == before
    assert [lab.src.zfs("get", "-H", "-o", "value", "mountpoint", own_src),
            lab.dst.zfs("get", "-H", "-o", "value", "mountpoint", installed.own)] == mountpoints
    ok = lab.dst.run(["sudo", "-n", zfswrap.WRAPPER_PATH, "list", "-H", "-o", "name",
                      installed.own])
    assert ok.stdout.decode().strip() == installed.own
