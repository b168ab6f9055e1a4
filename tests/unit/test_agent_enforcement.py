"""What the agent checks on the destination before it runs a request: the takeover
interlock, what a forced receive could reach, what a listing shows, the buffer a
stream may take, and the options of a receive. The decisions are pure; the few
places that run zfs are tested with stand-ins."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from zfsrepl import agent, diagnosis, lzc, streamcheck, zfs
from zfsrepl.agent import Pipeline, Policy, Refused, RunZfs, decide, inspect_args, judge
from zfsrepl.naming import SnapshotNaming

FS1 = "zfsrepl_dst/svc/fs 1"
FS2 = "zfsrepl_dst/svc/fs2"
NAMING = SnapshotNaming("src", "dst", "198.51.100.12")
POLICY = Policy(service="svc", filesystems=frozenset({FS1, FS2}), naming=NAMING,
                zfs_argv=("sudo", "-n", "/usr/sbin/zfs"))
SNAP1 = f"{FS1}@{NAMING.format(3)}"
SNAP2 = f"{FS2}@{NAMING.format(3)}"
TAG = "zfsrepl-svc"


def run(argv: list[str]) -> RunZfs:
    decision = decide(shlex.join(argv), POLICY)
    receive = decision.receive if isinstance(decision, Pipeline) else decision
    assert isinstance(receive, RunZfs), (argv, decision)
    return receive


def test_the_interlock_is_the_one_failover_sets() -> None:
    assert agent.ROLE_PROPERTY == zfs.ROLE_PROPERTY
    assert agent.ROLE_TAKEN_OVER == diagnosis.ROLE_TAKEN_OVER


# every request that changes a filesystem, its snapshots or their holds
CHANGING = {
    "destroy": (["zfs", "destroy", SNAP1], (FS1,)),
    "several destroys": (["zfs", "destroy", SNAP1, SNAP2], (FS1, FS2)),
    "rollback": (["zfs", "rollback", SNAP1], (FS1,)),
    "hold": (["zfs", "hold", TAG, SNAP1, SNAP2], (FS1, FS2)),
    "release": (["zfs", "release", TAG, SNAP2], (FS2,)),
    "full receive": (["zfs", "receive", "-u", FS1], (FS1,)),
    "incremental receive": (["zfs", "receive", "-u", "-F", "-s", FS1], (FS1,)),
    "discard a resumable receive": (["zfs", "receive", "-A", FS1], (FS1,)),
    "compressed receive": (["zstd", "-dc", "|", "zfs", "receive", "-u", "-F", FS2], (FS2,)),
}


@pytest.mark.parametrize("name", list(CHANGING))
def test_a_changing_request_reads_the_interlock_first(name: str) -> None:
    argv, changes = CHANGING[name]
    request = run(argv)
    assert request.changes == changes
    args = inspect_args(request)
    assert args is not None and args[:4] == ["list", "-H", "-o", "name,zfsrepl:role"]
    assert set(changes) <= set(args)


@pytest.mark.parametrize("name", list(CHANGING))
def test_a_taken_over_filesystem_is_not_changed(name: str) -> None:
    argv, changes = CHANGING[name]
    roles = {fs: "destination" for fs in POLICY.filesystems} | {changes[-1]: "source"}
    refused = judge(run(argv), roles, POLICY)
    assert isinstance(refused, Refused)
    assert f"{changes[-1]!r} has been taken over on this host" in refused.reason
    assert "zfsrepl failover --end svc" in refused.reason  # what ends it
    assert "zfsrepl runonce svc" in refused.reason  # failback
    # not taken over (never failed over, or ended): allowed
    assert judge(run(argv), {fs: "-" for fs in POLICY.filesystems}, POLICY) is None
    assert judge(run(argv), {fs: "destination" for fs in POLICY.filesystems}, POLICY) is None


@pytest.mark.parametrize("argv", [
    ["zfs", "list", "-H", "-o", "name", FS1],
    ["zfs", "holds", "-H", SNAP1],
    ["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
     ",".join(agent.LISTING_PROPERTIES), FS1],
    ["zfs"],
])
def test_reading_needs_no_look_and_stays_allowed_after_a_takeover(argv: list[str]) -> None:
    request = run(argv)
    assert inspect_args(request) is None and request.changes == ()


def test_a_forced_receive_looks_below_its_filesystem() -> None:
    request = run(["zfs", "receive", "-u", "-F", FS1])
    assert inspect_args(request) == ["list", "-H", "-o", "name,zfsrepl:role", "-r", "-t",
                                     "filesystem,volume", FS1]
    assert inspect_args(run(["zfs", "receive", "-u", FS1])) == [
        "list", "-H", "-o", "name,zfsrepl:role", FS1]


def test_a_forced_receive_is_refused_over_a_filesystem_it_does_not_own() -> None:
    request = run(["zfs", "receive", "-u", "-F", FS1])
    child = f"{FS1}/other service"
    refused = judge(request, {FS1: "-", child: "-"}, POLICY)
    assert isinstance(refused, Refused)
    assert f"{child!r} below it, not service svc's" in refused.reason
    assert "forced receive (-F) could destroy it" in refused.reason
    # a sibling that only begins with the same name is not below it
    assert judge(request, {FS1: "-", f"{FS1}x/y": "-"}, POLICY) is None
    assert judge(request, {FS1: "-"}, POLICY) is None


def test_an_incremental_receive_needs_the_filesystem() -> None:
    refused = judge(run(["zfs", "receive", "-u", "-F", FS1]), {}, POLICY)
    assert isinstance(refused, Refused) and "does not exist" in refused.reason
    assert judge(run(["zfs", "receive", "-u", FS1]), {}, POLICY) is None  # full: creates it


@pytest.mark.parametrize("request_text", ["hello", f"zfs list -H -o name {shlex.quote(FS1)}"])
def test_nested_destinations_are_refused_whatever_is_asked(request_text: str) -> None:
    nested = Policy("svc", frozenset({"p/a", "p/a/b"}), NAMING, ("zfs",))
    refused = decide(request_text.replace(FS1, "p/a"), nested)
    assert isinstance(refused, Refused)
    assert "'p/a/b' is inside 'p/a'" in refused.reason and "run setup again" in refused.reason
    beside = Policy("svc", frozenset({"p/a", "p/ab"}), NAMING, ("zfs",))
    assert not isinstance(decide("hello", beside), Refused)


def test_a_listing_shows_only_the_services_own_datasets() -> None:
    request = run(["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
                   ",".join(agent.LISTING_PROPERTIES), FS1])
    assert request.listing
    out = (f"{FS1}\tguid\t1\n{SNAP1}\tguid\t2\n{FS1}/other\tguid\t3\n"
           f"{FS1}/other@{NAMING.format(1)}\tguid\t4\n{FS1}x\tguid\t5\n").encode()
    assert agent.own_listing(out, POLICY.filesystems) == \
        f"{FS1}\tguid\t1\n{SNAP1}\tguid\t2\n".encode()


def test_run_listing_filters_what_zfs_prints(monkeypatch: pytest.MonkeyPatch,
                                             capsysbinary: pytest.CaptureFixture[bytes]
                                             ) -> None:
    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(argv, 0, f"{FS1}\tguid\t1\n{FS1}/x\tguid\t2\n"
                                           .encode(), b"")

    monkeypatch.setattr(agent.subprocess, "run", fake_run)
    request = run(["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
                   "guid", FS1])
    assert agent.run_listing(request, POLICY, agent.AgentLog("svc", None)) == 0
    assert capsysbinary.readouterr().out == f"{FS1}\tguid\t1\n".encode()


def test_a_buffer_above_the_agents_bound_is_refused() -> None:
    ok = decide(f"mbuffer -q -m 1G | zfs receive -u {shlex.quote(FS1)}", POLICY)
    assert isinstance(ok, Pipeline)
    refused = decide(f"mbuffer -q -m 2G | zfs receive -u {shlex.quote(FS1)}", POLICY)
    assert isinstance(refused, Refused)
    assert "from 1M to 1G" in refused.reason and "not '2G'" in refused.reason
    assert "set `buffer` in the definition within that" in refused.reason


OPENZFS_USAGE = ("usage: zfs command args ...\n"
                 "\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ...\n"
                 "\t    <filesystem|volume|snapshot>\n")
FUSE_USAGE = "usage: zfs command args ...\n\treceive [-vnFu] <filesystem|volume|snapshot>\n"


def test_receive_excludes_dangerous_properties_where_zfs_can() -> None:
    assert agent.excludes_properties(OPENZFS_USAGE)
    assert not agent.excludes_properties(FUSE_USAGE)  # zfs-fuse has no receive -x
    args = agent.with_exclusions(("receive", "-u", "-F", FS1))
    assert args[:1] == ("receive",) and args[-3:] == ("-u", "-F", FS1)
    excluded = {args[i + 1] for i, w in enumerate(args) if w == "-x"}
    assert {"mountpoint", "canmount", "sharenfs", "sharesmb", "setuid", "exec",
            "devices"} <= excluded


def test_exclusions_only_where_zfs_runs_as_root() -> None:
    # under zfs allow, ZFS refuses a received property the user has no right to set,
    # and -x would need that right itself
    assert agent.privileged(("sudo", "-n", "/usr/sbin/zfs"), 1000)
    assert agent.privileged(("/usr/bin/pfexec", "zfs"), 1000)
    assert agent.privileged(("zfs",), 0)
    assert not agent.privileged(("/usr/sbin/zfs",), 1000)


def test_every_check_the_agent_runs_has_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def hanging(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        seen.append(kw.get("timeout"))
        raise subprocess.TimeoutExpired(argv, kw.get("timeout") or 0)

    monkeypatch.setattr(agent.subprocess, "run", hanging)
    found = agent.inspect(POLICY.zfs_argv, ["list", "-H", "-o", "name,zfsrepl:role", FS1])
    assert isinstance(found, Refused) and "did not answer within" in found.reason
    assert agent.probe_exclusions(POLICY.zfs_argv) is False
    agent.probe(POLICY.zfs_argv)
    assert seen and all(isinstance(t, (int, float)) and t > 0 for t in seen)


def test_inspect_reads_roles_and_takes_a_missing_filesystem_as_an_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(out: str, err: str, code: int) -> None:
        monkeypatch.setattr(agent.subprocess, "run", lambda argv, **kw: (
            subprocess.CompletedProcess(argv, code, out.encode(), err.encode())))

    answer(f"{FS1}\tsource\n{FS1}/c\t-\n", "", 0)
    assert agent.inspect(("zfs",), ["list"]) == {FS1: "source", f"{FS1}/c": "-"}
    answer("", f"cannot open '{FS1}': dataset does not exist\n", 1)
    assert agent.inspect(("zfs",), ["list"]) == {}
    answer("", "sudo: a password is required\n", 1)
    refused = agent.inspect(("zfs",), ["list"])
    assert isinstance(refused, Refused) and "a password is required" in refused.reason


def test_serve_refuses_a_taken_over_filesystem_before_running_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(agent, "inspect", lambda zfs_argv, args: {FS1: "source"})
    monkeypatch.setattr(os, "execvp", lambda *a: pytest.fail("exec on a refused request"))
    log = tmp_path / "agent.log"
    code = agent.serve(shlex.join(["zfs", "destroy", SNAP1]).encode(), POLICY,
                       agent.AgentLog("svc", str(log)))
    assert code == agent.EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.startswith("zfsrepl agent: refused: ") and err.count("\n") == 1
    assert "taken over" in err and "WARNING agent[svc] refused:" in log.read_text()


# ---------------------------------------------------------------------------- a receive, run

# A stand-in zfs: its usage (with or without receive -x), the agent's look (the
# filesystem exists, not taken over), and a receive that keeps its arguments and stream.
FAKE_ZFS = r"""
import json, sys
out, usage = sys.argv[1], sys.argv[2]
args = sys.argv[3:]
if not args:
    sys.stderr.write(usage)
    sys.exit(2)
