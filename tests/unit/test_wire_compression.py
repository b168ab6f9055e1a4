"""Wire compression and receive-side buffering: the definition's keys, which tools a
host has and what both sides give, the pipeline built from it, the agent's grammar
for it (exactly the forms a cycle sends) and the agent running it without a shell."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfsrepl import agent, capabilities, config, streamcheck
from zfsrepl import cycle as cycle_mod
from zfsrepl import host as host_mod
from zfsrepl.agent import Pipeline, Policy, Refused, RunZfs, decide
from zfsrepl.config import Endpoint, Service
from zfsrepl.errors import ConfigError
from zfsrepl.host import LocalHost, Result, SshHost, Tools, find_tools, pipeline_text
from zfsrepl.naming import SnapshotNaming
from zfsrepl.transfer import TransferFailed, TransferResult, Wire, choose_wire, pipe
from zfsrepl.zfs import CapabilityCache, Zfs

from .fakes import PAIRS, SimZfs
from .test_capabilities import FUSE, OPENZFS

# ---------------------------------------------------------------------------- config


def definition(**extra: object) -> dict[str, object]:
    return {"name": "s", "source": {"host": "a", "user": "src"},
            "destination": {"host": "b", "user": "dst"},
            "filesystem": [{"source": "tank/a", "destination": "backup/a"}], **extra}


def _toml(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def test_defaults_are_no_compression_and_no_buffer() -> None:
    svc = config.parse_service(definition())
    assert (svc.wire_compression, svc.buffer) == ("none", None)
    text = config.dump_service(svc)
    assert "wire_compression" not in text and "buffer" not in text
    explicit = config.parse_service(definition(wire_compression="none", buffer="none"))
    assert explicit == svc


@pytest.mark.parametrize(("value", "size", "written"), [
    ("128M", 128 << 20, "128M"), ("1G", 1 << 30, "1G"), ("16m", 16 << 20, "16M"),
    ("1024M", 1 << 30, "1G"), ("1536K", 1536 << 10, "1536K"), ("1GiB", 1 << 30, "1G"),
    ("64MB", 64 << 20, "64M"), ("1M", 1 << 20, "1M"),
])
def test_buffer_sizes(value: str, size: int, written: str) -> None:
    svc = config.parse_service(definition(buffer=value, wire_compression="zstd"))
    assert svc.buffer == size
    text = config.dump_service(svc)
    assert f'buffer = "{written}"' in text and 'wire_compression = "zstd"' in text
    assert config.parse_service(_toml(text)) == svc


@pytest.mark.parametrize("value", ["none", "zstd", "lz4", "auto"])
def test_wire_compressions_round_trip(value: str) -> None:
    svc = config.parse_service(definition(wire_compression=value))
    assert svc.wire_compression == value
    assert config.parse_service(_toml(config.dump_service(svc))) == svc


@pytest.mark.parametrize(("value", "shown"), [
    ("gzip", "'gzip' is not valid"), ("ZSTD", "'ZSTD' is not valid (did you mean 'zstd'?)"),
    ("", "'' is not a non-empty string"), (True, "True is not a non-empty string"),
    ("zstd -19", "'zstd -19' is not valid"), (3, "3 is not a non-empty string"),
])
def test_a_bad_wire_compression_names_file_key_and_what_is_expected(value: object,
                                                                     shown: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse_service(definition(wire_compression=value), Path("/c/s.toml"))
    msg = str(exc.value)
    assert msg.startswith(f"/c/s.toml: wire_compression: {shown}"), msg
    assert 'expected "none", "zstd", "lz4" or "auto"' in msg


@pytest.mark.parametrize("value", ["16", "0M", "512K", "2G", "1025M", "65G", "1T", "1.5G",
                                   "lots", "", "-16M", "16 M B", "10%", 16 << 20, True,
                                   ["16M"]])
def test_a_bad_buffer_names_file_key_and_what_is_expected(value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse_service(definition(buffer=value), Path("/c/s.toml"))
    msg = str(exc.value)
    assert msg.startswith(f"/c/s.toml: buffer: {value!r} is not valid; expected "), msg
    assert '"none" or a size for mbuffer -m' in msg and "from 1M to 1G" in msg


def test_a_typo_of_the_keys_is_pointed_out() -> None:
    with pytest.raises(ConfigError, match=r"wire_compresion: unknown key; did you mean "
                                          r"'wire_compression'\?"):
        config.parse_service(definition(wire_compresion="zstd"))


# ---------------------------------------------------------------------------- choosing

BOTH = Tools(frozenset({"zstd", "lz4", "mbuffer"}))
NOTHING = Tools()


def tools(*names: str, agent: bool = False) -> Tools:
    return Tools(frozenset(names), agent)


@pytest.mark.parametrize(("src", "dst", "chosen"), [
    (BOTH, BOTH, "zstd"),
    (tools("zstd", "lz4"), tools("lz4", "mbuffer"), "lz4"),
    (tools("zstd"), tools("lz4"), None),
    (NOTHING, BOTH, None),
])
def test_auto_takes_zstd_else_lz4_where_both_sides_have_it(src: Tools, dst: Tools,
                                                           chosen: str | None) -> None:
    wire, notes = choose_wire("auto", None, "src@a", src, "dst@b", dst)
    assert wire.compression == chosen
    if chosen:
        assert notes == []
    else:
        # what `auto` could not use is only noted: nothing was asked for by name
        assert [level for level, _ in notes] == [logging.INFO]
        assert "src@a" in notes[0][1] and "dst@b" in notes[0][1]


@pytest.mark.parametrize(("src", "dst", "missing"), [
    (tools("lz4"), BOTH, ["src@a"]),
    (BOTH, tools("lz4", "mbuffer"), ["dst@b"]),
    (NOTHING, NOTHING, ["src@a", "dst@b"]),
])
def test_a_missing_compressor_is_a_warning_and_no_compression(src: Tools, dst: Tools,
                                                              missing: list[str]) -> None:
    wire, notes = choose_wire("zstd", None, "src@a", src, "dst@b", dst)
    assert wire == Wire(None, None)
    assert [level for level, _ in notes] == [logging.WARNING]
    text = notes[0][1]
    assert "zstd not found on" in text and "uncompressed" in text
    for label in missing:
        assert label in text
    assert len(missing) == 2 or ({"src@a", "dst@b"} - set(missing)).pop() not in text


def test_a_missing_mbuffer_is_a_warning_and_no_buffer() -> None:
    # mbuffer runs on the receiving side only: the source's does not count
    wire, notes = choose_wire("lz4", 16 << 20, "src@a", BOTH, "dst@b", tools("lz4"))
    assert wire == Wire("lz4", None)
    assert notes == [(logging.WARNING, "buffer: mbuffer not found on dst@b: streams are "
                                       "received without a buffer")]
    wire, notes = choose_wire("none", 16 << 20, "src@a", NOTHING, "dst@b",
                              tools("mbuffer", agent=True))
    assert (wire, notes) == (Wire(None, 16 << 20, agent=True), [])


def test_the_wire_of_a_stream() -> None:
    wire = Wire("zstd", 16 << 20)
    assert wire.helpers(raw=False) == [["zstd", "-dc"], ["mbuffer", "-q", "-m", "16M"]]
    assert wire.describe() == "zstd, buffer 16M"
    # a raw (encrypted) stream is not compressed; the buffer stays
    assert wire.for_stream(raw=True) is None
    assert wire.helpers(raw=True) == [["mbuffer", "-q", "-m", "16M"]]
    assert wire.describe(raw=True) == "uncompressed (raw stream), buffer 16M"
    assert Wire("lz4").helpers(raw=False) == [["lz4", "-dc"]]
    assert Wire().helpers(raw=False) == []
    assert Wire().describe() == "uncompressed, no buffer"


# ---------------------------------------------------------------------------- finding tools


class AnsweringHost:
    """A remote host answering `hello` and the shell's lookup as told; records calls."""

    label = "dst@b"

    def __init__(self, hello: Result | None = None, found: str = "") -> None:
        self.hello = hello
        self.found = found
        self.argvs: list[list[str]] = []

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        self.argvs.append(list(argv))
        if argv == ["hello"]:
            return self.hello or Result(argv, 127, "", "sh: 1: hello: not found\n")
        assert argv[:2] == ["sh", "-c"], argv
        return Result(argv, 0, self.found, "")

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def close(self) -> None:
        pass


