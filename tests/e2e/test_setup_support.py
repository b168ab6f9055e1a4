"""Helpers for the setup and agent end-to-end tests (no tests here).

Setup runs as the source host's user in a pseudo-terminal (pexpect), the way an
administrator runs it; the root scripts it asks for are run as root on their host.
Everything a test adds outside its area is removed again: its authorized_keys line,
the scripts in the users' homes, the sudo rules it created, the zfs wrapper's rules
(and the wrapper itself where the test installed it).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pexpect

from lab import Area, Lab, LabHost, ZfsreplCli
from zfsrepl import zfswrap

PASSWORD = "zr-Setup-pw-7"
TIMEOUT = 90

# Drops the lines of one marker from the user's authorized_keys, atomically; run as
# that user on its host (standard library only).
_REMOVE_LINE = r"""
import os, sys, tempfile
path = os.path.expanduser("~/.ssh/authorized_keys")
marker = sys.argv[1].encode()
with open(path, "rb") as f:
    lines = f.read().splitlines(keepends=True)
kept = [ln for ln in lines if not (ln.split() and ln.split()[-1] == marker)]
if kept != lines:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(kept))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
"""


def setup_zfs_command(lab: Lab) -> str:
    """The zfs_command setup writes for this lab's users: where rights come from sudo,
    the zfs wrapper it installs (a sudo rule for zfs itself it refuses to write)."""
    if "sudo" in lab.features:
        return f"sudo -n {zfswrap.WRAPPER_PATH}"
    return lab.zfs_command


@dataclass(frozen=True)
class SetupCase:
    """One service set up by a test: its names and where setup puts things."""

    lab: Lab
    area: Area
    repl: ZfsreplCli
    name: str

    @property
    def log_dir(self) -> Path:
        return self.repl.base / "log"

    @property
    def response(self) -> Path:
        return self.repl.base / "response.toml"

    @property
    def marker(self) -> str:
        return f"zfsrepl:{self.name}:{self.lab.src.user}@{self.lab.src.address}"

    @property
    def destination_config_dir(self) -> Path:
        # the hosts share one filesystem here: the destination's copy of the definition
        # (services/NAME.toml there too) needs a folder of its own
        return self.repl.base / "dst-config"

    @property
    def key(self) -> Path:
        return self.repl.config_dir / "keys" / self.lab.src.user / self.name

    @property
    def pairs(self) -> list[tuple[str, str]]:
        # a space in a name: it must survive the forced command and the agent
        return [(f"{self.area.src}/fs1", f"{self.area.dst}/fs1"),
                (f"{self.area.src}/fs 2", f"{self.area.dst}/fs 2")]

    def argv(self, *args: str) -> list[str]:
        return self.repl.argv("--log-dir", str(self.log_dir), *args,
                              "--destination-config-dir", str(self.destination_config_dir))

    def spawn(self, *args: str) -> pexpect.spawn:
        cmd = self.lab.src.command(self.argv(*args))
        child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", timeout=TIMEOUT,
                              dimensions=(60, 300))
        child.logfile_read = io.StringIO()  # the whole transcript, for asserts and failures
        return child


def home_file(host: LabHost, name: str) -> str:
    return host.run(["sh", "-c", 'printf %s "$HOME/$1"', "sh", name]).stdout.decode()


def authorized_keys(lab: Lab) -> bytes:
    return lab.dst.run(["sh", "-c", 'cat "$HOME/.ssh/authorized_keys"']).stdout


def without_other_services(content: bytes, marker: str) -> bytes:
    """The file less other zfsrepl services' lines (other tests add and remove theirs
    at any time): what a test may compare before and after."""
    keep = []
    for line in content.splitlines(keepends=True):
        words = line.split()
        if words and words[-1].startswith(b"zfsrepl:") and words[-1] != marker.encode():
            continue
        keep.append(line)
    return b"".join(keep)


def service_lines(lab: Lab, marker: str) -> list[str]:
    return [ln for ln in authorized_keys(lab).decode().splitlines()
            if ln.split() and ln.split()[-1] == marker]


def listing(host: LabHost, parent: str) -> str:
    """Every dataset and snapshot under `parent` with its GUID and transaction group."""
    return host.zfs("get", "-Hp", "-r", "-o", "name,property,value", "guid,createtxg", parent)


def run_root_steps(child: pexpect.spawn, lab: Lab) -> dict[str, str]:
    """Answer setup's requests for the root scripts; {side: script} of those run."""
    ran = {}
    for side, host in (("source", lab.src), ("destination", lab.dst)):
        i = expect(child, [rf"run the script (\S+) as root on the {side} system",
                          rf"root steps on the {side} system \S+ are done already"])
        if i == 0:
            script = child.match.group(1)
            expect(child, r"it must print ([0-9a-f]{64})")
            digest = child.match.group(1)
            # as the message says: a copy only root can write, checked, then run
            folder = host.root(["mktemp", "-d"]).stdout.decode().strip()
            copy = f"{folder}/{script.rsplit('/', 1)[-1]}"
            try:
                host.root(["install", "-m", "0700", script, copy])
                assert host.root(["sha256sum", copy]).stdout.decode().split()[0] == digest
                host.root(["sh", copy])
            finally:
                host.root(["rm", "-rf", folder])
            ran[side] = script
    return ran


