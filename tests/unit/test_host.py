"""host.py: the ControlMaster's lifetime (it must never outlive zfsrepl)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from zfsrepl.host import die_with_parent

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PR_SET_PDEATHSIG is Linux's")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of ours counts as gone; reap it if it is one
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return _state(pid) in ("Z", "X", "")
    return done == pid


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid) or _state(pid) in ("Z", "X", ""):
            return True
        time.sleep(0.02)
    return False


# A parent that starts `sleep` the way SshHost starts its master, prints the child's
# pid and waits to be killed.
PARENT = """
import subprocess, sys, time
from zfsrepl.host import die_with_parent
child = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent())
print(child.pid, flush=True)
time.sleep(60)
"""


@linux_only
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_the_child_dies_with_its_parent_however_the_parent_dies(how: int) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not gone(child)
        parent.send_signal(how)
        parent.wait(timeout=10)
        assert wait_gone(child), "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_without_pdeathsig_the_preexec_is_none_or_callable() -> None:
    fn = die_with_parent()
    if sys.platform.startswith("linux"):
        assert callable(fn)
    else:
        assert fn is None


def test_a_child_whose_parent_lives_on_keeps_running() -> None:
    child = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent())
    try:
        time.sleep(0.2)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