def test_tools_through_the_agent_come_from_its_hello() -> None:
    reply = {"agent": "zfsrepl", "version": "0.1.0", "tools": ["mbuffer", "zstd", "gzip"]}
    h = AnsweringHost(Result(["hello"], 0, json.dumps(reply), ""))
    assert find_tools(h) == Tools(frozenset({"zstd", "mbuffer"}), agent=True)
    assert h.argvs == [["hello"]]  # one call, no shell


def test_an_agent_that_reports_no_tools_has_none() -> None:
    reply = {"agent": "zfsrepl", "version": "0.0.9", "zfs": {}}
    h = AnsweringHost(Result(["hello"], 0, json.dumps(reply), ""))
    assert find_tools(h) == Tools(frozenset(), agent=True)


@pytest.mark.parametrize("hello", [None, Result(["hello"], 0, "Hello, world!\n", ""),
                                   Result(["hello"], 0, '{"agent": "other"}', "")])
def test_without_an_agent_the_shell_looks_them_up(hello: Result | None) -> None:
    h = AnsweringHost(hello, found="zstd\nmbuffer\nrm\n")
    assert find_tools(h) == Tools(frozenset({"zstd", "mbuffer"}))
    script = h.argvs[1][2]
    assert h.argvs[1][:2] == ["sh", "-c"] and "command -v" not in script
    assert "for t in zstd lz4 mbuffer" in script


def test_the_shell_lookup_finds_what_is_on_path(tmp_path: Path) -> None:
    for name in ("zstd", "mbuffer", "lz4"):
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755 if name != "lz4" else 0o644)  # lz4: not executable
    script = host_mod._FIND_SCRIPT.format(names=" ".join(capabilities.WIRE_TOOLS))
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True,
                         env={"PATH": f"/nonexistent:{tmp_path}"})
    assert out.stdout.split() == ["zstd", "mbuffer"]


def test_this_machine_looks_on_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_mod.shutil, "which",
                        lambda name: f"/usr/bin/{name}" if name == "lz4" else None)
    assert find_tools(LocalHost()) == Tools(frozenset({"lz4"}))


def test_tools_are_looked_up_once_per_host_for_the_life_of_the_cache() -> None:
    h = AnsweringHost(found="zstd\n")
    cache = CapabilityCache()
    assert Zfs(h, ["zfs"], cache).tools() == tools("zstd")
    assert Zfs(h, ["zfs"], cache).tools() == tools("zstd")
    assert len(h.argvs) == 2  # hello, then the shell: once
    z = Zfs(h, ["zfs"], cache)
    z.forget_capabilities()
    z.tools()
    assert len(h.argvs) == 4


# ---------------------------------------------------------------------------- the pipeline

