"""The zfs wrapper behind sudo: every form zfsrepl runs passes, nothing else does."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from zfsrepl import (
    agent,
    cluster_state,
    config,
    diagnosis,
    failover,
    streamcheck,
    zfs,
    zfserrors,
    zfswrap,
)
from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.errors import UsageError
from zfsrepl.host import Result
from zfsrepl.naming import SnapshotNaming
from zfsrepl.plan import Send
from zfsrepl.setup import apply, rootscript
from zfsrepl.snapshots import Snapshot
from zfsrepl.zfswrap import Refused, Rule, Run, decide

from .test_agent import FS1, FS2, NAMING, cycle_commands
from .test_capabilities import OPENZFS

SRC1, SRC2 = "tank/src/fs 1", "tank/src/fs2"
SERVICE = "svc"
SOURCE = Rule(SERVICE, "source", frozenset({SRC1, SRC2}), NAMING)
DESTINATION = Rule(SERVICE, "destination", frozenset({FS1, FS2}), NAMING)
# another service of the same user, elsewhere
OTHER = Rule("other", "destination", frozenset({"zfsrepl_dst/other/fs"}),
             SnapshotNaming("src", "dst", "elsewhere"))
PREFIX = ["sudo", "-n", zfswrap.WRAPPER_PATH]
SVC = Service(name=SERVICE,
              source=Endpoint("srchost", "src", zfs_command=f"sudo -n {zfswrap.WRAPPER_PATH}"),
              destination=Endpoint("198.51.100.12", "dst",
                                   zfs_command=f"sudo -n {zfswrap.WRAPPER_PATH}"),
              filesystems=(FilesystemPair(SRC1, FS1), FilesystemPair(SRC2, FS2)))


class ZfsHost:
    """Records what zfsrepl runs and answers as a ZFS where `present` exist."""

    label = "u@test"

    def __init__(self, present: tuple[str, ...]) -> None:
        self.present = present
        self.argvs: list[list[str]] = []

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        self.argvs.append(list(argv))
        args = argv[len(PREFIX):]
        if args[:2] == ["get", "-Hp"] and "-r" in args:
            return Result(argv, 0, "".join(f"{fs}\tguid\t1\n" for fs in self.present), "")
        if args[:2] == ["get", "-Hp"]:
            return Result(argv, 0, "mounted\tno\nmountpoint\t/x\nwritten\t0\n", "")
        return Result(argv, 0, "", "")

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def close(self) -> None:
        pass

    def forms(self) -> list[list[str]]:
        assert all(a[:len(PREFIX)] == PREFIX for a in self.argvs), self.argvs
        return [a[len(PREFIX):] for a in self.argvs]


def source_forms() -> list[list[str]]:
    """Every zfs argv the source side runs: zfs.py's, the cluster's mark, doctor's look."""
    host = ZfsHost((SRC1, SRC2))
    z = zfs.Zfs(host, PREFIX)
    z.capabilities()
    z.states([SRC1, SRC2], (zfs.ENCRYPTION,))
    z.changed([SRC1, SRC2], (zfs.ENCRYPTION,))  # the listing cache's look
    z.existing([SRC1])
    z.snapshot(SRC1, NAMING.format(5))
    z.snapshot_all([SRC1, SRC2], NAMING.format(6))
    z.destroy_snapshot(SRC1, NAMING.format(2))
    z.hold("zfsrepl-svc", [f"{SRC1}@{NAMING.format(6)}", f"{SRC2}@{NAMING.format(6)}"])
    z.release("zfsrepl-svc", [f"{SRC1}@{NAMING.format(5)}"])
    z.holds([Snapshot(SRC1, NAMING.format(5), 1, 5, userrefs=1)])
    z.bookmark(SRC1, NAMING.format(6))
    z.destroy_bookmark(SRC1, NAMING.format(5))
    z.get_properties(SRC1, ["written"])
    z.written([SRC1, SRC2])  # skip_unchanged's look
    for send, kw in ((Send(base=None, target=NAMING.format(6)), {}),
                     (Send(base=NAMING.format(5), target=NAMING.format(6)), {}),
                     (Send(base=NAMING.format(5), target=NAMING.format(6),
                           intermediates=True), {"compressed": True}),
                     (Send(base=NAMING.format(5), target=NAMING.format(6), bookmark=True),
                      {"raw": True})):
        host.argvs.append(z.send_argv(SRC1, send, **kw))
        z.estimate(SRC1, send, **kw)
    cluster_state.mark(SVC, 1700000000.0, "upgrade of node 2", z)
    cluster_state.clear(SVC, zfs.Zfs(ZfsHost(()), PREFIX))  # nothing set: no inherit
    host.argvs.append(z.argv("inherit", cluster_state.property_name(SERVICE), SRC1))
    return host.forms()


