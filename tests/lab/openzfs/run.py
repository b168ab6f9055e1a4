"""Run a command on a host of the OpenZFS lab, standing in for it on this machine.

    python3 run.py LABDIR src|dst user|root CMD...

Runs CMD through the lab's ssh master connection to the VM, in the host's network
namespace there, as its user or root (LABDIR/bin/on-src|on-dst in the VM). stdin,
stdout, stderr and the exit status are CMD's.

ssh does not forward signals, so this process is what the caller signals: on SIGTERM,
SIGINT or SIGHUP it sends the same signal to CMD in the VM and waits for CMD to end.
There, the ssh session's shell writes its PID to a file and sources on-src, which
execs its way to CMD: CMD keeps that PID (and no extra shell runs, which under TCG
costs a tenth of a second or more). If CMD died of that signal (ssh
then exits 255), this process dies of it too, so a Popen's returncode is -SIGNAL as for
a local process. With a terminal on stdin (pexpect), ssh gets one in the VM too (-tt).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Optional


def read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return values


def _die_with_parent() -> None:
    """In the ssh child: SIGTERM when this process ends, even by SIGKILL."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def main(args: list[str]) -> int:
    if len(args) < 4 or args[1] not in ("src", "dst") or args[2] not in ("user", "root"):
        print("usage: run.py LABDIR src|dst user|root CMD...", file=sys.stderr)
        return 2
    labdir, side, who, argv = Path(args[0]), args[1], args[2], args[3:]
    env = read_env(labdir / "lab.env")
    ssh = [
        "ssh", "-S", env["SSH_CONTROL"], "-o", "ControlMaster=no", "-p", env["SSH_PORT"],
        "-i", env["SSH_KEY"], "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
    ]  # fmt: skip
    tty = os.isatty(0)
    pidfile = f"{labdir}/run/pids/{secrets.token_hex(8)}"
    words = [f"{env['LAB_BIN']}/on-{side}", *(["--root"] if who == "root" else []), *argv]
    remote = f"echo $$ > {shlex.quote(pidfile)}; . {shlex.join(words)}"
    child = subprocess.Popen(
        [*ssh, "-tt" if tty else "-T", "root@127.0.0.1", remote],
        # terminal signals (^C) reach CMD through us, not by killing ssh
        start_new_session=not tty,
        preexec_fn=_die_with_parent,
    )
    forwarded: list[int] = []

    def forward(signum: int, _frame: Optional[FrameType]) -> None:
        forwarded.append(signum)
        # CMD may not have written its PID yet: wait for it there, briefly
        script = (
            f"for i in $(seq 1 100); do [ -s {pidfile} ] && break; sleep 0.05; done; "
            f"kill -{signum} $(cat {pidfile}) 2>/dev/null"
        )
        subprocess.run([*ssh, "-T", "root@127.0.0.1", script], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            rc = child.wait()
            break
        except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled by forward()
            time.sleep(0.01)
    if forwarded and rc == 255:
        sig = forwarded[-1]
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