FS1 = "zfsrepl_dst/svc/fs 1"  # a space, as dataset names may hold
FS2 = "zfsrepl_dst/svc/fs2"
NAMING = SnapshotNaming("src", "dst", "198.51.100.12")
SUDO_ZFS = ("sudo", "-n", "/usr/sbin/zfs")
POLICY = Policy(service="svc", filesystems=frozenset({FS1, FS2}), naming=NAMING,
                zfs_argv=SUDO_ZFS)
ZSTD = ["zstd", "-dc"]
LZ4 = ["lz4", "-dc"]
MBUF = ["mbuffer", "-q", "-m", "16M"]


def test_pipeline_text_for_a_shell_and_for_the_agent() -> None:
    stages = [ZSTD, MBUF, ["zfs", "receive", "-u", "-F", FS1]]
    assert pipeline_text(stages, quiet_helpers=True) == (
        "zstd -dc 2>/dev/null | mbuffer -q -m 16M 2>/dev/null | zfs receive -u -F "
        "'zfsrepl_dst/svc/fs 1'")
    assert pipeline_text(stages, quiet_helpers=False) == (
        "zstd -dc | mbuffer -q -m 16M | zfs receive -u -F 'zfsrepl_dst/svc/fs 1'")


@pytest.fixture
def ssh_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[SshHost]:
    # closed after the test: its control folder (in the temporary folder) goes with it
    with SshHost(Endpoint("198.51.100.12", "dst")) as h:
        monkeypatch.setattr(h, "connect", lambda: None)
        yield h


@pytest.mark.parametrize("agent_side", [True, False], ids=["agent", "plain ssh"])
def test_the_receiving_pipeline_crosses_ssh_as_one_command(ssh_host: SshHost,
                                                           agent_side: bool) -> None:
    z = Zfs(ssh_host, list(SUDO_ZFS))
    argv = z.receive_pipeline_argv(FS1, [LZ4, MBUF], agent=agent_side, incremental=True,
                                   resumable=True)
    assert argv[-2] == "198.51.100.12" and argv[0] == "ssh"
    quiet = " 2>/dev/null" if not agent_side else ""
    assert argv[-1] == (f"lz4 -dc{quiet} | mbuffer -q -m 16M{quiet} | sudo -n /usr/sbin/zfs "
                        "receive -u -F -s 'zfsrepl_dst/svc/fs 1'")
    # without helpers it is the receive alone, as ever
    assert z.receive_pipeline_argv(FS1, [], agent=True, incremental=False) == \
        z.receive_argv(FS1, incremental=False)
    # a host that is no ssh one runs it in a local shell
    local = Zfs(LocalHost(), ["zfs"]).receive_pipeline_argv(FS2, [ZSTD], agent=False,
                                                             incremental=False)
    assert local == ["sh", "-c", "zstd -dc 2>/dev/null | zfs receive -u zfsrepl_dst/svc/fs2"]


@pytest.mark.parametrize("helpers", [[ZSTD], [LZ4], [MBUF], [ZSTD, MBUF], [LZ4, MBUF]],
                         ids=["zstd", "lz4", "mbuffer", "zstd+mbuffer", "lz4+mbuffer"])
@pytest.mark.parametrize("prefix", [list(SUDO_ZFS), ["zfs"], ["/usr/sbin/zfs"]])
def test_the_agent_accepts_every_pipeline_a_cycle_sends(ssh_host: SshHost,
                                                        helpers: list[list[str]],
                                                        prefix: list[str]) -> None:
    z = Zfs(ssh_host, prefix)
    forms = [{"incremental": False}, {"incremental": True},
             {"incremental": False, "resumable": True, "readonly": True},
             {"incremental": True, "resumable": True, "readonly": True}]
    for fs in (FS1, FS2):
        for form in forms:
            remote = z.receive_pipeline_argv(fs, helpers, agent=True, **form)[-1]
            decision = decide(remote, POLICY)
            assert isinstance(decision, Pipeline), (remote, decision)
            assert decision.helpers == tuple(tuple(h) for h in helpers)
            assert decision.receive.args == tuple(z.receive_args(fs, **form))
            assert decision.receive.must_exist == (fs if form["incremental"] else None)


def test_every_size_zfsrepl_writes_is_accepted() -> None:
    # up to the agent's bound of one stream's buffer (agent.MAX_AGENT_BUFFER)
    for size in (1 << 20, 16 << 20, 1536 << 10, 1 << 30):
        form = shlex.join([*capabilities.buffer_argv(size), "|", "zfs", "receive", "-u", FS2])
        assert isinstance(decide(form, POLICY), Pipeline), form


RECEIVE = f"zfs receive -u -F {shlex.quote(FS1)}"