def destination_forms() -> list[list[str]]:
    """Every zfs argv the destination runs: the cycle's (through the agent, which adds
    its own looks and exclusions) and failover's, lockoutkey's, the end of a takeover."""
    forms = [a[len(PREFIX):] for a in cycle_commands(PREFIX)]
    for run in (agent.RunZfs(("receive", "-u", "-F", FS1), must_exist=FS1, changes=(FS1,),
                             forced=FS1),
                agent.RunZfs(("destroy", f"{FS2}@{NAMING.format(1)}"), changes=(FS2,))):
        forms.append(agent.inspect_args(run) or [])
    forms += [list(agent.with_exclusions(("receive", "-u", "-F", "-s", FS1))),
              list(agent.with_exclusions(("receive", "-u", "-o", "readonly=on", FS2))),
              ["allow"]]
    host = ZfsHost((FS1, FS2))
    z = zfs.Zfs(host, PREFIX)
    svc = config.parse_service({
        "name": SERVICE, "source": {"host": "srchost", "user": "src"},
        "destination": {"host": "198.51.100.12", "user": "dst"},
        "filesystem": [{"source": SRC1, "destination": FS1},
                       {"source": SRC2, "destination": FS2}]})
    failover.set_interlock(svc, z)
    failover.failover(svc, z, {})
    failover.end_failover(svc, z)
    z.get_properties(FS1, ["written"])
    return forms + host.forms()


def test_every_form_zfsrepl_runs_on_the_source_passes() -> None:
    forms = source_forms()
    assert {f[0] if f else "" for f in forms} >= {
        "", "get", "list", "snapshot", "destroy", "hold", "release", "holds", "bookmark",
        "send", "set", "inherit"}
    for args in forms:
        decision = decide(args, [SOURCE, OTHER])
        assert isinstance(decision, Run), (args, decision)
        assert decision.args == tuple(args)


def test_every_form_zfsrepl_runs_on_the_destination_passes() -> None:
    forms = destination_forms()
    assert {f[0] if f else "" for f in forms} >= {
        "", "allow", "get", "list", "receive", "destroy", "rollback", "hold", "release",
        "holds", "set", "mount", "unmount"}
    for args in forms:
        decision = decide(args, [OTHER, DESTINATION])
        assert isinstance(decision, Run), (args, decision)
        # the agent's exclusions are taken out here and added back where zfs has -x
        expected = zfswrap._without_exclusions(args) if args[:1] == ["receive"] else args
        assert decision.args == tuple(expected)


def test_a_receive_is_checked_as_the_agent_checks_it() -> None:
    full = decide(["receive", "-u", FS1], [DESTINATION])
    incremental = decide(["receive", "-u", "-F", FS1], [DESTINATION])
    assert isinstance(full, Run) and full.stream and full.check is None
    assert isinstance(incremental, Run) and incremental.stream
    assert incremental.check is not None and incremental.check.forced == FS1
    # the reach of -F: a dataset below that is not the service's stops it
    roles = {FS1: "-", f"{FS1}/someone": "-"}
    assert isinstance(agent.judge(incremental.check, roles, DESTINATION.policy()),
                      agent.Refused)
    # the interlock is the other host's business: the local user ends takeovers
    assert agent.judge(incremental.check, {FS1: "source"}, DESTINATION.policy()) is None