def expect(child: pexpect.spawn, patterns: str | list[str]) -> int:
    """child.expect, failing with what setup printed so far instead of pexpect's dump."""
    try:
        return int(child.expect(patterns))
    except (pexpect.TIMEOUT, pexpect.EOF) as exc:
        raise AssertionError(f"setup did not print {patterns!r} ({type(exc).__name__}); "
                             f"it printed:\n{strip_ansi(transcript(child))}") from None


def transcript(child: pexpect.spawn) -> str:
    log = child.logfile_read
    return log.getvalue() if isinstance(log, io.StringIO) else ""


def finish(child: pexpect.spawn) -> tuple[int, str]:
    """Wait for the end; (exit status, everything it printed)."""
    expect(child, pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, f"setup ended by signal {child.signalstatus}"
    return child.exitstatus, transcript(child)


def replay(case: SetupCase, *extra: str) -> tuple[int, str, dict[str, str]]:
    """`setup -r` of the case's response file, root steps run as asked."""
    child = case.spawn("setup", "-r", str(case.response), "--poll", "0.2", *extra)
    ran = run_root_steps(child, case.lab)
    code, rest = finish(child)
    return code, rest, ran


@contextlib.contextmanager
def cleaned_up(case: SetupCase) -> Iterator[None]:
    """Remove after the test what setup adds outside the test's area."""
    lab = case.lab
    sudoers = [(h, f"/etc/sudoers.d/zfsrepl-{h.user}") for h in lab.hosts]
    wrapper = [(h, d) for h in lab.hosts for d in (zfswrap.INSTALL_DIR, zfswrap.RULES_DIR)]
    # the root script makes the wrapper's parent folder where it is missing
    parent = [(h, os.path.dirname(zfswrap.INSTALL_DIR)) for h in lab.hosts]
    had = [(h, p) for h, p in [*sudoers, *wrapper, *parent]
           if h.root(["test", "-e", p], check=False).returncode == 0]
    try:
        yield
    finally:
        for host, side in ((lab.src, "source"), (lab.dst, "destination")):
            host.root(["rm", "-f",
                       f"{zfswrap.RULES_DIR}/{host.user}/{case.name}.{side}.json"])
        for host, path in wrapper:
            if (host, path) not in had:
                host.root(["rm", "-rf", path])
        for host, path in parent:
            if (host, path) not in had:
                host.root(["rmdir", "--ignore-fail-on-non-empty", path], check=False)
        lab.dst.run(["python3", "-c", _REMOVE_LINE, case.marker])
        lab.src.run(["rm", "-f", home_file(lab.src, f"zfsrepl-root.{case.name}.source.sh")])
        lab.dst.run(["rm", "-f",
                     home_file(lab.dst, f"zfsrepl-root.{case.name}.destination.sh")])
        for host, path in sudoers:
            if (host, path) not in had:
                host.root(["rm", "-f", path])


def mode_and_owner(host: LabHost, path: str) -> tuple[int, str]:
    out = host.root(["stat", "-c", "%a %U", path]).stdout.decode().split()
    return int(out[0], 8), out[1]


def agent_log(case: SetupCase) -> str:
    path = case.log_dir / f"agent.{case.name}.log"
    return case.lab.dst.root(["cat", str(path)]).stdout.decode()


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