REFUSED_PIPELINES = {
    # another size syntax
    "size lower case": f"mbuffer -q -m 16m | {RECEIVE}",
    "size with B": f"mbuffer -q -m 16MB | {RECEIVE}",
    "size in bytes": f"mbuffer -q -m 16777216 | {RECEIVE}",
    "size with a fraction": f"mbuffer -q -m 1.5G | {RECEIVE}",
    "size as share of memory": f"mbuffer -q -m 10% | {RECEIVE}",
    "size zero": f"mbuffer -q -m 0M | {RECEIVE}",
    "size leading zero": f"mbuffer -q -m 016M | {RECEIVE}",
    "size too small": f"mbuffer -q -m 512K | {RECEIVE}",
    "size too big": f"mbuffer -q -m 65G | {RECEIVE}",
    "size in T": f"mbuffer -q -m 1T | {RECEIVE}",
    "size glued": f"mbuffer -q -m16M | {RECEIVE}",
    # other mbuffer options
    "mbuffer output file": f"mbuffer -q -m 16M -o /etc/passwd | {RECEIVE}",
    "mbuffer options swapped": f"mbuffer -m 16M -q | {RECEIVE}",
    "mbuffer not quiet": f"mbuffer -m 16M | {RECEIVE}",
    "mbuffer input file": f"mbuffer -q -m 16M -i /etc/shadow | {RECEIVE}",
    "mbuffer by path": f"/usr/bin/mbuffer -q -m 16M | {RECEIVE}",
    # decompressors it does not know, or other forms of the known ones
    "gzip": f"gzip -dc | {RECEIVE}",
    "xz": f"xz -dc | {RECEIVE}",
    "pigz": f"pigz -dc | {RECEIVE}",
    "zstd -d": f"zstd -d | {RECEIVE}",
    "zstd compressing": f"zstd -c | {RECEIVE}",
    "zstd with threads": f"zstd -dc -T0 | {RECEIVE}",
    "zstd to a file": f"zstd -dc -o /tmp/x | {RECEIVE}",
    "zstd of a file": f"zstd -dc /etc/shadow | {RECEIVE}",
    "zstd by path": f"/usr/bin/zstd -dc | {RECEIVE}",
    "lz4 glued": f"lz4 -d -c | {RECEIVE}",
    # extra pipes, other orders
    "two decompressors": f"zstd -dc | lz4 -dc | {RECEIVE}",
    "mbuffer twice": f"mbuffer -q -m 16M | mbuffer -q -m 16M | {RECEIVE}",
    "mbuffer first": f"mbuffer -q -m 16M | zstd -dc | {RECEIVE}",
    "three helpers": f"zstd -dc | mbuffer -q -m 16M | mbuffer -q -m 16M | {RECEIVE}",
    "empty stage": f"zstd -dc | | {RECEIVE}",
    "leading pipe": f"| {RECEIVE}",
    "trailing pipe": f"zstd -dc | {RECEIVE} |",
    "after the receive": f"zstd -dc | {RECEIVE} | sh",
    "receive first": f"{RECEIVE} | zstd -dc",
    "receive twice": f"zstd -dc | {RECEIVE} | {RECEIVE}",
    "pipe glued": f"zstd -dc|{RECEIVE}",
    "pipe into a shell": "zstd -dc | sh",
    "cat": f"cat | {RECEIVE}",
    "tee": f"zstd -dc | tee /tmp/x | {RECEIVE}",
    # what follows must be a receive the agent allows anyway
    "receive -A": f"zstd -dc | zfs receive -A {shlex.quote(FS1)}",
    "receive into another dataset": "zstd -dc | zfs receive -u -F zfsrepl_dst/other",
    "receive -d": f"zstd -dc | zfs receive -u -d {shlex.quote(FS1)}",
    "receive -o other": f"mbuffer -q -m 16M | zfs receive -u -o mountpoint=/ {shlex.quote(FS1)}",
    "list": f"zstd -dc | zfs list -H -o name {shlex.quote(FS1)}",
    "destroy": f"zstd -dc | zfs destroy {shlex.quote(FS1)}@{NAMING.format(1)}",
    "zfs probe": "zstd -dc | zfs",
    "hello": "zstd -dc | hello",
    "other zfs": f"zstd -dc | sudo zfs receive -u -F {shlex.quote(FS1)}",
    # shell syntax around it
    "semicolon": f"zstd -dc | {RECEIVE}; id",
    "and": f"zstd -dc | {RECEIVE} && id",
    "or": f"zstd -dc || {RECEIVE}",
    "redirect": f"zstd -dc 2>/dev/null | {RECEIVE}",
    "redirect spaced": f"zstd -dc 2> /dev/null | {RECEIVE}",
    "substitution": f"zstd -dc | zfs receive -u -F $(echo {shlex.quote(FS1)})",
    "backticks": f"mbuffer -q -m `echo 16M` | {RECEIVE}",
    "variable size": f"mbuffer -q -m $SIZE | {RECEIVE}",
    "background": f"zstd -dc | {RECEIVE} &",
    "glob": f"zstd -dc | zfs receive -u -F {FS2[:-1]}*",
    "quoted size": "mbuffer -q -m '16M;id' | " + RECEIVE,
}


@pytest.mark.parametrize("command", list(REFUSED_PIPELINES.values()),
                         ids=list(REFUSED_PIPELINES))
def test_the_agent_refuses_every_other_pipeline(command: str) -> None:
    decision = decide(command, POLICY)
    assert isinstance(decision, Refused), decision
    assert decision.reason


def test_refusals_say_what_is_allowed() -> None:
    for command, expected in (
            (f"gzip -dc | {RECEIVE}", "'gzip -dc' is not allowed in a pipeline; a pipeline "
                                      "is allowed only as: [zstd -dc | or lz4 -dc |] "
                                      "[mbuffer -q -m SIZE |] zfs receive ..."),
            (f"mbuffer -q -m 16m | {RECEIVE}", "mbuffer's size must be a whole number with "
                                                "K, M or G, from 1M to 1G (like 16M), not "
                                                "'16m'"),
            (f"mbuffer -q -m 16M -o x | {RECEIVE}", "mbuffer is allowed only as: mbuffer -q "
                                                     "-m SIZE"),
            ("zstd -dc | sh", "the last command of a pipeline must be a zfs receive"),
            (f"zstd -dc | {RECEIVE} | sh", f"{RECEIVE!r} is not allowed in a pipeline"),
            ("zstd -dc | zfs receive -u -F zfsrepl_dst/other",
             "'zfsrepl_dst/other' is not a destination filesystem of service svc")):
        decision = decide(command, POLICY)
        assert isinstance(decision, Refused) and expected in decision.reason, decision