def test_a_resume_token_is_refused_and_the_cycle_starts_the_transfer_again() -> None:
    decision = decide(["send", "-t", "1-abc-def"], [SOURCE])
    assert isinstance(decision, Refused)
    assert zfserrors.says(decision.reason, zfserrors.NotResumable)


def test_the_maintenance_property_is_the_clusters() -> None:
    for name in ("svc", "Web-1", "a.B_c"):
        assert Rule(name, "source", frozenset({SRC1}), NAMING).maintenance_property == \
            cluster_state.property_name(name)


def test_the_role_values_are_the_failovers() -> None:
    assert set(zfswrap.ROLES) == {diagnosis.ROLE_TAKEN_OVER, diagnosis.ROLE_REPLICA}


OWN_SNAP = f"{FS1}@{NAMING.format(3)}"
LOOK = ["get", "-Hp", "-o", "name,property,value"]
CHANGED = "snapshots_changed,zfsrepl:role"
SRC_SNAP = f"{SRC1}@{NAMING.format(3)}"


@pytest.mark.parametrize(("args", "rules", "says"), [
    # properties that reach root
    (["set", "mountpoint=/etc", FS1], [DESTINATION], "mountpoint=/etc"),
    (["set", "mountpoint=/etc", SRC1], [SOURCE], "mountpoint=/etc"),
    (["set", "sharenfs=rw=@0.0.0.0/0", FS1], [DESTINATION], "sharenfs"),
    (["set", "setuid=on", FS1], [DESTINATION], "setuid"),
    (["set", "readonly=off", "mountpoint=/etc", FS1], [DESTINATION], "zfs set"),
    (["set", "zfsrepl:role=source", SRC1], [SOURCE], "zfsrepl:role"),
    (["set", "readonly=maybe", FS1], [DESTINATION], "readonly=maybe"),
    (["inherit", "mountpoint", SRC1], [SOURCE], "inherit"),
    (["inherit", "-r", "zfsrepl:maintenance:svc", SRC1], [SOURCE], "inherit"),
    (["receive", "-u", "-o", "mountpoint=/etc", FS1], [DESTINATION], "receive"),
    (["receive", "-u", "-F", "-o", "mountpoint=/etc", FS1], [DESTINATION], "receive"),
    (["receive", "-x", "mountpoint", "-u", "-o", "setuid=on", FS1], [DESTINATION],
     "receive"),
    (["receive", "-x", "readonly", "-u", FS1], [DESTINATION], "receive"),
    (["receive", "-u", "-d", FS1], [DESTINATION], "receive"),
    (["receive", "-u", SRC1], [SOURCE], "source only sends"),
    (["mount", "-o", "remount,suid", FS1], [DESTINATION], "no options"),
    (["create", "-o", "mountpoint=/etc", f"{FS1}/x"], [DESTINATION], "create"),
    (["clone", OWN_SNAP, "zfsrepl_dst/x"], [DESTINATION], "is not a destination filesystem"),
    (["rename", FS1, "zfsrepl_dst/x"], [DESTINATION], "rename"),
    (["allow", "-u", "dst", "mountpoint", FS1], [DESTINATION], "allow"),
    (["upgrade", "-a"], [DESTINATION], "upgrade"),
    # datasets outside the service's
    (["destroy", "zfsrepl_dst/other/fs@" + NAMING.format(1)], [DESTINATION], "other/fs"),
    (["set", "readonly=off", "zfsrepl_dst/svc"], [DESTINATION], "zfsrepl_dst/svc"),
    (["set", "readonly=off", "tank/etc"], [DESTINATION, OTHER], "tank/etc"),
    (["snapshot", f"rpool/ROOT@{NAMING.format(1)}"], [SOURCE], "rpool/ROOT"),
    (["send", "rpool/ROOT@x"], [SOURCE], "rpool/ROOT"),
    (["send", "-i", "rpool/ROOT@a", f"{SRC1}@b"], [SOURCE], "rpool/ROOT"),
    (["get", "-Hp", "-o", "property,value", "all", "rpool/ROOT"], [SOURCE], "rpool/ROOT"),
    (["list", "-H", "-o", "name,zfsrepl:role", "-r", "-t", "filesystem,volume", "rpool"],
     [DESTINATION], "rpool"),
    (["mount", "zfsrepl_dst/other/fs"], [DESTINATION], "other/fs"),
    (["send", f"{FS1}@{NAMING.format(1)}"], [DESTINATION], "only on the source"),
    # names: `..`, shell characters, someone else's snapshots
    (["destroy", f"{FS1}/../../etc@{NAMING.format(1)}"], [DESTINATION], ".."),
    (["mount", f"{FS1};reboot"], [DESTINATION], "reboot"),
    (["mount", "$(id)"], [DESTINATION], "$(id)"),
    (["receive", "-u", FS1, "|", "sh"], [DESTINATION], "pipe"),
    (["mount", f"{FS1}\n"], [DESTINATION], "control"),
    (["destroy", f"{FS1}@important"], [DESTINATION], "important"),
    (["snapshot", f"{SRC1}@mine"], [SOURCE], "mine"),
    (["destroy", f"{SRC1}#mine"], [SOURCE], "mine"),
    (["bookmark", SRC_SNAP, f"{SRC2}#{NAMING.format(3)}"], [SOURCE], "bookmark"),
    # options zfsrepl never gives
    (["destroy", "-r", OWN_SNAP], [DESTINATION], "destroy"),
    (["destroy", "-R", FS1], [DESTINATION], "destroy"),
    (["destroy", FS1], [DESTINATION], "FS@SNAP"),
    (["rollback", "-r", OWN_SNAP], [DESTINATION], "rollback"),
    (["snapshot", "-r", SRC_SNAP], [SOURCE], "-r"),
    (["hold", "-r", "zfsrepl-svc", OWN_SNAP], [DESTINATION], "hold"),
    (["hold", "other-tag", OWN_SNAP], [DESTINATION], "hold"),
    (["send", "-R", SRC_SNAP], [SOURCE], "send"),
    (["send", "-p", SRC_SNAP], [SOURCE], "send"),
    (["send", "-i", f"{SRC2}@a", SRC_SNAP], [SOURCE], "same filesystem"),
    (["get", "-Hp", "-o", "property,value", "all;id", SRC1], [SOURCE], "properties"),
    (["list", "-H", "-o", "name", "-r", "tank"], [SOURCE], "'-r'"),
    # the listing cache's look: the service's own filesystems, their own properties
    ([*LOOK, CHANGED, "rpool/ROOT"], [SOURCE], "rpool/ROOT"),
    ([*LOOK, CHANGED, SRC_SNAP], [SOURCE], "is not a"),
    ([*LOOK, CHANGED + ",guid", SRC1], [SOURCE], CHANGED),
    ([*LOOK, CHANGED, "zfsrepl_dst/other/fs"], [DESTINATION], "other/fs"),
    (["get", "-Hp", "-r", "-o", "name,property,value", "snapshots_changed,zfsrepl:role",
      FS1], [DESTINATION], "get"),
    (["receive", "-A", "-u", FS1], [DESTINATION], "receive"),
    # a user without services, a request for nobody's dataset
    (["mount", FS1], [], "none"),
])
def test_what_zfsrepl_never_runs_is_refused(args: list[str], rules: list[Rule],
                                            says: str) -> None:
    decision = decide(args, rules)
    assert isinstance(decision, Refused), decision
    assert says in decision.reason, decision.reason
    assert "\n" not in decision.reason