if args[0] == "list":
    print(args[-1] + "\t-")
    sys.exit(0)
data = sys.stdin.buffer.read()
with open(out, "wb") as f:
    f.write(data)
with open(out + ".args", "w") as f:
    json.dump(args, f)
"""
PY39 = Path("/root/.pyenv/versions/3.9.18/bin/python")
PYTHONS = [pytest.param(sys.executable, id="this python"),
           pytest.param(str(PY39), id="python 3.9", marks=pytest.mark.skipif(
               not PY39.exists(), reason="no Python 3.9 here"))]


def begin(kind: int, payload: int = 0) -> bytes:
    return struct.pack("<IIQQ", 0, payload, streamcheck.BACKUP_MAGIC, kind) + b"\0" * 288


def receive_through_agent(tmp_path: Path, python: str, stream: bytes, usage: str,
                          command: str | None = None, *, sudo: bool = False
                          ) -> subprocess.CompletedProcess[bytes]:
    fake = tmp_path / "fakezfs.py"
    fake.write_text(FAKE_ZFS)
    prefix = []
    if sudo:  # zfs run "as root" through a stand-in sudo that runs its arguments
        (tmp_path / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
        (tmp_path / "sudo").chmod(0o755)
        prefix = [str(tmp_path / "sudo")]
    zfs_command = shlex.join([*prefix, sys.executable, str(fake), str(tmp_path / "received"),
                              usage])
    env = {"PATH": os.environ.get("PATH", ""),
           "PYTHONPATH": str(Path(agent.__file__).parents[1]),
           "SSH_ORIGINAL_COMMAND": command or f"zfs receive -u -F {shlex.quote(FS1)}"}
    return subprocess.run([python, "-m", "zfsrepl.agent", "--service", "svc",
                           "--filesystem", FS1, "--source-user", "src",
                           "--destination-user", "dst", "--destination-host", "h",
                           "--zfs-command", zfs_command], input=stream, capture_output=True,
                          env=env, check=False, timeout=60)


@pytest.mark.parametrize("python", PYTHONS)
def test_the_stream_reaches_zfs_whole(tmp_path: Path, python: str) -> None:
    """The first record the agent read, then the rest (spliced: ctypes on 3.9)."""
    stream = begin(streamcheck.SUBSTREAM) + random.Random(2).randbytes(3 << 20)
    proc = receive_through_agent(tmp_path, python, stream, FUSE_USAGE)
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert (tmp_path / "received").read_bytes() == stream
    args = json.loads((tmp_path / "received.args").read_text())
    assert args == ["receive", "-u", "-F", FS1]  # zfs-fuse: no -x to give


@pytest.mark.parametrize("python", PYTHONS)
def test_an_intermediates_package_reaches_zfs_whole(tmp_path: Path, python: str) -> None:
    """`send -I` on OpenZFS: a compound BEGIN record without payload, then the
    snapshots' substreams; what a cycle sends when several snapshots are pending."""
    stream = begin(streamcheck.COMPOUNDSTREAM) + random.Random(3).randbytes(1 << 20)
    proc = receive_through_agent(tmp_path, python, stream, FUSE_USAGE)
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert (tmp_path / "received").read_bytes() == stream