PIPE_WORDS = st.sampled_from([
    "zstd", "lz4", "gzip", "-dc", "-c", "-d", "mbuffer", "-q", "-m", "16M", "16m", "1G",
    "-o", "/etc/passwd", "|", "||", ";", "zfs", "receive", "-u", "-F", "-s", "-A",
    "readonly=on", "sudo", "-n", "/usr/sbin/zfs", shlex.quote(FS1), FS2, "zfsrepl_dst",
    "zfsrepl_dst/other", "list", "destroy", f"{FS2}@{NAMING.format(1)}", "$(id)", "sh",
])


@settings(max_examples=3000, deadline=None)
@given(st.lists(PIPE_WORDS, min_size=2, max_size=14))
def test_whatever_pipeline_is_asked_only_known_helpers_feed_an_own_receive(
        words: list[str]) -> None:
    decision = decide(" ".join(words), POLICY)
    if not isinstance(decision, Pipeline):
        return
    assert 1 <= len(decision.helpers) <= 2
    allowed = {("zstd", "-dc"), ("lz4", "-dc"), ("mbuffer", "-q", "-m", "16M"),
               ("mbuffer", "-q", "-m", "1G")}
    assert set(decision.helpers) <= allowed
    assert [h[0] for h in decision.helpers] == sorted(
        (h[0] for h in decision.helpers), key=lambda n: n == "mbuffer")
    args = decision.receive.args
    assert args[:2] == ("receive", "-u") and args[-1] in POLICY.filesystems


# ---------------------------------------------------------------------------- the agent running it

HAVE_TOOLS = all(shutil.which(t) for t in ("zstd", "mbuffer"))
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="zstd and mbuffer are not installed")

FAKE_ZFS = r"""
import os, sys, time
out, mode = sys.argv[1], sys.argv[2]
args = sys.argv[3:]
if not args:  # the usage: a zfs without receive -x
    sys.stderr.write("usage: zfs command args ...\n\treceive [-vnFu] <filesystem>\n")
    sys.exit(2)
if args[0] == "list":  # the agent's look before a receive: the filesystem exists
    print(args[-1] + "\t-")
    sys.exit(0)
assert args[:2] == ["receive", "-u"], args
with open(out + ".pid", "w") as f:
    f.write(str(os.getpid()))
if mode == "fail":
    sys.stdin.buffer.read(10)
    sys.stderr.write("cannot receive new filesystem stream: out of space\n")
    sys.exit(1)
data = sys.stdin.buffer.read()
with open(out, "wb") as f:
    f.write(data)
if mode.startswith("expect=") and len(data) != int(mode[7:]):
    sys.stderr.write("cannot receive new filesystem stream: failed to read from stream\n")
    sys.exit(1)
if mode == "warn":
    sys.stderr.write("a warning of zfs\n")
"""


def run_agent(tmp_path: Path, command: str, stream: bytes, mode: str = "ok"
              ) -> subprocess.CompletedProcess[bytes]:
    """`zfsrepl agent` as sshd runs it, with a stand-in zfs that keeps what it receives."""
    fake = tmp_path / "fakezfs.py"
    fake.write_text(FAKE_ZFS)
    zfs_command = shlex.join([sys.executable, str(fake), str(tmp_path / "received"), mode])
    src = Path(agent.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(src), "SSH_ORIGINAL_COMMAND": command}
    return subprocess.run([sys.executable, "-m", "zfsrepl.agent", "--service", "svc",
                           "--filesystem", FS1, "--source-user", "src",
                           "--destination-user", "dst", "--destination-host", "198.51.100.12",
                           "--zfs-command", zfs_command, "--log", str(tmp_path / "agent.log")],
                          input=stream, capture_output=True, env=env, check=False, timeout=60)


def stream_bytes() -> bytes:
    """A stream the agent lets through: a BEGIN record of one filesystem's stream, then
    bytes as random as they come."""
    begin = struct.pack("<IIQQ", 0, 0, streamcheck.BACKUP_MAGIC, streamcheck.SUBSTREAM)
    return begin + b"".join(zlib.crc32(str(i).encode()).to_bytes(4, "big") * 64
                            for i in range(20000))


@needs_tools
def test_the_agent_runs_decompressor_buffer_and_receive(tmp_path: Path) -> None:
    data = stream_bytes()
    packed = subprocess.run(["zstd", "-c"], input=data, capture_output=True, check=True).stdout
    proc = run_agent(tmp_path, f"zstd -dc | mbuffer -q -m 1M | zfs receive -u {shlex.quote(FS1)}",
                     packed)
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert (tmp_path / "received").read_bytes() == data
    log = (tmp_path / "agent.log").read_text()
    assert "INFO agent[svc] running: " in log and "/zstd -dc | " in log
    assert "mbuffer -q -m 1M | " in log and " receive -u 'zfsrepl_dst/svc/fs 1'" in log


@needs_tools
def test_a_failed_receive_reports_zfss_own_message_alone(tmp_path: Path) -> None:
    data = stream_bytes() * 4
    packed = subprocess.run(["zstd", "-c"], input=data, capture_output=True, check=True).stdout
    proc = run_agent(tmp_path, f"zstd -dc | mbuffer -q -m 1M | zfs receive -u {shlex.quote(FS1)}",
                     packed, mode="fail")
    # the helpers die of the broken pipe too; their lines would hide zfs's
    assert proc.stderr == b"cannot receive new filesystem stream: out of space\n"
    assert proc.returncode == 1
    assert "WARNING agent[svc] zfs receive failed (exit 1)" in \
        (tmp_path / "agent.log").read_text()