# ---------------------------------------------------------------------------- the rules


def _write_rules(root: Path, user: str, rules: list[Rule]) -> Path:
    folder = root / user
    folder.mkdir(parents=True, mode=0o755)
    root.chmod(0o755)
    for rule in rules:
        path = folder / f"{rule.service}.{rule.side}.json"
        path.write_text(rule.to_json())
        path.chmod(0o644)
    return folder


def test_rules_round_trip_and_are_read_from_root_only_files(tmp_path: Path) -> None:
    root = tmp_path / "rules"
    folder = _write_rules(root, "dst", [DESTINATION, OTHER])
    loaded = zfswrap.load_rules("dst", str(root), os.getuid())
    assert isinstance(loaded, list)
    assert sorted(r.service for r in loaded) == ["other", "svc"]
    assert zfswrap.load_rules("dst", str(root), os.getuid() + 1) == \
        f"{root} must be owned by root and writable by nobody else"
    assert "gives nobody zfs rights" in str(zfswrap.load_rules("nobody", str(root),
                                                               os.getuid()))
    (folder / "svc.destination.json").chmod(0o666)
    assert "writable by nobody else" in str(zfswrap.load_rules("dst", str(root),
                                                               os.getuid()))
    (folder / "svc.destination.json").unlink()
    (folder / "svc.destination.json").symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(DESTINATION.to_json())
    assert "cannot read" in str(zfswrap.load_rules("dst", str(root), os.getuid()))