@pytest.mark.parametrize("python", PYTHONS)
def test_a_replication_stream_never_reaches_zfs(tmp_path: Path, python: str) -> None:
    stream = begin(streamcheck.COMPOUNDSTREAM, payload=832) + b"\0" * 100000
    proc = receive_through_agent(tmp_path, python, stream, OPENZFS_USAGE)
    assert proc.returncode == agent.EXIT_REFUSED
    assert proc.stderr.decode().startswith("zfsrepl agent: refused: the stream is a "
                                           "replication stream")
    assert not (tmp_path / "received").exists()


def test_where_zfs_has_receive_x_the_dangerous_properties_are_excluded(
        tmp_path: Path) -> None:
    stream = begin(streamcheck.SUBSTREAM) + b"x" * 1000
    proc = receive_through_agent(tmp_path, sys.executable, stream, OPENZFS_USAGE,
                                 f"zfs receive -u -o readonly=on {shlex.quote(FS1)}",
                                 sudo=True)
    assert (proc.returncode, proc.stderr) == (0, b"")
    args = json.loads((tmp_path / "received.args").read_text())
    assert args == list(agent.with_exclusions(("receive", "-u", "-o", "readonly=on", FS1)))
    assert (tmp_path / "received").read_bytes() == stream


def test_pass_on_moves_the_rest_in_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.subprocess, "run", lambda *a, **kw: pytest.fail("cat used"))
    data = random.Random(3).randbytes(200000)
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    def write() -> None:
        os.write(src_w, data)
        os.close(src_w)

    with ThreadPoolExecutor(2) as pool:
        writer = pool.submit(write)
        reader = pool.submit(lambda: b"".join(iter(lambda: os.read(dst_r, 65536), b"")))
        agent._pass_on(src_r, dst_w)
        os.close(dst_w)
        writer.result()
        assert reader.result() == data
    os.close(src_r)
    os.close(dst_r)