@needs_tools
def test_a_failed_decompressor_fails_the_pipeline(tmp_path: Path) -> None:
    proc = run_agent(tmp_path, f"zstd -dc | zfs receive -u {shlex.quote(FS1)}",
                     b"this is no zstd frame", mode="warn")
    assert proc.returncode not in (0, agent.EXIT_REFUSED)
    err = proc.stderr.decode()
    # zstd's own message: the stream it did not produce is not the sender's fault
    assert "zstd" in err and "refused" not in err, err
    assert not (tmp_path / "received").exists()  # zfs never ran


def test_a_helper_it_cannot_find_is_a_clear_error(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.shutil, "which", lambda name: None)
    decision = decide(f"lz4 -dc | {RECEIVE}", POLICY)
    assert isinstance(decision, Pipeline)
    code = agent.run_pipeline(decision, POLICY, agent.AgentLog("svc", None))
    assert code == agent.EXIT_CANNOT_RUN


def test_hello_reports_the_tools(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(agent, "probe", lambda zfs_argv: {"resume": True})
    monkeypatch.setattr(agent.shutil, "which",
                        lambda name: None if name == "lz4" else f"/usr/bin/{name}")
    assert agent.serve(b"hello", POLICY, agent.AgentLog("svc", None)) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["tools"] == ["zstd", "mbuffer"]
    assert host_mod.agent_hello(json.dumps(reply)) == reply


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait(what: str, condition: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@needs_tools
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="no /proc here")
@pytest.mark.parametrize("how", ["SIGTERM", "cut"])
def test_a_stopped_or_cut_agent_leaves_no_process(tmp_path: Path, how: str) -> None:
    fake = tmp_path / "fakezfs.py"
    fake.write_text(FAKE_ZFS)
    data = stream_bytes()
    # a stand-in zfs that, like zfs, fails on a stream that ends before its end
    # zfs starts once the agent has seen the stream's first record, and zstd hands on
    # nothing before it has read a block: half the stream must be more than one block
    data = data[:streamcheck.HEADER_BYTES] + random.Random(1).randbytes(1 << 20)
    zfs_command = shlex.join([sys.executable, str(fake), str(tmp_path / "received"),
                              f"expect={len(data)}"])
    env = {**os.environ, "PYTHONPATH": str(Path(agent.__file__).parents[1]),
           "SSH_ORIGINAL_COMMAND": f"zstd -dc | mbuffer -q -m 1M | zfs receive -u "
                                   f"{shlex.quote(FS1)}"}
    proc = subprocess.Popen([sys.executable, "-m", "zfsrepl.agent", "--service", "svc",
                             "--filesystem", FS1, "--source-user", "src",
                             "--destination-user", "dst", "--destination-host", "h",
                             "--zfs-command", zfs_command],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    try:
        packed = subprocess.run(["zstd", "-c"], input=data, capture_output=True,
                                check=True).stdout
        proc.stdin.write(packed[:len(packed) // 2])  # the stream is under way
        proc.stdin.flush()
        children = _wait("the pipeline's three programs",
                         lambda: (lambda c: c if len(c) == 3 else None)(_children(proc.pid)))
        _wait("zfs to start reading", lambda: (tmp_path / "received.pid").exists())
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            proc.stdin.close()  # ssh's end of the stream goes away
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code != 0
    _wait("every program of the pipeline to go",
          lambda: not any(_alive(pid) for pid in children), timeout=10)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if how == "cut":
        # zfs's own message alone, not the helpers' about the cut stream
        assert err == "cannot receive new filesystem stream: failed to read from stream\n"
    else:
        assert code == 128 + signal.SIGTERM, err


# ---------------------------------------------------------------------------- the local side

needs_splice = pytest.mark.skipif(not hasattr(os, "splice"), reason="no os.splice here")


@needs_tools
@needs_splice
def test_pipe_counts_the_stream_and_the_wire() -> None:
    size = 4 << 20
    sender = [sys.executable, "-c", f"import sys; sys.stdout.buffer.write(b'ab' * {size // 2})"]
    receiver = ["sh", "-c", "zstd -dc | mbuffer -q -m 1M | "
                f"{shlex.quote(sys.executable)} -c 'import sys; "
                f"assert len(sys.stdin.buffer.read()) == {size}'"]
    result = pipe(sender, receiver, "test", compressor=["zstd", "-c"])
    assert result.stream_bytes == size
    assert result.bytes is not None and 0 < result.bytes < size // 100
    plain = pipe(sender, [sys.executable, "-c", "import sys; sys.stdin.buffer.read()"], "test")
    assert (plain.bytes, plain.stream_bytes) == (size, None)


@needs_splice
def test_the_limit_holds_the_wire_not_the_stream() -> None:
    size = 2 << 20
    sender = [sys.executable, "-c", f"import sys; sys.stdout.buffer.write(b'x' * {size})"]
    # a "compressor" that halves the stream: every second byte
    halve = [sys.executable, "-c", "import sys\nwhile True:\n"
             " b = sys.stdin.buffer.read(65536)\n if not b: break\n"
             " sys.stdout.buffer.write(b[::2])"]
    receiver = [sys.executable, "-c", "import sys; sys.stdin.buffer.read()"]
    result = pipe(sender, receiver, "test", compressor=halve, limit=2 << 20)
    assert (result.stream_bytes, result.bytes) == (size, size // 2)
    assert 0.35 <= result.seconds < 3  # 1 MiB on the wire at 2 MiB/s


@needs_splice
def test_a_failed_receiver_is_reported_before_the_compressor() -> None:
    sender = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * 3000000)"]
    receiver = ["sh", "-c", "head -c 10 >/dev/null; echo 'cannot receive: it broke' >&2; "
                "exit 1"]
    compressor = ["sh", "-c", "cat; echo 'compressor: broken pipe' >&2; exit 1"]
    with pytest.raises(TransferFailed) as exc:
        pipe(sender, receiver, "test", compressor=compressor)
    assert str(exc.value) == "test failed: cannot receive: it broke"


@needs_splice
def test_a_failed_compressor_fails_the_transfer() -> None:
    sender = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * 1000)"]
    receiver = [sys.executable, "-c", "import sys; sys.stdin.buffer.read()"]
    with pytest.raises(TransferFailed) as exc:
        pipe(sender, receiver, "test",
             compressor=["sh", "-c", "cat >/dev/null; echo bad level >&2; exit 3"])
    assert str(exc.value) == "test failed: sh: bad level"
    assert exc.value.returncode == 3


def test_a_compressor_that_cannot_run_fails_the_transfer_cleanly() -> None:
    sender = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * 100000)"]
    receiver = [sys.executable, "-c", "import sys; sys.stdin.buffer.read()"]
    with pytest.raises(TransferFailed, match=r"^test failed: cannot run /nonexistent/zstd: "):
        pipe(sender, receiver, "test", compressor=["/nonexistent/zstd", "-c"])


def test_without_splice_the_stream_is_copied_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # counted everywhere: the stall watchdog, the progress and the limit need the count
    monkeypatch.delattr(os, "splice", raising=False)
    sender = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'y' * 100000)"]
    halve = [sys.executable, "-c", "import sys; sys.stdout.buffer.write("
             "sys.stdin.buffer.read()[::2])"]
    receiver = [sys.executable, "-c", "import sys; assert len(sys.stdin.buffer.read()) == 50000"]
    result = pipe(sender, receiver, "test", compressor=halve)
    assert (result.bytes, result.stream_bytes) == (50000, 100000)


def test_progress_shows_the_wire_beside_the_stream() -> None:
    from zfsrepl.transfer import progress_text

    assert progress_text("fs@1", 10 << 20, 40 << 20, 2.0, wire=1 << 20) == (
        "fs@1: 10.0 MiB of ~40.0 MiB (25%), 5.0 MiB/s, ETA 0:00:06, 1.0 MiB on the wire")


# ---------------------------------------------------------------------------- a cycle


@pytest.fixture(autouse=True)
def _log_reaches_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    # `zfsrepl.log.setup()`, which other tests run, stops the logger's propagation
    from zfsrepl.log import logger

    monkeypatch.setattr(logger, "propagate", True)

SVC = Service(name="batch", source=Endpoint("srchost", "src"),
              destination=Endpoint("desthost", "dst"), filesystems=PAIRS[:2], keep_source=1,
              keep_destination=1, retry_delay=0.0)


class ToolZfs(SimZfs):
    """A simulated host that also answers the tool lookup: through an agent's hello, or
    (plain ssh) the shell's."""

    def __init__(self, *args: Any, tools: tuple[str, ...] = (), agent: bool = False,
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tools = tools
        self.agent = agent
        self.lookups = 0

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        if argv == ["hello"]:
            self.lookups += 1
            if self.agent:
                return Result(argv, 0, json.dumps({"agent": "zfsrepl",
                                                   "tools": list(self.tools)}), "")
            return Result(argv, 127, "", "hello: not found")
        if argv[:2] == ["sh", "-c"]:
            return Result(argv, 0, "".join(f"{t}\n" for t in self.tools), "")
        return super().run(argv, check=check, input=input, timeout=timeout)


def make_world(monkeypatch: pytest.MonkeyPatch, src_tools: tuple[str, ...],
               dst_tools: tuple[str, ...], *, agent: bool = True, usage: str = FUSE
               ) -> tuple[ToolZfs, ToolZfs, list[dict[str, Any]]]:
    src = ToolZfs("src@srchost", usage, [p.source for p in SVC.filesystems], {"tank/src"},
                  tools=src_tools)
    dst = ToolZfs("dst@desthost", usage, [], {"backup/dst"}, tools=dst_tools, agent=agent)
    streams: list[dict[str, Any]] = []

    def fake_pipe(sender: list[str], receiver: list[str], what: str,
                  **kw: Any) -> TransferResult:
        streams.append({"sender": sender, "receiver": receiver, **kw})
        src_fs, _, target = sender[-1].partition("@")
        dst_fs = next(p.destination for p in SVC.filesystems if p.source == src_fs)
        snap = next(s for s in src.fs[src_fs] if s.name == target)
        dst.fs.setdefault(dst_fs, []).append(dataclasses.replace(snap, txg=dst.next_txg()))
        dst.marks.setdefault(dst_fs, {})
        return TransferResult(0.1, 100, 1000 if kw.get("compressor") else None)

    monkeypatch.setattr(cycle_mod, "pipe", fake_pipe)
    return src, dst, streams


def test_a_cycle_compresses_and_buffers_where_both_sides_can(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zfsrepl")
    src, dst, streams = make_world(monkeypatch, ("zstd", "lz4"), ("zstd", "lz4", "mbuffer"))
    svc = dataclasses.replace(SVC, wire_compression="auto", buffer=16 << 20)
    cache = CapabilityCache()
    for _ in range(2):  # full, then incremental
        cycle_mod.replicate(svc, src, dst, sleep=lambda s: None, capabilities=cache)
    assert len(streams) == 4
    for stream in streams:
        assert stream["compressor"] == ["zstd", "-c"]
        assert stream["receiver"][:2] == ["sh", "-c"]  # the simulated host is no ssh one
        assert stream["receiver"][2].startswith("zstd -dc | mbuffer -q -m 16M | zfs receive ")
    # looked up once for both cycles: the cache outlives them, as in `zfsrepl run`
    assert (src.lookups, dst.lookups) == (1, 1)
    started = [r.message for r in caplog.records if r.message.startswith("starting ")]
    assert len(started) == 4 and all(m.endswith(" (wire: zstd, buffer 16M)") for m in started)
    finished = [r.message for r in caplog.records if r.message.startswith("finished ")]
    assert all(m.endswith(", 100 bytes on the wire (1000 before zstd)") for m in finished)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_missing_tool_warns_and_the_cycle_goes_on_without_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    src, dst, streams = make_world(monkeypatch, ("lz4",), ("zstd",), agent=False)
    svc = dataclasses.replace(SVC, wire_compression="zstd", buffer=64 << 20)
    cycle_mod.replicate(svc, src, dst, sleep=lambda s: None)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["wire_compression zstd: zstd not found on src@srchost: streams go "
                        "uncompressed",
                        "buffer: mbuffer not found on dst@desthost: streams are received "
                        "without a buffer"]
    assert len(streams) == 2
    for stream in streams:
        assert stream["compressor"] is None
        assert stream["receiver"][0] != "sh"  # the receive alone, as without the keys


def test_nothing_is_looked_up_when_nothing_is_asked(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zfsrepl")
    src, dst, streams = make_world(monkeypatch, ("zstd",), ("zstd",))
    cycle_mod.replicate(SVC, src, dst, sleep=lambda s: None)
    assert (src.lookups, dst.lookups) == (0, 0)
    assert all(s["compressor"] is None for s in streams)
    assert not [r for r in caplog.records if "wire" in r.message]


def test_a_buffer_alone_needs_nothing_of_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst, streams = make_world(monkeypatch, (), ("mbuffer",))
    svc = dataclasses.replace(SVC, buffer=1 << 30)
    cycle_mod.replicate(svc, src, dst, sleep=lambda s: None)
    assert streams[0]["compressor"] is None
    assert streams[0]["receiver"][2].startswith("mbuffer -q -m 1G | zfs receive ")


def test_an_encrypted_filesystem_goes_raw_and_uncompressed(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zfsrepl")
    src, dst, streams = make_world(monkeypatch, ("zstd",), ("zstd", "mbuffer"),
                                   usage=OPENZFS)
    svc = dataclasses.replace(SVC, wire_compression="zstd", buffer=16 << 20)
    c = cycle_mod.Cycle(svc, src, dst)
    cp = c.survey(take_snapshot=True)
    c.take_snapshots(cp)
    fp = dataclasses.replace(cp.filesystems[0], encrypted=True)
    c.send(fp)
    assert "-w" in streams[0]["sender"]
    assert streams[0]["compressor"] is None
    assert streams[0]["receiver"][2].startswith("mbuffer -q -m 16M | zfs receive ")
    assert any(r.message.endswith("(raw) (wire: uncompressed (raw stream), buffer 16M)")
               for r in caplog.records)
    c.send(cp.filesystems[1])
    assert streams[1]["compressor"] == ["zstd", "-c"]


def test_dry_run_shows_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst, _ = make_world(monkeypatch, ("zstd", "lz4"), ("lz4", "mbuffer"))
    svc = dataclasses.replace(SVC, wire_compression="auto", buffer=128 << 20)
    lines = cycle_mod.dry_run(svc, src, dst).describe()
    assert lines[1] == ('wire: lz4, buffer 128M (raw streams of encrypted filesystems '
                        'uncompressed); asked: wire_compression = "auto", buffer = "128M"')
    assert not [ln for ln in cycle_mod.dry_run(SVC, src, dst).describe()
                if ln.startswith("wire:")]
    svc = dataclasses.replace(SVC, wire_compression="zstd")
    assert 'wire: uncompressed, no buffer; asked: wire_compression = "zstd"' in \
        cycle_mod.dry_run(svc, src, dst).describe()


def test_a_failed_attempt_looks_the_tools_up_again(monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst, streams = make_world(monkeypatch, ("zstd",), ("zstd",))
    svc = dataclasses.replace(SVC, wire_compression="zstd", retries=2)
    real = cycle_mod.pipe
    calls = {"n": 0}

    def flaky(*a: Any, **kw: Any) -> TransferResult:
        calls["n"] += 1
        if calls["n"] == 1:
            dst.tools = ("zstd", "mbuffer")
            raise TransferFailed("cut", argv=[], stderr="", returncode=1, sent=None)
        return real(*a, **kw)

    monkeypatch.setattr(cycle_mod, "pipe", flaky)
    cycle_mod.replicate(dataclasses.replace(svc, buffer=16 << 20), src, dst,
                        sleep=lambda s: None, capabilities=CapabilityCache())
    assert dst.lookups == 2
    assert "mbuffer -q -m 16M" in streams[-1]["receiver"][2]


def test_the_agent_module_keeps_to_its_imports() -> None:
    # capabilities.py (which the agent imports) stays free of the rest of zfsrepl but
    # record (the agent's value classes)
    code = ("import sys; import zfsrepl.capabilities; "
            "print(sorted(m for m in sys.modules if m.startswith('zfsrepl')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ,
                                          "PYTHONPATH": str(Path(agent.__file__).parents[1])})
    assert out.stdout.strip() == "['zfsrepl', 'zfsrepl.capabilities', 'zfsrepl.record']"


def test_a_receive_without_helpers_is_as_before() -> None:
    # a receive without helpers is what it was: RunZfs, exec'd as before
    assert isinstance(decide(RECEIVE, POLICY), RunZfs)