@pytest.mark.parametrize(("change", "says"), [
    ({"filesystems": ["tank/a/../b"]}, "component '..'"),
    ({"filesystems": ["tank"]}, "POOL/NAME"),
    ({"filesystems": ["tank/a;b"]}, "component 'a;b'"),
    ({"filesystems": []}, "list of filesystem names"),
    ({"side": "both"}, "side must be"),
    ({"extra": 1}, "exactly"),
])
def test_a_bad_rule_is_refused(change: dict[str, object], says: str) -> None:
    data = {**json.loads(DESTINATION.to_json()), **change}
    found = zfswrap.parse_rule(json.dumps(data), "r.json")
    assert isinstance(found, str) and says in found


# ---------------------------------------------------------------------------- running

FAKE_ZFS = r"""#!/bin/sh
# a zfs that prints its usage, or records its arguments, environment and input
if [ $# = 0 ]; then cat "$(dirname "$0")/usage"; exit 2; fi
printf '%s\n' "$@" > "$(dirname "$0")/args"
env > "$(dirname "$0")/env"
if [ "$1" = receive ]; then cat > "$(dirname "$0")/stream"; fi
exit 0
"""


def _stream(kind: int, payload: int = 0) -> bytes:
    header = struct.pack("<IIQQ", streamcheck.BEGIN_RECORD_TYPE, payload,
                         streamcheck.BACKUP_MAGIC, kind)
    return header + b"\0" * 1000


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the wrapper runs as root")


def _wrapper(tmp_path: Path, usage: str = OPENZFS,
             python: str = sys.executable) -> tuple[list[str], Path]:
    """The installed copy (only zfswrap.MODULES, isolated Python), a fake zfs, rules."""
    lib = tmp_path / "lib" / "zfsrepl"
    lib.mkdir(parents=True)
    here = Path(zfswrap.__file__).parent
    for name in zfswrap.MODULES:
        (lib / name).write_text((here / name).read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "usage").write_text(usage)
    fake = bin_dir / "zfs"
    fake.write_text(FAKE_ZFS)
    fake.chmod(0o755)
    _write_rules(tmp_path / "rules", "nobody", [DESTINATION])
    code = (f"import sys; sys.path.insert(0, {str(lib.parent)!r}); "
            "from zfsrepl import zfswrap; "
            f"sys.exit(zfswrap.main(sys.argv[1:], {str(fake)!r}, "
            f"{str(tmp_path / 'rules')!r}))")
    return [python, "-I", "-c", code], bin_dir


