"""`zfsrepl runonce` stopped from outside in the middle of a transfer: no ssh
ControlMaster (nor any ssh using its control socket) may be left behind.

SIGTERM unwinds the command like Ctrl-C (the `with SshHost` closes the master);
SIGKILL cannot be caught, so the master is started to die with its parent
(PR_SET_PDEATHSIG on Linux)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import TypeVar

import pytest

from lab import Area, Lab, ZfsreplCli, wait_for, write_tree

T = TypeVar("T")

pytestmark = pytest.mark.backends("fuse", "openzfs")


def ssh_processes(lab: Lab) -> list[str]:
    """`pid args` of the source user's ssh processes that use a zfsrepl control socket."""
    out = lab.src.run(["ps", "-u", lab.src.user, "-o", "pid=,args="]).stdout.decode()
    return [line.strip() for line in out.splitlines()
            if re.search(r"\bssh\b", line) and "zfsrepl-ssh-" in line]


def control_paths(lines: list[str]) -> set[str]:
    return {m.group(1) for line in lines for m in [re.search(r"-S (\S+)", line)] if m}



@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_runonce_stopped_mid_transfer_leaves_no_ssh_master(
        lab: Lab, area: Area, repl: ZfsreplCli, tmp_path: Path, signum: int) -> None:
    if signum == signal.SIGKILL and "local-processes" not in lab.features:
        pytest.skip("SIGKILL reaches zfsrepl itself only where hosts are local processes")
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    lab.src.zfs("create", src)
    # ~4 MiB of incompressible data at 256 KiB/s: the send lasts ~15 s.
    write_tree(lab.src.mountpoint(src), seed=7, n_files=8, size=1024 * 1024)
    repl.write_service(filesystems=[(src, dst)], retries=1, bandwidth_limit="256K")
    before = control_paths(ssh_processes(lab))

    out = tmp_path / "runonce.out"
    with open(out, "wb") as sink:
        proc = lab.src.popen(repl.argv("runonce", "testrepl"), stdout=sink.fileno(),
                             stderr=subprocess.STDOUT)
    try:
        ours = wait_for("runonce's ControlMaster",
                        lambda: control_paths(
                            [ln for ln in ssh_processes(lab) if " -M " in f" {ln} "]) - before)
        wait_for("the transfer to start", lambda: "starting " in out.read_text(errors="replace"))
        time.sleep(1.0)  # in the stream
        assert proc.poll() is None, out.read_text(errors="replace")
        proc.send_signal(signum)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text(errors="replace")
    if signum == signal.SIGTERM:
        assert code == 143, text
        assert "zfsrepl: terminated" in text
    else:
        assert code == -signal.SIGKILL

    def none_left() -> bool:
        return not any(p in ln for ln in ssh_processes(lab) for p in ours)

    folders = [str(Path(path).parent) for path in ours]
    try:
        try:
            wait_for("the ssh processes of the killed runonce to go", none_left, timeout=20)
        except AssertionError:
            raise AssertionError(f"left running: {ssh_processes(lab)}") from None
        if signum == signal.SIGTERM:
            # an orderly stop also removes the control socket's folder
            left = [f for f in folders if lab.src.root(["test", "-e", f], check=False)
                    .returncode == 0]
            assert not left, left
    finally:
        # SIGKILL leaves the folder behind (nothing runs in the killed process): the
        # test removes it, so the machine is left as it was found.
        lab.src.root(["rm", "-rf", "--", *folders])
