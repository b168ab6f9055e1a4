"""Where commands run: on this machine, or on another over one SSH connection.

Every command is an argv list. For a remote host the argv is quoted word by word
with `shlex.quote` into the single command string ssh hands to the remote shell
(or to the forced command), so names with spaces or shell characters arrive as
they were. A pipeline (a receive behind a decompressor or mbuffer) is such argvs
joined by bare `|` (see `pipeline_command`).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Protocol

from zfsrepl.capabilities import WIRE_TOOLS
from zfsrepl.config import Endpoint
from zfsrepl.errors import CommandError, ConnectionFailed, LoginRefused, ZfsreplError
from zfsrepl.log import commands_logger

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


def ssh_error(text: str, host: str) -> str:
    """What ssh's error output says, in one line. A host key that does not match comes
    with a banner of '@' lines that says nothing by itself: it becomes what happened
    and what to check."""
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or \
            "Host key verification failed" in text:
        why = ("its host key is not the one known_hosts lists for it"
               if "HAS CHANGED" in text else "its host key is not in known_hosts")
        return (f"host key verification failed for {host}: {why}; check that {host} is the "
                "host you mean, then put its key in the service user's known_hosts "
                f"(ssh-keygen -R {host}, then ssh to it once, or ssh-keyscan)")
    return first_line(text)


# What ssh says when the host answered and refused to let the user in.
_LOGIN_REFUSED = re.compile(r"permission denied \(|too many authentication failures",
                            re.IGNORECASE)


def login_refused(text: str) -> bool:
    """Whether ssh's error output says the login was refused (rather than the host not
    reached): the one place that tells the two apart."""
    return _LOGIN_REFUSED.search(text) is not None


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


def not_found_hint(command: str) -> str:
    """What to do about a command that is not there: a PATH without /usr/sbin (a plain
    user's, cron's) is the usual cause for zfs."""
    where = "at that path" if "/" in command else f"in PATH={os.environ.get('PATH', '')}"
    if os.path.basename(command) != "zfs":
        return f"command not found: {command} (looked {where}); install it or fix PATH"
    return (f"command not found: {command} (looked {where}); set zfs_command in the "
            "definition's [source] or [destination] table to its full path (e.g. "
            'zfs_command = "/usr/sbin/zfs"), or add its folder to PATH')


def _run(argv: list[str], label: str, *, input: bytes | None, timeout: float | None,
         shown: list[str] | None = None) -> Result:
    """Run `argv` (which stands for `shown`, e.g. through ssh) and wait at most
    `timeout` seconds (None: as long as it takes); a command that runs longer is killed
    and raises CommandError."""
    commands_logger.debug("%s: running %s", label, shlex.join(argv))
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise CommandError(f"{label}: {not_found_hint(argv[0])}", argv=argv) from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{label}: {shlex.join(shown or argv)} did not finish within "
                           f"{timeout:g} s: cut it", argv=argv) from None
    return Result(argv, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                  proc.stderr.decode("utf-8", "replace"))


class LocalHost:
    """This machine. `command_timeout`: how long `run` waits for a command when the
    caller names no timeout (None: as long as it takes)."""

    def __init__(self, label: str = "localhost", *,
                 command_timeout: float | None = None) -> None:
        self.label = label
        self.command_timeout = command_timeout

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        result = _run(argv, self.label, input=input,
                      timeout=self.command_timeout if timeout is None else timeout)
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
    (~20 ms a command instead of a new handshake each). `command_timeout`: how long
    `run` waits for a command when the caller names no timeout (None: as long as it
    takes; a connection whose packets are silently dropped holds a command until the
    keep-alives give up).
    """

    def __init__(self, endpoint: Endpoint, *, connect_timeout: int = SSH_CONNECT_TIMEOUT,
                 extra_options: tuple[str, ...] = (),
                 command_timeout: float | None = None) -> None:
        self.endpoint = endpoint
        self.label = f"{endpoint.user}@{endpoint.host}"
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.extra_options = extra_options
        self._dir: str | None = None
        self._master: subprocess.Popen[bytes] | None = None
        self._master_err: IO[bytes] | None = None
        # parallel transfers share the host: one of them opens a lost master again
        self._connect_lock = threading.Lock()

    # -- ssh argv ---------------------------------------------------------------

    def _base(self) -> list[str]:
        ep = self.endpoint
        argv = ["ssh"]
        # ssh keeps the first value it sees for an option: the definition's come first.
        for opt in (*ep.ssh_options, *self.extra_options, "BatchMode=yes",
                    f"ConnectTimeout={self.connect_timeout}", "ServerAliveInterval=15",
                    "ServerAliveCountMax=4", "LogLevel=ERROR", *SSH_DEFAULT_OPTIONS):
            argv += ["-o", opt]
        if ep.address:
            # `host` is a logical name whose address may move to another node: connect to
            # `address`, check the host key under `host` (known_hosts lists every node's),
            # and not also under the address, which each node answers with its own key.
            argv += ["-o", f"HostName={ep.address}", "-o", f"HostKeyAlias={ep.host}",
                     "-o", "CheckHostIP=no"]
        if ep.port:
            argv += ["-p", str(ep.port)]
        if ep.identity:
            argv += ["-i", ep.identity, "-o", "IdentitiesOnly=yes"]
        argv += ["-l", ep.user]
        return argv

    @property
    def control_path(self) -> str:
        if self._dir is None:
            try:
                self._dir = tempfile.mkdtemp(prefix="zfsrepl-ssh-")
            except OSError as exc:  # no temporary folder is writable: a full disk
                raise ZfsreplError(
                    f"cannot make a folder for the ssh connection to {self.label} in "
                    f"{os.environ.get('TMPDIR') or '/tmp'}: {exc.strerror or exc}; free "
                    "space there, or set TMPDIR to a writable folder") from None
        return os.path.join(self._dir, "cm")

    def start(self) -> None:
        """Begin opening the master connection and return at once: the handshake runs
        while the caller does local work; the first command waits for it (`connect`)."""
        with self._connect_lock:
            self._spawn_master()

    def connect(self) -> None:
        """Open the master connection, or raise ConnectionFailed saying why not."""
        with self._connect_lock:
            self._connect()

    def _spawn_master(self) -> list[str]:
        """Start the master process unless one is running; its argv."""
        path = self.control_path
        argv = [*self._base(), "-M", "-N", "-S", path, "-o", "ControlPersist=no",
                self.endpoint.host]
        if self._master is not None and self._master.poll() is None:
            return argv
        self._master_err = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the master
        # The master dies with this process even when it is killed outright (SIGKILL,
        # OOM): no connection is left behind, reparented to init.
        self._master = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self._master_err,
                                        preexec_fn=die_with_parent())
        return argv

    def _connect(self) -> None:
        if (self._master is not None and self._master.poll() is None
                and os.path.exists(self.control_path)):
            return
        argv = self._spawn_master()
        assert self._master is not None
        path = self.control_path
        deadline = time.monotonic() + self.connect_timeout + 5
        while not os.path.exists(path):
            if self._master.poll() is not None or time.monotonic() > deadline:
                text = self._master_text()
                reason = ssh_error(text, self.endpoint.host) or "connection timed out"
                self._stop_master()
                failure = LoginRefused if login_refused(text) else ConnectionFailed
                raise failure(f"cannot connect to {self.label}: {reason}", argv=argv,
                              stderr=text)
            time.sleep(0.01)

    def _master_text(self) -> str:
        """What the master's ssh printed."""
        if self._master_err is None:
            return ""
        self._master_err.seek(0)
        return self._master_err.read().decode("utf-8", "replace")

    def _master_error(self) -> str:
        return ssh_error(self._master_text(), self.endpoint.host)

    def command(self, argv: list[str]) -> list[str]:
        return self.remote_command(" ".join(shlex.quote(a) for a in argv))

    def remote_command(self, remote: str) -> list[str]:
        """The local argv that hands `remote`, already quoted, to the remote side."""
        self.connect()
        return [*self._base(), "-S", self.control_path, "-o", "ControlMaster=no",
                self.endpoint.host, remote]

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        local = self.command(argv)
        result = _run(local, self.label, input=input, shown=argv,
                      timeout=self.command_timeout if timeout is None else timeout)
        result = Result(argv, result.returncode, result.stdout, result.stderr)
        if result.returncode == 255 and (self._master is None or self._master.poll() is not None):
            raise ConnectionFailed(f"lost the connection to {self.label}: "
                                   f"{first_line(result.stderr) or self._master_error()}",
                                   argv=argv, stderr=result.stderr, returncode=255)
        if check and result.returncode != 0:
            why = first_line(result.stderr) or shlex.join(argv)
            if result.returncode == 127:  # the remote shell found no such command
                why = f"{why}; {not_found_hint(argv[0]).partition('; ')[2]}"
            raise CommandError(f"{self.label}: {why}",
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


# ---------------------------------------------------------------------------- pipelines


def pipeline_text(stages: list[list[str]], *, quiet_helpers: bool) -> str:
    """`stages` as one command line: each argv quoted word by word, joined by ` | `.

    `quiet_helpers` (a remote shell runs it): the standard error of every stage but the
    last goes to /dev/null. When zfs receive fails, the programs before it die of a
    broken pipe and say so; their lines would come first and hide zfs's own message,
    which is what the cycle reports. A helper failing alone cuts the stream, which zfs
    reports. (The agent runs no shell: it gets the stages bare and sorts their error
    output itself.)"""
    texts = []
    for i, argv in enumerate(stages):
        text = " ".join(shlex.quote(a) for a in argv)
        if quiet_helpers and i < len(stages) - 1:
            text += " 2>/dev/null"
        texts.append(text)
    return " | ".join(texts)


def pipeline_command(host: Host, stages: list[list[str]], *, quiet_helpers: bool) -> list[str]:
    """The local argv that runs the pipeline `stages` on `host` (a single stage: just
    `host.command`)."""
    if len(stages) == 1:
        return host.command(stages[0])
    text = pipeline_text(stages, quiet_helpers=quiet_helpers)
    if isinstance(host, SshHost):
        return host.remote_command(text)
    return ["sh", "-c", text]


# ---------------------------------------------------------------------------- wire tools


@dataclass(frozen=True)
class Tools:
    """Which of WIRE_TOOLS a host has, and whether it was asked through the zfsrepl
    agent (then the agent runs a pipeline itself, and wants it without redirections),
    with the requests that agent takes beyond those of every version (its `hello`'s
    "requests", e.g. "destroy-many")."""

    found: frozenset[str] = frozenset()
    agent: bool = False
    requests: frozenset[str] = frozenset()


NO_TOOLS = Tools()


# Looks for each tool on the remote user's PATH the way `which` does: no `command -v`,
# which the Bourne shell of Solaris 10 lacks. One line of output per tool found.
_FIND_SCRIPT = ('IFS=:; for t in {names}; do for d in $PATH; do '
                'if [ -x "$d/$t" ]; then echo "$t"; break; fi; done; done; exit 0')


def agent_hello(text: str) -> dict[str, object] | None:
    """The zfsrepl agent's answer to `hello`, or None if `text` is not one."""
    try:
        reply = json.loads(text)
    except ValueError:
        return None
    if isinstance(reply, dict) and reply.get("agent") == "zfsrepl":
        return reply
    return None


def find_tools(host: Host, names: tuple[str, ...] = WIRE_TOOLS) -> Tools:
    """Which of `names` `host` can run: on this machine from PATH; on another one first
    through the zfsrepl agent's `hello` (a service key runs nothing else), and where no
    agent answers (plain ssh) with one shell command. Two calls at most."""
    if isinstance(host, LocalHost):
        return Tools(frozenset(n for n in names if shutil.which(n)))
    hello = host.run(["hello"], check=False)
    reply = agent_hello(hello.stdout) if hello.returncode == 0 else None
    if reply is not None:
        # an agent older than wire compression reports no tools: it has none to run
        tools = reply.get("tools")
        found = {t for t in tools if t in names} if isinstance(tools, list) else set()
        requests = reply.get("requests")
        taken = {r for r in requests if isinstance(r, str)} if isinstance(requests, list) \
            else set()
        return Tools(frozenset(found), agent=True, requests=frozenset(taken))
    script = _FIND_SCRIPT.format(names=" ".join(names))
    result = host.run(["sh", "-c", script], check=False)
    return Tools(frozenset(ln.strip() for ln in result.stdout.splitlines()
                           if ln.strip() in names))