@pytest.mark.skipif(not shutil.which("zstd"), reason="zstd is not installed")
def test_a_replication_stream_behind_a_decompressor_is_refused_too(tmp_path: Path) -> None:
    """The check reads what comes out of the helpers: the stream zfs would get."""
    stream = (begin(streamcheck.COMPOUNDSTREAM, payload=832)
              + random.Random(4).randbytes(4 << 20))
    packed = subprocess.run(["zstd", "-c"], input=stream, capture_output=True,
                            check=True).stdout
    proc = receive_through_agent(tmp_path, sys.executable, packed, FUSE_USAGE,
                                 f"zstd -dc | zfs receive -u -F {shlex.quote(FS1)}")
    assert proc.returncode == agent.EXIT_REFUSED, proc.stderr
    assert proc.stderr.decode().startswith("zfsrepl agent: refused: the stream is a "
                                           "replication stream")
    assert proc.stderr.count(b"\n") == 1
    assert not (tmp_path / "received").exists()


# ---------------------------------------------------------------------------- several destroys


def test_several_destroys_are_one_request_checked_as_a_whole() -> None:
    request = run(["zfs", "destroy", SNAP1, SNAP2])
    assert request.each and request.changes == (FS1, FS2)
    assert not run(["zfs", "destroy", SNAP1]).each  # one: zfs runs it, as ever
    for argv, why in (
            (["zfs", "destroy", SNAP1, f"{FS2}@manual"], "'manual' was not made by service svc"),
            (["zfs", "destroy", SNAP1, f"zfsrepl_dst/other@{NAMING.format(3)}"],
             "'zfsrepl_dst/other' is not a destination filesystem of service svc"),
            (["zfs", "destroy", SNAP1, "-r", SNAP2], "no options"),
            (["zfs", "destroy", SNAP1, FS2], "destroy takes a snapshot")):
        refused = decide(shlex.join(argv), POLICY)
        assert isinstance(refused, Refused) and why in refused.reason, (argv, refused)


