"""Where commands run: on this machine, or on another over one SSH connection.

Every command is an argv list. For a remote host the argv is quoted word by word
with `shlex.quote` into the single command string ssh hands to the remote shell
(or to the forced command), so names with spaces or shell characters arrive as
they were.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Callable, Protocol

from zfsrepl.config import Endpoint
from zfsrepl.errors import CommandError, ConnectionFailed

SSH_CONNECT_TIMEOUT = 10
# AES-GCM first: with AES-NI it moves a stream ~25 % faster than the default
# chacha20 on these paths. Options from the definition come earlier and win.
SSH_DEFAULT_OPTIONS = (
    "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
    "aes128-ctr,aes256-ctr",
)


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


class Host(Protocol):
    """A place to run commands."""

    label: str

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result: ...

    def command(self, argv: list[str]) -> list[str]:
        """The local argv that runs `argv` on this host (for pipelines)."""
        ...

    def close(self) -> None: ...


def first_line(text: str) -> str:
    """The most telling line of an error output (ZFS wraps messages over two lines)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    if len(lines) >= 2 and lines[0].endswith((" not", " does not", " has been modified")):
        return f"{lines[0]} {lines[1]}"
    return lines[0] if len(lines) == 1 else " ".join(lines[:2])


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate `proc` if it still runs; kill it if it does not go within `grace` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child get SIGTERM when this process dies, however
    it dies (SIGKILL included): Linux's PR_SET_PDEATHSIG. None elsewhere (nothing to
    do there), or where libc cannot be loaded."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _run(argv: list[str], label: str, *, input: bytes | None, timeout: float | None) -> Result:
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise CommandError(f"{label}: command not found: {argv[0]}", argv=argv) from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{label}: timed out after {timeout}s: {shlex.join(argv)}",
                           argv=argv) from None
    return Result(argv, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                  proc.stderr.decode("utf-8", "replace"))


class LocalHost:
    """This machine."""

    def __init__(self, label: str = "localhost") -> None:
        self.label = label

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        result = _run(argv, self.label, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise CommandError(f"{self.label}: {first_line(result.stderr) or shlex.join(argv)}",
                               argv=argv, stderr=result.stderr, returncode=result.returncode)
        return result

    def close(self) -> None:
        pass


class SshHost:
    """A remote host reached over one shared SSH connection (ControlMaster).

    The master connection is opened on first use and closed by `close()`: no
    connection outlives the process, and every command of a cycle reuses it
    (~20 ms a command instead of a new handshake each).
    """

    def __init__(self, endpoint: Endpoint, *, connect_timeout: int = SSH_CONNECT_TIMEOUT,
                 extra_options: tuple[str, ...] = ()) -> None:
        self.endpoint = endpoint
        self.label = f"{endpoint.user}@{endpoint.host}"
        self.connect_timeout = connect_timeout
        self.extra_options = extra_options
        self._dir: str | None = None
        self._master: subprocess.Popen[bytes] | None = None
        self._master_err: IO[bytes] | None = None

    # -- ssh argv ---------------------------------------------------------------

    def _base(self) -> list[str]:
        ep = self.endpoint
        argv = ["ssh"]
        # ssh keeps the first value it sees for an option: the definition's come first.
        for opt in (*ep.ssh_options, *self.extra_options, "BatchMode=yes",
                    f"ConnectTimeout={self.connect_timeout}", "ServerAliveInterval=15",
                    "ServerAliveCountMax=4", "LogLevel=ERROR", *SSH_DEFAULT_OPTIONS):
            argv += ["-o", opt]
        if ep.port:
            argv += ["-p", str(ep.port)]
        if ep.identity:
            argv += ["-i", ep.identity, "-o", "IdentitiesOnly=yes"]
        argv += ["-l", ep.user]
        return argv

    @property
    def control_path(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="zfsrepl-ssh-")
        return os.path.join(self._dir, "cm")

    def connect(self) -> None:
        """Open the master connection, or raise ConnectionFailed saying why not."""
        if self._master is not None and self._master.poll() is None:
            return
        path = self.control_path
        self._master_err = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the master
        argv = [*self._base(), "-M", "-N", "-S", path, "-o", "ControlPersist=no",
                self.endpoint.host]
        # The master dies with this process even when it is killed outright (SIGKILL,
        # OOM): no connection is left behind, reparented to init.
        self._master = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self._master_err,
                                        preexec_fn=die_with_parent())
        deadline = time.monotonic() + self.connect_timeout + 5
        while not os.path.exists(path):
            if self._master.poll() is not None or time.monotonic() > deadline:
                reason = self._master_error() or "connection timed out"
                self._stop_master()
                raise ConnectionFailed(f"cannot connect to {self.label}: {reason}", argv=argv)
            time.sleep(0.01)

    def _master_error(self) -> str:
        if self._master_err is None:
            return ""
        self._master_err.seek(0)
        return first_line(self._master_err.read().decode("utf-8", "replace"))

    def command(self, argv: list[str]) -> list[str]:
        self.connect()
        remote = " ".join(shlex.quote(a) for a in argv)
        return [*self._base(), "-S", self.control_path, "-o", "ControlMaster=no",
                self.endpoint.host, remote]

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        local = self.command(argv)
        result = _run(local, self.label, input=input, timeout=timeout)
        result = Result(argv, result.returncode, result.stdout, result.stderr)
        if result.returncode == 255 and (self._master is None or self._master.poll() is not None):
            raise ConnectionFailed(f"lost the connection to {self.label}: "
                                   f"{first_line(result.stderr) or self._master_error()}",
                                   argv=argv, stderr=result.stderr, returncode=255)
        if check and result.returncode != 0:
            raise CommandError(f"{self.label}: {first_line(result.stderr) or shlex.join(argv)}",
                               argv=argv, stderr=result.stderr, returncode=result.returncode)
        return result

    def _stop_master(self) -> None:
        master, self._master = self._master, None
        if master is not None:
            stop_process(master)
        if self._master_err is not None:
            self._master_err.close()
            self._master_err = None

    def close(self) -> None:
        self._stop_master()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> SshHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
