"""host.py: the ControlMaster's lifetime (it must never outlive zfsrepl)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zfsrepl.config import Endpoint
from zfsrepl.host import SshHost, die_with_parent, login_refused, ssh_error

from .processes import gone, wait_gone

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PR_SET_PDEATHSIG is Linux's")


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


# A stand-in for ssh: the master (-M) makes its control socket only when the file
# named by GO exists (the handshake "ends"), then waits; a command through the master
# prints its last word.
FAKE_SSH = """#!/bin/sh
case " $* " in
*" -M "*)
    while [ "$1" != -S ]; do shift; done
    while [ ! -e "$GO" ]; do sleep 0.01; done
    : > "$2"
    exec sleep 60 ;;
*)
    for last; do :; done
    echo "ran $last" ;;
esac
"""


def test_start_opens_the_master_without_waiting_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    go = tmp_path / "go"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("GO", str(go))
    with SshHost(Endpoint("h", "u")) as host:
        host.start()  # returns although the handshake has not ended
        master = host._master
        assert master is not None and master.poll() is None
        assert not os.path.exists(host.control_path)
        host.start()  # a second start reuses the master under way
        assert host._master is master
        go.touch()
        assert host.run(["echo"]).stdout.strip() == "ran echo"  # waited for the socket
        assert host._master is master
    assert wait_gone(master.pid)


def test_no_writable_temporary_folder_is_one_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from zfsrepl.errors import ZfsreplError

    def full(*args: object, **kwargs: object) -> str:
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp']")

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    with SshHost(Endpoint("h", "u")) as host, pytest.raises(ZfsreplError) as exc:
        host.start()
    assert "cannot make a folder for the ssh connection to u@h" in str(exc.value)
    assert "set TMPDIR" in str(exc.value)


CHANGED_KEY = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Host key for 198.51.100.12 has changed and you have requested strict checking.
Host key verification failed.
"""


def test_a_changed_host_key_is_one_line_naming_the_host_and_what_to_check() -> None:
    msg = ssh_error(CHANGED_KEY, "dsthost")
    assert "@" not in msg and "\n" not in msg
    assert msg.startswith("host key verification failed for dsthost: its host key is not "
                          "the one known_hosts lists for it")
    assert "ssh-keygen -R dsthost" in msg
    unknown = ssh_error("No ED25519 host key is known for dsthost and you have requested "
                        "strict checking.\nHost key verification failed.\n", "dsthost")
    assert "its host key is not in known_hosts" in unknown
    assert ssh_error("ssh: connect to host x port 22: Connection refused\n", "x") == \
        "ssh: connect to host x port 22: Connection refused"


@pytest.mark.parametrize("text,refused", [
    ("dst@h: Permission denied (publickey).\n", True),
    ("dst@h: Permission denied (publickey,password).\n", True),
    ("Received disconnect from 198.51.100.12 port 22:2: Too many authentication failures\n",
     True),
    ("ssh: connect to host h port 22: Connection refused\n", False),
    ("ssh: connect to host h port 22: Connection timed out\n", False),
    ("Host key verification failed.\n", False),
    ("", False),
])
def test_a_refused_login_is_told_from_an_unreachable_host(text: str, refused: bool) -> None:
    assert login_refused(text) is refused