# A stand-in zfs for the interlock's look (nothing taken over) and the destroys, which
# it logs; a snapshot of fs2 is busy.
EACH_ZFS = """#!/bin/sh
if [ "$1" = list ]; then shift 4; for fs in "$@"; do printf '%s\\t-\\n' "$fs"; done; exit 0; fi
printf '%s\\n' "$*" >> "$0.log"
case "$2" in *fs2@*) echo "cannot destroy snapshot $2: dataset is busy" >&2; exit 1;; esac
"""


def test_several_destroys_run_one_zfs_each_past_a_failure_and_report_each(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "zfs"
    fake.write_text(EACH_ZFS)
    fake.chmod(0o755)
    policy = Policy(service="svc", filesystems=POLICY.filesystems, naming=NAMING,
                    zfs_argv=(str(fake),))
    snap3 = f"{FS1}@{NAMING.format(4)}"
    code = agent.serve(shlex.join(["zfs", "destroy", SNAP1, SNAP2, snap3]).encode(), policy,
                       agent.AgentLog("svc", str(tmp_path / "agent.log")))
    assert code == 1
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["name"], r["returncode"]) for r in reports] == [(SNAP1, 0), (SNAP2, 1), (snap3, 0)]
    assert "dataset is busy" in reports[1]["stderr"] and reports[0]["stderr"] == ""
    # one zfs destroy each, in order, the one after the failure too
    assert (tmp_path / "zfs.log").read_text().splitlines() == [
        f"destroy {SNAP1}", f"destroy {SNAP2}", f"destroy {snap3}"]
    logged = (tmp_path / "agent.log").read_text()
    assert "INFO agent[svc] destroy: 3 in one request" in logged
    assert logged.count("INFO agent[svc] running: ") == 3


def system_zfs_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Policy:
    """The agent running `zfs` (the system's, by name), here the stand-in on PATH."""
    fake = tmp_path / "zfs"
    fake.write_text(EACH_ZFS)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    return Policy(service="svc", filesystems=POLICY.filesystems, naming=NAMING,
                  zfs_argv=("zfs",))


@pytest.mark.parametrize("errno, by_zfs", [(0, []), (16, [SNAP1, SNAP2])],
                         ids=["one-group", "refused"])
def test_several_destroys_are_one_transaction_group_where_libzfs_core_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        errno: int, by_zfs: list[str]) -> None:
    asked: list[tuple[str, dict[str, None]]] = []

    def request(op: str, items: dict[str, None]) -> dict[str, dict[str, Any]]:
        asked.append((op, items))
        return {"zfsrepl_dst": {"errno": errno, "failed": {SNAP2: errno} if errno else {}}}

    monkeypatch.setattr(lzc, "request", request)
    policy = system_zfs_policy(tmp_path, monkeypatch)
    code = agent.serve(shlex.join(["zfs", "destroy", SNAP1, SNAP2]).encode(), policy,
                       agent.AgentLog("svc", str(tmp_path / "agent.log")))
    # only what the agent checked, in one request
    assert asked == [("destroy-snapshots", {SNAP1: None, SNAP2: None})]
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    logged = (tmp_path / "agent.log").read_text()
    ran = tmp_path / "zfs.log"
    assert (ran.read_text().splitlines() if ran.exists() else []) == \
        [f"destroy {name}" for name in by_zfs]
    if errno == 0:
        assert code == 0 and [(r["name"], r["returncode"]) for r in reports] == [
            (SNAP1, 0), (SNAP2, 0)]
        assert "destroy: 2 in one transaction group (pool zfsrepl_dst)" in logged
    else:  # all or nothing: each through zfs, which says what is wrong
        assert code == 1 and [(r["name"], r["returncode"]) for r in reports] == [
            (SNAP1, 0), (SNAP2, 1)]
        assert "pool zfsrepl_dst refused them together (errno 16)" in logged