def _run(argv: list[str], args: list[str],
         stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {"SUDO_UID": "65534", "PATH": "/usr/bin:/bin", "ZFS_ABORT": "1",
           "PYTHONPATH": "/tmp/evil"}
    return subprocess.run([*argv, *args], input=stdin, capture_output=True, env=env,
                          timeout=60, check=False)


@needs_root
def test_refused_means_one_line_and_nothing_run(tmp_path: Path) -> None:
    argv, bin_dir = _wrapper(tmp_path)
    out = _run(argv, ["set", "mountpoint=/etc", FS1])
    assert out.returncode == zfswrap.EXIT_REFUSED
    lines = out.stderr.decode().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "mountpoint=/etc" in lines[0]
    assert not (bin_dir / "args").exists()


@needs_root
def test_an_allowed_form_runs_the_real_zfs_with_a_clean_environment(tmp_path: Path) -> None:
    argv, bin_dir = _wrapper(tmp_path)
    out = _run(argv, ["set", "readonly=off", FS1])
    assert out.returncode == 0, out.stderr
    assert (bin_dir / "args").read_text().splitlines() == ["set", "readonly=off", FS1]
    env = dict(line.split("=", 1) for line in (bin_dir / "env").read_text().splitlines())
    assert "ZFS_ABORT" not in env and "PYTHONPATH" not in env and "SUDO_UID" not in env
    assert env["PATH"] == zfswrap.ENVIRONMENT["PATH"]


PY39 = Path("/root/.pyenv/versions/3.9.18/bin/python")
PYTHONS = [sys.executable,
           pytest.param(str(PY39), id="python 3.9", marks=pytest.mark.skipif(
               not PY39.exists(), reason="no Python 3.9 here"))]


@needs_root
@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("usage", [OPENZFS, "usage: zfs command args ...\n"])
def test_a_receive_reads_the_stream_first_and_excludes_what_reaches_root(
        tmp_path: Path, usage: str, python: str) -> None:
    argv, bin_dir = _wrapper(tmp_path, usage, python)
    stream = _stream(streamcheck.SUBSTREAM)
    out = _run(argv, ["receive", "-u", FS1], stream)
    assert out.returncode == 0, out.stderr
    assert (bin_dir / "stream").read_bytes() == stream  # whole, first record included
    args = (bin_dir / "args").read_text().splitlines()
    if "-x <property>" in usage:
        assert args == list(agent.with_exclusions(("receive", "-u", FS1)))
    else:
        assert args == ["receive", "-u", FS1]


@needs_root
def test_a_stream_with_properties_is_refused_before_zfs_runs(tmp_path: Path) -> None:
    argv, bin_dir = _wrapper(tmp_path)
    out = _run(argv, ["receive", "-u", FS1], _stream(streamcheck.COMPOUNDSTREAM, payload=832))
    assert out.returncode == zfswrap.EXIT_REFUSED
    assert b"replication stream" in out.stderr
    assert not (bin_dir / "args").exists()


def test_without_sudo_nothing_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SUDO_UID", "0")
    monkeypatch.setattr(os, "geteuid", lambda: 65534)  # run by a user itself
    assert zfswrap.invoking_user() == ""
    fake = tmp_path / "zfs"
    assert zfswrap.main(["mount", FS1], str(fake), str(tmp_path)) == zfswrap.EXIT_REFUSED
    assert "through sudo" in capsys.readouterr().err
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert zfswrap.invoking_user() is None  # root through sudo: root's own rights
    monkeypatch.setenv("SUDO_UID", "65534")
    assert zfswrap.invoking_user() == "nobody"
    monkeypatch.setenv("SUDO_UID", "x")
    assert zfswrap.invoking_user() == ""


def test_the_launcher_runs_isolated_from_the_installed_copy() -> None:
    text = zfswrap.launcher("/usr/bin/python3", "/usr/sbin/zfs")
    assert text.startswith("#!/usr/bin/python3 -I\n")
    assert f"sys.path.insert(0, {zfswrap.LIB_DIR!r})" in text
    assert "'/usr/sbin/zfs'" in text
    compile(text, "launcher", "exec")


def test_the_wrapper_is_a_valid_zfs_command() -> None:
    # zfs_command holds it like any zfs path (the loader's safety rule is unchanged)
    assert config._ZFS_COMMAND_RE.fullmatch(f"sudo -n {zfswrap.WRAPPER_PATH}")
    assert shlex.split(SVC.source.zfs_command) == PREFIX


# ---------------------------------------------------------------------------- the root script

PLACES = apply.Places(Path("/etc/zfsrepl"), Path("/var/log/zfsrepl"), Path("/var/lib/zfsrepl"))


def test_the_root_script_writes_a_sudo_rule_for_the_wrapper_alone() -> None:
    svc = apply.normalized(SVC, PLACES.config_dir)
    src = rootscript.render(apply.root_step(svc, "source", PLACES))
    dst_step = apply.root_step(svc, "destination", PLACES)
    dst = rootscript.render(dst_step)
    for text, user in ((src, "src"), (dst, "dst")):
        assert f"'{user} ALL=(root) NOPASSWD: {zfswrap.WRAPPER_PATH}'" in text
        assert "NOPASSWD: /usr/sbin/zfs" not in text
        for name in zfswrap.MODULES:  # the wrapper's own copy, root's
            assert f"{zfswrap.LIB_DIR}/zfsrepl/{name}" in text
    # the rule: exactly the service's filesystems of that side
    rule = zfswrap.parse_rule(dst_step.sudo_rule or "", "rule")
    assert isinstance(rule, Rule)
    assert rule.filesystems == {FS1, FS2} and rule.side == "destination"
    assert rule.naming == svc.naming
    # received set-uid programs and devices do not count where root mounts a replica
    for parent in dst_step.datasets:
        assert f'"$zfs" set setuid=off {shlex.quote(parent)}' in dst
        assert f'"$zfs" set devices=off {shlex.quote(parent)}' in dst
    assert "setuid=off" not in src


def test_a_sudo_rule_for_zfs_itself_is_refused() -> None:
    svc = apply.normalized(SVC, PLACES.config_dir)
    bare = Endpoint("srchost", "src", zfs_command="sudo -n /usr/sbin/zfs")
    step = apply.root_step(dataclasses.replace(svc, source=bare), "source", PLACES)
    with pytest.raises(UsageError, match="root's power over every dataset"):
        rootscript.render(step)


def test_setup_waits_for_the_wrapper_of_its_own_version(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zfswrap, "LIB_DIR", str(tmp_path / "lib"))
    monkeypatch.setattr(zfswrap, "RULES_DIR", str(tmp_path / "rules"))
    step = apply.root_step(apply.normalized(SVC, PLACES.config_dir), "destination", PLACES)
    found = rootscript._wrapper_problems(step)
    assert len(found) == 2 and "rule" in found[0] and "zfs wrapper in" in found[1]
    lib = tmp_path / "lib" / "zfsrepl"
    lib.mkdir(parents=True)
    for name, text in rootscript.wrapper_modules().items():
        (lib / name).write_text(text)
    Path(step.rule_file).parent.mkdir(parents=True)
    Path(step.rule_file).write_text(step.sudo_rule or "")
    assert rootscript._wrapper_problems(step) == []
    (lib / "agent.py").write_text("# an older version\n")
    assert rootscript._wrapper_problems(step) == [
        f"the zfs wrapper in {lib} is missing or not this setup's version"]
