"""What a monitoring system and an operator read from a real service between the lab's
hosts: `status` and `check` exit codes while in sync and with the destination gone,
and --debug showing each command run."""

from __future__ import annotations

import json
import re

import pytest

from lab import Area, Lab, ZfsreplCli, write_tree

# zfs-fuse only: stopping the destination's sshd is done on this machine's lab.
pytestmark = pytest.mark.backends("fuse")

SERVICE = "testrepl"


def test_status_and_check_in_sync_then_with_the_destination_gone(
        lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    lab.src.zfs("create", src)
    write_tree(lab.src.mountpoint(src), seed=1)
    repl.write_service(filesystems=[(src, dst)], retries=1, interval=3600)

    never = repl.run("check", SERVICE, check=False)
    assert never.returncode == 1, never.stdout  # nothing replicated yet: WARNING
    assert never.stdout.decode().startswith("ZFSREPL WARNING - testrepl: ")

    repl.run("runonce", SERVICE)
    ok = repl.run("check", SERVICE, "--max-lag", "7200", check=False)
    line = ok.stdout.decode()
    assert ok.returncode == 0, line
    assert re.fullmatch(rf"ZFSREPL OK - testrepl offline, lag \d+ s \| 'lag {src}'=\d+s;"
                        r"7200;7200;0; failed_attempts=0c\n", line), line
    shown = repl.run("status", "--json", SERVICE, check=False)
    assert shown.returncode == 0 and json.loads(shown.stdout)["exit_code"] == 0

    lab.dst.stop_sshd()
    try:
        gone = repl.run("check", SERVICE, check=False)
        status = repl.run("status", SERVICE, check=False)
    finally:
        lab.dst.start_sshd()
    assert gone.returncode == 3, gone.stdout
    assert gone.stdout.decode().startswith(
        "ZFSREPL UNKNOWN - testrepl: could not check the destination: ")
    assert status.returncode == 3 and "health: unknown" in status.stdout.decode()


def test_debug_shows_each_zfs_and_ssh_command(lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    lab.src.zfs("create", src)
    repl.write_service(filesystems=[(src, dst)], retries=1)
    err = repl.run("runonce", "--debug", SERVICE).stderr.decode()
    assert re.search(r" DEBUG \S+: running \S*zfs .*snapshot ", err), err
    assert re.search(r" DEBUG \S+: running ssh ", err), err
    quiet = repl.run("runonce", "-q", SERVICE).stderr.decode()
    assert " INFO " not in quiet and " DEBUG " not in quiet