def test_without_libzfs_core_the_agent_destroys_one_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def unavailable(op: str, items: dict[str, None]) -> None:
        raise lzc.Unavailable("libzfs_core cannot open /dev/zfs")

    monkeypatch.setattr(lzc, "request", unavailable)
    policy = system_zfs_policy(tmp_path, monkeypatch)
    code = agent.serve(shlex.join(["zfs", "destroy", SNAP1, f"{FS1}@{NAMING.format(4)}"]
                                  ).encode(), policy,
                       agent.AgentLog("svc", str(tmp_path / "agent.log")))
    assert code == 0 and len(capsys.readouterr().out.splitlines()) == 2
    assert len((tmp_path / "zfs.log").read_text().splitlines()) == 2
    assert "libzfs_core cannot open /dev/zfs: zfs destroy does it" in \
        (tmp_path / "agent.log").read_text()


@pytest.mark.parametrize("sub", ["hold", "release"])
@pytest.mark.parametrize("errno", [0, 17], ids=["one-group", "refused"])
def test_several_holds_or_releases_are_one_transaction_group_where_libzfs_core_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sub: str, errno: int) -> None:
    asked: list[tuple[str, dict[str, str]]] = []
    ran: list[tuple[str, ...]] = []

    def request(op: str, items: dict[str, str]) -> dict[str, dict[str, Any]]:
        asked.append((op, items))
        return {"zfsrepl_dst": {"errno": errno, "failed": {SNAP2: errno} if errno else {}}}

    monkeypatch.setattr(lzc, "request", request)
    monkeypatch.setattr(os, "execvp", lambda file, argv: ran.append(tuple(argv)))
    policy = system_zfs_policy(tmp_path, monkeypatch)
    tag = policy.hold_tag
    command = shlex.join(["zfs", sub, tag, SNAP1, SNAP2]).encode()
    with contextlib.suppress(AssertionError):  # the "unreachable" after a faked exec
        code = agent.serve(command, policy, agent.AgentLog("svc", str(tmp_path / "agent.log")))
    # only what the agent checked, in one request
    assert asked == [(sub, {SNAP1: tag, SNAP2: tag})]
    logged = (tmp_path / "agent.log").read_text()
    if errno == 0:
        assert code == 0 and ran == []
        assert f"{sub}: 2 in one transaction group (pool zfsrepl_dst)" in logged
    else:  # all or nothing: zfs does them all and says what is wrong
        assert ran == [("zfs", sub, tag, SNAP1, SNAP2)]
        assert f"{sub}: pool zfsrepl_dst refused them together (errno 17)" in logged


def test_a_hold_of_another_tag_is_refused_before_libzfs_core_is_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lzc, "request", lambda *a: pytest.fail("asked on a refused request"))
    monkeypatch.setattr(os, "execvp", lambda *a: pytest.fail("exec on a refused request"))
    policy = system_zfs_policy(tmp_path, monkeypatch)
    code = agent.serve(shlex.join(["zfs", "release", "zfsrepl-other", SNAP1, SNAP2]).encode(),
                       policy, agent.AgentLog("svc", str(tmp_path / "agent.log")))
    assert code == agent.EXIT_REFUSED


def test_the_capability_probe_runs_zfs_alone(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`zfs` with nothing after it (the client's probe of what this ZFS offers) runs
    zfs alone: its usage text, nothing changed."""
    ran: list[tuple[str, ...]] = []
    monkeypatch.setattr(lzc, "request", lambda *a: pytest.fail("no request for a probe"))
    monkeypatch.setattr(os, "execvp", lambda file, argv: ran.append(tuple(argv)))
    policy = system_zfs_policy(tmp_path, monkeypatch)
    with contextlib.suppress(AssertionError):  # the "unreachable" after a faked exec
        agent.serve(b"zfs", policy, agent.AgentLog("svc", str(tmp_path / "agent.log")))
    assert ran == [("zfs",)]
