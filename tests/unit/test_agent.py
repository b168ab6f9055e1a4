"""The agent's grammar: exactly what a cycle sends is allowed, nothing else."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfsrepl import agent, cycle, zfs
from zfsrepl.agent import Hello, Policy, Refused, RunZfs, decide
from zfsrepl.host import Result
from zfsrepl.naming import SnapshotNaming
from zfsrepl.plan import Send
from zfsrepl.snapshots import Snapshot

FS1 = "zfsrepl_dst/svc/fs 1"  # a space, as dataset names may hold
FS2 = "zfsrepl_dst/svc/fs2"
NAMING = SnapshotNaming("src", "dst", "198.51.100.12")
OTHER_NAMING = SnapshotNaming("src", "dst2", "198.51.100.12")
SUDO_ZFS = ("sudo", "-n", "/usr/sbin/zfs")
ASIDE1 = f"{FS1}.diverged-20260102-030405"  # FS1 set aside by doctor --fix
POLICY = Policy(service="svc", filesystems=frozenset({FS1, FS2}), naming=NAMING,
                zfs_argv=SUDO_ZFS)


def wire(argv: list[str]) -> str:
    """What SshHost hands ssh as the remote command (host.py's quoting)."""
    return " ".join(shlex.quote(a) for a in argv)


class RecordingHost:
    """A Host that records what zfs.py runs and answers like an empty ZFS."""

    label = "dst@test"

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        self.argvs.append(list(argv))
        return Result(argv, 0, "", "")

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def close(self) -> None:
        pass


def cycle_commands(zfs_argv: list[str]) -> list[list[str]]:
    """Every destination command zfs.py builds for this service."""
    host = RecordingHost()
    z = zfs.Zfs(host, zfs_argv)
    z.snapshots([FS1, FS2])
    z.existing(["zfsrepl_dst/svc"])
    z.destroy_snapshot(FS1, NAMING.format(3))
    # what the features of current ZFS add (capabilities.py)
    z.capabilities()
    z.states([FS1, FS2], (zfs.RESUME_TOKEN,))
    # the listing cache's look where ZFS has snapshots_changed (listing_cache.py)
    z.changed([FS1, FS2], (zfs.RESUME_TOKEN,))
    # a cycle moves every filesystem's base at once; retention releases one
    z.hold("zfsrepl-svc", [f"{FS1}@{NAMING.format(4)}", f"{FS2}@{NAMING.format(4)}"])
    z.release("zfsrepl-svc", [f"{FS1}@{NAMING.format(3)}", f"{FS2}@{NAMING.format(3)}"])
    z.release("zfsrepl-svc", [f"{FS2}@{NAMING.format(2)}"])
    z.holds([Snapshot(FS1, NAMING.format(3), 1, 3, userrefs=1),
             Snapshot(FS2, NAMING.format(3), 2, 3, userrefs=1)])
    z.abort_resumable(FS2)
    full = z.receive_argv(FS1, incremental=False)
    incr = z.receive_argv(FS2, incremental=True)
    full_s = z.receive_argv(FS1, incremental=False, resumable=True, readonly=True)
    incr_s = z.receive_argv(FS2, incremental=True, resumable=True, readonly=True)
    # the fallback listing of ZFS without holds
    no_holds = z.argv("get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
                      "guid,createtxg,creation", FS1)
    return [*host.argvs, full, incr, full_s, incr_s, no_holds,
            [*zfs_argv, "rollback", f"{FS2}@{NAMING.format(7)}"]]


def test_listing_properties_are_zfs_pys() -> None:
    assert agent.LISTING_PROPERTIES == zfs._LIST_PROPS
    assert agent.LISTING_OPTIONAL == zfs.OPTIONAL_LIST_PROPS


def test_the_listing_caches_properties_are_zfs_pys() -> None:
    assert zfs._EXIT_REFUSED == agent.EXIT_REFUSED
    assert agent.CHANGED_PROPERTIES == (zfs.SNAPSHOTS_CHANGED, zfs.ROLE_PROPERTY)
    assert set(zfs.FS_LIST_PROPS) - {zfs.ROLE_PROPERTY} == set(agent.LISTING_OPTIONAL)


@pytest.mark.parametrize("props", ["snapshots_changed,zfsrepl:role",
                                   "snapshots_changed,zfsrepl:role,receive_resume_token",
                                   "snapshots_changed,zfsrepl:role,encryption",
                                   "snapshots_changed,zfsrepl:role,receive_resume_token,"
                                   "encryption"])
def test_the_listing_caches_look_is_allowed_on_own_filesystems(props: str) -> None:
    argv = ["get", "-Hp", "-o", "name,property,value", props, FS1, FS2]
    decision = decide(wire(["zfs", *argv]), POLICY)
    assert decision == RunZfs(tuple(argv))
    assert not decision.listing  # no -r: only the filesystems named


@pytest.mark.parametrize("argv", [
    ["snapshots_changed,zfsrepl:role", FS1, "zfsrepl_dst/other"],  # another's filesystem
    ["snapshots_changed,zfsrepl:role", "zfsrepl_dst/svc"],  # the parent
    ["snapshots_changed,zfsrepl:role", f"{FS1}@{NAMING.format(3)}"],  # a snapshot
    ["snapshots_changed,zfsrepl:role"],  # nothing named
    ["snapshots_changed", FS1],  # not the form zfsrepl sends
    ["snapshots_changed,zfsrepl:role,guid", FS1],  # more than the filesystem's properties
    ["snapshots_changed,zfsrepl:role,all", FS1],
    ["snapshots_changed,zfsrepl:role,encryption,encryption", FS1],
    ["zfsrepl:role,snapshots_changed", FS1],
    ["snapshots_changed,zfsrepl:role,keystatus", FS1],
    ["-r", "snapshots_changed,zfsrepl:role", FS1],
    ["-d", "1", "snapshots_changed,zfsrepl:role", FS1],
])
def test_the_listing_caches_look_allows_nothing_more(argv: list[str]) -> None:
    decision = decide(wire(["zfs", "get", "-Hp", "-o", "name,property,value", *argv]), POLICY)
    assert isinstance(decision, Refused), argv


def test_hold_tag_is_the_cycles() -> None:
    assert POLICY.hold_tag == cycle.hold_tag(POLICY.service)


@pytest.mark.parametrize("prefix", [list(SUDO_ZFS), ["zfs"], ["/usr/sbin/zfs"]])
def test_every_command_of_a_cycle_is_allowed_and_runs_the_agents_zfs(prefix: list[str]) -> None:
    commands = cycle_commands(prefix)
    assert len(commands) == 17
    for argv in commands:
        decision = decide(wire(argv), POLICY)
        assert isinstance(decision, RunZfs), (argv, decision)
        # whatever the client's prefix, the agent runs its own zfs with the arguments
        assert decision.args == tuple(argv[len(prefix):])


def test_send_argv_shapes_are_not_for_the_destination() -> None:
    host = RecordingHost()
    argv = zfs.Zfs(host, ["zfs"]).send_argv(FS1, Send(base=None, target=NAMING.format(1)))
    assert isinstance(decide(wire(argv), POLICY), Refused)


def test_incremental_receive_needs_an_existing_target() -> None:
    full = decide(wire(["zfs", "receive", "-u", FS1]), POLICY)
    incr = decide(wire(["zfs", "receive", "-u", "-F", FS1]), POLICY)
    assert isinstance(full, RunZfs) and full.must_exist is None
    assert isinstance(incr, RunZfs) and incr.must_exist == FS1
    incr_s = decide(wire(["zfs", "receive", "-u", "-F", "-s", FS1]), POLICY)
    assert isinstance(incr_s, RunZfs) and incr_s.must_exist == FS1


def test_the_capability_probe_is_zfs_alone() -> None:
    decision = decide(wire(list(SUDO_ZFS)), POLICY)
    assert decision == RunZfs(())
    assert decide("zfs", POLICY) == RunZfs(())


@pytest.mark.parametrize("argv", [
    ["zfs", "receive", "-u", "-s", FS1],
    ["zfs", "receive", "-u", "-o", "readonly=on", FS1],
    ["zfs", "receive", "-u", "-s", "-o", "readonly=on", FS1],
    ["zfs", "receive", "-A", FS2],
    ["zfs", "hold", "zfsrepl-svc", f"{FS1}@{NAMING.format(3)}"],
    ["zfs", "release", "zfsrepl-svc", f"{FS2}@{NAMING.format(3)}"],
    ["zfs", "hold", "zfsrepl-svc", f"{FS1}@{NAMING.format(4)}", f"{FS2}@{NAMING.format(4)}"],
    ["zfs", "release", "zfsrepl-svc", f"{FS1}@{NAMING.format(3)}", f"{FS2}@{NAMING.format(3)}",
     f"{FS1}@{NAMING.format(2)}"],
    ["zfs", "holds", "-H", f"{FS1}@{NAMING.format(3)}", f"{FS2}@anything"],
    ["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
     "guid,createtxg,creation,userrefs,zfsrepl:role,receive_resume_token", FS1],
])
def test_forms_of_current_zfs_are_allowed(argv: list[str]) -> None:
    assert isinstance(decide(wire(argv), POLICY), RunZfs), argv


@pytest.mark.parametrize("sub", ["hold", "release"])
def test_a_batch_is_refused_for_its_one_bad_snapshot(sub: str) -> None:
    good = [f"{fs}@{NAMING.format(n)}" for n in (3, 4) for fs in (FS1, FS2)]
    assert isinstance(decide(wire(["zfs", sub, "zfsrepl-svc", *good]), POLICY), RunZfs)
    for bad, why in ((f"{FS2}@manual", "'manual' was not made by service svc"),
                     (f"zfsrepl_dst/other@{NAMING.format(3)}",
                      "'zfsrepl_dst/other' is not a destination filesystem")):
        for at in (0, 2, len(good)):
            decision = decide(wire(["zfs", sub, "zfsrepl-svc", *good[:at], bad, *good[at:]]),
                              POLICY)
            assert isinstance(decision, Refused) and why in decision.reason, (at, decision)


def test_the_repairs_requests_are_allowed_and_checked_like_the_others() -> None:
    host = RecordingHost()
    z = zfs.Zfs(host, list(SUDO_ZFS))
    z.rename(FS1, ASIDE1)
    z.clone(f"{ASIDE1}@{NAMING.format(3)}", FS1, readonly=True)
    z.clone(f"{ASIDE1}@{NAMING.format(3)}", FS1)
    z.promote(FS1)
    rename, clone_ro, clone, promote = (decide(wire(a), POLICY) for a in host.argvs)
    # the rename and the promote change FS1: the interlock is read first; the rename
    # moves what lies below, which must all be the service's
    assert rename == RunZfs(("rename", FS1, ASIDE1), must_exist=FS1, changes=(FS1,),
                            moves=FS1)
    assert clone_ro == RunZfs(("clone", "-o", "readonly=on", f"{ASIDE1}@{NAMING.format(3)}",
                               FS1))
    assert isinstance(clone, RunZfs)
    assert promote == RunZfs(("promote", FS1), must_exist=FS1, changes=(FS1,))
    assert isinstance(rename, RunZfs) and isinstance(promote, RunZfs)
    roles = {FS1: "-"}
    assert agent.judge(rename, roles, POLICY) is None
    assert agent.inspect_args(rename) == ["list", "-H", "-o", "name,zfsrepl:role", "-r", "-t",
                                          "filesystem,volume", FS1]
    below = agent.judge(rename, {**roles, f"{FS1}/other": "-"}, POLICY)
    assert isinstance(below, Refused) and "would move it too" in below.reason
    for run in (rename, promote):
        taken = agent.judge(run, {FS1: agent.ROLE_TAKEN_OVER}, POLICY)
        assert isinstance(taken, Refused) and "taken over" in taken.reason


def test_the_aside_name_is_the_repairs() -> None:
    from datetime import datetime, timezone

    from zfsrepl import repair

    name = repair.aside_name(FS1, datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert name == ASIDE1
    assert agent.ASIDE_SUFFIX_RE.fullmatch(name[len(FS1):])


def test_hello() -> None:
    assert isinstance(decide("hello", POLICY), Hello)
    assert isinstance(decide("'hello'", POLICY), Hello)


REFUSED = {
    "other dataset get": ["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
                          "guid,createtxg,creation,userrefs", FS1, "zfsrepl_dst/other"],
    "other dataset list": ["zfs", "list", "-H", "-o", "name", "zfsrepl_dst"],
    "list recursive": ["zfs", "list", "-H", "-r", "-o", "name", FS1],
    "other dataset receive": ["zfs", "receive", "-u", "zfsrepl_dst/other"],
    "receive into parent": ["zfs", "receive", "-u", "-F", "zfsrepl_dst/svc"],
    "receive -d": ["zfs", "receive", "-u", "-d", FS1],
    "receive -o": ["zfs", "receive", "-u", "-o", "mountpoint=/", FS1],
    "receive no -u": ["zfs", "receive", "-F", FS1],
    "recv alias": ["zfs", "recv", "-u", FS1],
    "other service snapshot": ["zfs", "destroy", f"{FS1}@{OTHER_NAMING.format(3)}"],
    "foreign snapshot": ["zfs", "destroy", f"{FS1}@manual-backup"],
    "snapshot list": ["zfs", "destroy", f"{FS1}@{NAMING.format(3)},{NAMING.format(4)}"],
    "snapshot range": ["zfs", "destroy", f"{FS1}@{NAMING.format(3)}%{NAMING.format(9)}"],
    "destroy filesystem": ["zfs", "destroy", FS1],
    "destroy -r": ["zfs", "destroy", "-r", f"{FS1}@{NAMING.format(3)}"],
    "destroy other fs": ["zfs", "destroy", f"zfsrepl_dst/other@{NAMING.format(3)}"],
    "rollback -r": ["zfs", "rollback", "-r", f"{FS1}@{NAMING.format(3)}"],
    "rollback foreign": ["zfs", "rollback", f"{FS1}@before-upgrade"],
    "get other props": ["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
                        "all", FS1],
    "get deeper": ["zfs", "get", "-Hp", "-r", "-o", "name,property,value", "guid", FS1],
    "send": ["zfs", "send", f"{FS1}@{NAMING.format(3)}"],
    "set": ["zfs", "set", "mountpoint=/etc", FS1],
    "create": ["zfs", "create", f"{FS1}/x"],
    "rename": ["zfs", "rename", FS1, "zfsrepl_dst/x"],
    "rename aside -r": ["zfs", "rename", "-r", FS1, ASIDE1],
    "rename aside -p": ["zfs", "rename", "-p", FS1, ASIDE1],
    "rename other fs aside": ["zfs", "rename", "zfsrepl_dst/other",
                              "zfsrepl_dst/other.diverged-20260102-030405"],
    "rename as another's aside": ["zfs", "rename", FS2, ASIDE1],
    "rename aside of a stamp not a date": ["zfs", "rename", FS1, f"{FS1}.diverged-now"],
    "rename aside below": ["zfs", "rename", FS1, f"{FS1}/.diverged-20260102-030405"],
    "rename back": ["zfs", "rename", ASIDE1, FS1],
    "rename a snapshot": ["zfs", "rename", f"{FS1}@{NAMING.format(3)}", f"{FS1}@x"],
    "clone into other fs": ["zfs", "clone", f"{ASIDE1}@{NAMING.format(3)}",
                            "zfsrepl_dst/other"],
    "clone a foreign snapshot": ["zfs", "clone", f"{ASIDE1}@manual", FS1],
    "clone another service's snapshot": ["zfs", "clone", f"{ASIDE1}@{OTHER_NAMING.format(3)}",
                                         FS1],
    "clone from another fs": ["zfs", "clone", f"{FS2}@{NAMING.format(3)}", FS1],
    "clone another's aside": ["zfs", "clone",
                              f"{FS2}.diverged-20260102-030405@{NAMING.format(3)}", FS1],
    "clone -o other": ["zfs", "clone", "-o", "mountpoint=/etc", f"{ASIDE1}@{NAMING.format(3)}",
                       FS1],
    "clone -p": ["zfs", "clone", "-p", f"{ASIDE1}@{NAMING.format(3)}", FS1],
    "clone the filesystem": ["zfs", "clone", ASIDE1, FS1],
    "promote other fs": ["zfs", "promote", "zfsrepl_dst/other"],
    "promote the aside": ["zfs", "promote", ASIDE1],
    "promote two": ["zfs", "promote", FS1, FS2],
    "allow": ["zfs", "allow", "-u", "dst", "destroy", FS1],
    "snapshot": ["zfs", "snapshot", f"{FS1}@{NAMING.format(99)}"],
    "receive -o other": ["zfs", "receive", "-u", "-o", "readonly=off", FS1],
    "receive -o incremental": ["zfs", "receive", "-u", "-F", "-o", "readonly=on", FS1],
    "receive -s twice": ["zfs", "receive", "-u", "-s", "-s", FS1],
    "receive -x": ["zfs", "receive", "-u", "-x", "mountpoint", FS1],
    "receive -A other": ["zfs", "receive", "-A", "zfsrepl_dst/other"],
    "receive -A snapshot": ["zfs", "receive", "-A", f"{FS1}@{NAMING.format(3)}"],
    "hold other tag": ["zfs", "hold", "keep-me", f"{FS1}@{NAMING.format(3)}"],
    "hold other service tag": ["zfs", "hold", "zfsrepl-svc2", f"{FS1}@{NAMING.format(3)}"],
    "hold -r": ["zfs", "hold", "-r", "zfsrepl-svc", f"{FS1}@{NAMING.format(3)}"],
    "release foreign snapshot": ["zfs", "release", "zfsrepl-svc", f"{FS1}@manual"],
    "release other tag": ["zfs", "release", "admin", f"{FS1}@{NAMING.format(3)}"],
    "release other fs": ["zfs", "release", "zfsrepl-svc",
                         f"zfsrepl_dst/other@{NAMING.format(3)}"],
    "hold batch with other tag": ["zfs", "hold", "keep-me", f"{FS1}@{NAMING.format(3)}",
                                  f"{FS2}@{NAMING.format(3)}"],
    "hold batch with foreign snapshot": ["zfs", "hold", "zfsrepl-svc",
                                         f"{FS1}@{NAMING.format(3)}", f"{FS2}@manual"],
    "hold batch with other service snapshot": ["zfs", "hold", "zfsrepl-svc",
                                               f"{FS1}@{NAMING.format(3)}",
                                               f"{FS2}@{OTHER_NAMING.format(3)}"],
    "hold batch with other fs": ["zfs", "hold", "zfsrepl-svc", f"{FS1}@{NAMING.format(3)}",
                                 f"zfsrepl_dst/other@{NAMING.format(3)}"],
    "hold batch with filesystem": ["zfs", "hold", "zfsrepl-svc", f"{FS1}@{NAMING.format(3)}",
                                   FS2],
    "hold batch then -r": ["zfs", "hold", "zfsrepl-svc", f"{FS1}@{NAMING.format(3)}", "-r"],
    "hold no snapshot": ["zfs", "hold", "zfsrepl-svc"],
    "release batch with foreign snapshot": ["zfs", "release", "zfsrepl-svc",
                                            f"{FS1}@{NAMING.format(3)}", f"{FS1}@manual"],
    "release batch with other fs": ["zfs", "release", "zfsrepl-svc",
                                    f"zfsrepl_dst/svc@{NAMING.format(3)}",
                                    f"{FS2}@{NAMING.format(3)}"],
    "release batch with empty snapshot": ["zfs", "release", "zfsrepl-svc",
                                          f"{FS1}@{NAMING.format(3)}", f"{FS2}@"],
    "release batch with parent": ["zfs", "release", "zfsrepl-svc",
                                  f"{FS1}@{NAMING.format(3)}", "zfsrepl_dst/svc"],
    "holds other fs": ["zfs", "holds", "-H", f"zfsrepl_dst/other@{NAMING.format(3)}"],
    "holds -r": ["zfs", "holds", "-r", f"{FS1}@{NAMING.format(3)}"],
    "holds filesystem": ["zfs", "holds", "-H", FS1],
    "get keystatus": ["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
                      "guid,keystatus", FS1],
    "bookmark": ["zfs", "bookmark", f"{FS1}@{NAMING.format(3)}", f"{FS1}#x"],
    "other program": ["rm", "-rf", "/"],
    "shell": ["sh", "-c", "zfs list"],
    "sudo other": ["sudo", "-n", "/bin/sh"],
    "sudo without -n": ["sudo", "/usr/sbin/zfs", "list", "-H", "-o", "name", FS1],
    "zfsrepl itself": ["zfsrepl", "setup-remote", "install-key"],
}


@pytest.mark.parametrize("argv", list(REFUSED.values()), ids=list(REFUSED))
def test_refused(argv: list[str]) -> None:
    decision = decide(wire(argv), POLICY)
    assert isinstance(decision, Refused), decision
    assert decision.reason


LIST_OWN = wire(["zfs", "list", "-H", "-o", "name", FS1])

SHELL_TRICKS = {
    "semicolon": f"{LIST_OWN}; zfs destroy -r zfsrepl_dst",
    "semicolon glued": f"{LIST_OWN};id",
    "and": f"{LIST_OWN} && zfs destroy -r zfsrepl_dst",
    "or": f"{LIST_OWN} || id",
    "pipe": f"{LIST_OWN} | sh",
    "substitution": "zfs list -H -o name $(id)",
    "substitution in name": f"zfs destroy '{FS1}'@$(echo {NAMING.format(3)})",
    "backticks": "zfs list -H -o name `id`",
    "redirect": f"{LIST_OWN} > /tmp/x",
    "background": f"{LIST_OWN} &",
    "variable": "zfs list -H -o name $HOME",
    "unbalanced quote": f"zfs list -H -o name '{FS1}",
    "unbalanced double quote": 'zfs list -H -o name "x',
    "trailing backslash": "zfs list -H -o name x\\",
    "glob": "zfs list -H -o name zfsrepl_dst/*",
    "comment": f"{LIST_OWN} # hi",
}


@pytest.mark.parametrize("command", list(SHELL_TRICKS.values()), ids=list(SHELL_TRICKS))
def test_shell_syntax_is_never_interpreted(command: str) -> None:
    assert isinstance(decide(command, POLICY), Refused)


@pytest.mark.parametrize("raw", [
    None, b"", b"   ", b"x" * (agent.MAX_COMMAND_BYTES + 1), b"zfs list \xff\xfe",
    LIST_OWN.encode() + b"\nzfs destroy -r zfsrepl_dst", LIST_OWN.encode() + b"\r",
    LIST_OWN.encode() + b"\x00", b"zfs\tlist -H -o name " + FS2.encode(),
])
def test_bad_bytes_are_refused(raw: bytes | None) -> None:
    text = agent.decode_command(raw)
    assert isinstance(text, Refused) or isinstance(decide(text, POLICY), Refused)


def test_a_long_but_valid_listing_is_accepted() -> None:
    many = [f"zfsrepl_dst/svc/f{i}" for i in range(100)]
    policy = Policy("svc", frozenset(many), NAMING, ("zfs",))
    command = wire(["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
                    "guid,createtxg,creation,userrefs", *many])
    assert isinstance(agent.decode_command(command.encode()), str)
    assert isinstance(decide(command, policy), RunZfs)


# ---------------------------------------------------------------------------- properties

NAMES = st.sampled_from([FS1, FS2, "zfsrepl_dst/svc", "zfsrepl_dst", "zfsrepl_dst/other",
                         f"{FS1}@{NAMING.format(2)}", f"{FS1}@{OTHER_NAMING.format(2)}",
                         f"{FS2}@x", "-r", "-F", "-u", "-d", "1", "-Hp", "-o", "-H", "name",
                         "name,property,value", "guid,createtxg", "all", "get", "list",
                         "receive", "destroy", "rollback", "send", "zfs", "sudo", "-n",
                         "hold", "release", "holds", "zfsrepl-svc", "-A", "-s",
                         "/usr/sbin/zfs", ";", "&&", "$(id)", "`id`", "|", "'", '"', "\n",
                         "rename", "clone", "promote", ASIDE1, f"{ASIDE1}@{NAMING.format(2)}",
                         f"{ASIDE1}@x", "readonly=on"])


@settings(max_examples=2000, deadline=None)
@given(st.lists(NAMES, max_size=12) | st.lists(st.text(max_size=20), max_size=6))
def test_whatever_is_asked_only_own_datasets_are_touched(words: list[str]) -> None:
    command = " ".join(words)
    decision = decide(command, POLICY)
    if not isinstance(decision, RunZfs):
        return
    if not decision.args:
        return  # zfs alone: its usage text
    sub, *rest = decision.args
    assert sub in ("get", "list", "receive", "destroy", "rollback", "hold", "release", "holds",
                   "rename", "clone", "promote")
    names = [a for a in rest if not a.startswith("-") and "/" in a]
    assert names, decision
    if sub in ("rename", "clone"):
        # a filesystem of the service and its set-aside name (clone: a snapshot of it,
        # made by the service)
        aside, fs = names if sub == "clone" else reversed(names)
        assert fs in POLICY.filesystems
        aside, _, snap = aside.partition("@")
        assert aside.startswith(fs + ".diverged-")
        assert sub == "rename" or NAMING.is_ours(snap)
        return
    for name in names:
        fs, _, snap = name.partition("@")
        if sub == "list":
            assert fs in POLICY.filesystems | POLICY.parents
        else:
            assert fs in POLICY.filesystems
        if sub in ("destroy", "rollback", "hold", "release"):
            assert NAMING.is_ours(snap)
        if sub in ("hold", "release"):
            assert rest[0] == POLICY.hold_tag


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    text = agent.decode_command(raw)
    if isinstance(text, str):
        decide(text, POLICY)


# ---------------------------------------------------------------------------- serving


def test_refusal_says_why_logs_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "execvp", lambda *a: pytest.fail("exec on a refused request"))
    log = tmp_path / "agent.log"
    code = agent.serve(b"zfs destroy -r zfsrepl_dst", POLICY, agent.AgentLog("svc", str(log)))
    assert code == agent.EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.startswith("zfsrepl agent: refused: ") and err.count("\n") == 1
    assert "WARNING agent[svc] refused:" in log.read_text()


def test_accepted_request_execs_the_agents_zfs(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []

    def fake_exec(file: str, argv: list[str]) -> None:
        ran.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvp", fake_exec)
    # the interlock's listing, without asking this machine's ZFS: FS1 is there, not taken over
    monkeypatch.setattr(agent, "inspect", lambda zfs_argv, args: {FS1: "-"})
    with pytest.raises(SystemExit):
        agent.serve(f"zfs destroy '{FS1}@{NAMING.format(4)}'".encode(), POLICY,
                    agent.AgentLog("svc", str(tmp_path / "log")))
    assert ran == [[*SUDO_ZFS, "destroy", f"{FS1}@{NAMING.format(4)}"]]
    assert "INFO agent[svc] running: sudo -n /usr/sbin/zfs destroy" in \
        (tmp_path / "log").read_text()


def test_incremental_receive_into_a_missing_filesystem_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "inspect", lambda zfs_argv, args: {})
    monkeypatch.setattr(agent, "run_pipeline", lambda *a: pytest.fail("received"))
    code = agent.serve(wire(["zfs", "receive", "-u", "-F", FS1]).encode(), POLICY,
                       agent.AgentLog("svc", None))
    assert code == agent.EXIT_REFUSED


def test_a_broken_forced_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        agent.main(["--service", "x"])
    assert exc.value.code == agent.EXIT_REFUSED
    assert capsys.readouterr().err.count("\n") == 1


OPENZFS_USAGE = """usage: zfs command args ...
\tsend [-DLPbcehnpsvw] [-i|-I snapshot] [-R [-X dataset[,dataset]...]] <snapshot>
\tsend [-DnvPLecw] [-i snapshot|bookmark] <filesystem|volume|snapshot>
\tsend [-PnvV] -t <receive_resume_token>
\treceive [-vMnsFhu] [-o <property>=<value>] ... <filesystem|volume|snapshot>
\tlist [-Hp] [-r|-d max] [-o property[,...]] [-s property]...
\tallow <filesystem|volume>
\tbookmark <snapshot|bookmark> <newbookmark>
\tholds [-rHp] <snapshot> ...
"""
FUSE_USAGE = """usage: zfs command args ...
\tsend [-vRDp] [-[iI] snapshot] <snapshot>
\treceive [-vnFu] <filesystem|volume|snapshot>
\tlist [-rH][-d max] [-o property[,...]] [-t type[,...]] [-s property] ...
\tallow <filesystem|volume>
\tholds [-r] <snapshot> ...
"""


def test_capabilities() -> None:
    caps = agent.capabilities_from_usage(OPENZFS_USAGE, "usage:\n\tallow <filesystem>")
    assert caps["allow"] and caps["bookmarks"] and caps["list_p"] and caps["raw_send"]
    fuse = agent.capabilities_from_usage(FUSE_USAGE,
                                         "internal error: /usr/lib/zfs/pyzfs.py not found")
    assert not any(fuse.values())


def test_the_agent_imports_only_the_standard_library() -> None:
    """`zfsrepl agent` through the CLI entry point: no TOML parser, nothing third-party."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from zfsrepl.cli import main\n"
        "rc = main(['agent', '--service', 's', '--filesystem', 'p/a', '--source-user', 'u',"
        " '--destination-user', 'v', '--destination-host', 'h'])\n"
        "names = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "bad = sorted(n for n in names if n not in sys.stdlib_module_names"
        " and n not in ('zfsrepl', '__main__'))\n"
        "toml = sorted(n for n in names if 'toml' in n)\n"
        "print(rc, bad, toml)\n"
    )
    env = {**os.environ, "SSH_ORIGINAL_COMMAND": "zfs frobnicate"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip() == f"{agent.EXIT_REFUSED} [] []"


PY39 = Path("/root/.pyenv/versions/3.9.18/bin/python")


@pytest.mark.skipif(not PY39.exists(), reason="no Python 3.9 here")
def test_the_agent_runs_on_python_3_9() -> None:
    src = Path(agent.__file__).parents[1]
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(src),
           "SSH_ORIGINAL_COMMAND": wire(["zfs", "destroy", FS1])}
    out = subprocess.run([str(PY39), "-m", "zfsrepl.agent", "--service", "svc",
                          "--filesystem", FS1, "--source-user", "src",
                          "--destination-user", "dst", "--destination-host", "h"],
                         capture_output=True, text=True, env=env, check=False)
    assert out.returncode == agent.EXIT_REFUSED, out.stderr
    assert "refused: destroy takes a snapshot" in out.stderr
