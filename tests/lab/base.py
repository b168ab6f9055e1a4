"""The backend-neutral lab interface that e2e tests use.

A lab is two "hosts", ``src`` and ``dst``, each with a pool, a Unix user and an sshd.
Scenario tests only talk to :class:`Lab` and :class:`LabHost`, so the same tests run
on every backend: ``fuse`` (zfs-fuse in network namespaces of this machine) and
``openzfs`` (the same hosts as network namespaces in a VM with OpenZFS 2.3). What
really differs between them is in :attr:`Lab.features`.
"""

from __future__ import annotations

import abc
import contextlib
import signal
import subprocess
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

DEFAULT_TIMEOUT = 120.0


class LabCommandError(subprocess.CalledProcessError):
    """A lab command failed; unlike its base class, its message shows what it printed."""

    def __init__(self, host: str, proc: subprocess.CompletedProcess[bytes]) -> None:
        super().__init__(proc.returncode, proc.args, proc.stdout, proc.stderr)
        self.host = host

    @property
    def text(self) -> str:
        """stderr and stdout as text, for matching error messages."""
        return _text(self.stderr) + _text(self.stdout)

    def __str__(self) -> str:
        out = f"on {self.host}: {_argv_text(self.cmd)} exited with {self.returncode}"
        for label, data in (("stderr", self.stderr), ("stdout", self.stdout)):
            body = _text(data).strip()
            if body:
                out += f"\n--- {label}:\n{body[-4000:]}"
        return out


class LabHost(abc.ABC):
    """One lab host: where its user runs commands, and what root can do there."""

    def __init__(
        self, *, name: str, address: str, user: str, pool: str, netns: Optional[str]
    ) -> None:
        self.name = name  # "src" or "dst"
        self.address = address  # where the other host reaches its sshd
        self.user = user
        self.pool = pool
        self.netns = netns  # None where the host is not a network namespace
        self._children: list[tuple[list[str], subprocess.Popen[bytes]]] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.user}@{self.address}>"

    # -- what a backend provides -------------------------------------------------------

    @abc.abstractmethod
    def command(
        self, argv: Sequence[str], *, root: bool = False, env: Optional[Mapping[str, str]] = None
    ) -> list[str]:
        """The local argv that runs ``argv`` on this host as its user (or root).

        The environment there is clean (HOME, USER, LANG, PATH with the lab's bin dir
        first, so ``zfs`` and ``zfsrepl`` resolve) plus ``env``. A Popen of it stands for
        the command: SIGTERM, SIGINT and SIGHUP sent to its pid reach the command, and
        its exit status is the command's. Where hosts are local processes
        (``"local-processes"`` in :attr:`Lab.features`) every wrapper execs, so the pid
        is the command itself; elsewhere it is a local process that forwards them.
        """

    @abc.abstractmethod
    def stop_sshd(self) -> None:
        """Take this host's sshd down, with the sessions it serves: the host is "down" for ssh."""

    @abc.abstractmethod
    def start_sshd(self) -> None:
        """Start this host's sshd again (no-op if it runs); returns once it listens."""

    @abc.abstractmethod
    def password_login(self, password: str) -> contextlib.AbstractContextManager[None]:
        """Within the context, this host's sshd accepts passwords and its user has ``password``."""

    @abc.abstractmethod
    def mountpoint(self, fs: str) -> Path:
        """Local path of the mounted filesystem ``fs``; the test process can read and
        write it directly."""

    # -- built on the above -------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        input: Optional[bytes] = None,
        env: Optional[Mapping[str, str]] = None,
        check: bool = True,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` as this host's user on this host; raise LabCommandError if ``check``."""
        return self._run(self.command(argv, env=env), argv, input, check, timeout)

    def root(
        self,
        argv: Sequence[str],
        *,
        input: Optional[bytes] = None,
        env: Optional[Mapping[str, str]] = None,
        check: bool = True,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` as root on this host (administration: ``zfs create``, ``rm`` ...)."""
        return self._run(self.command(argv, root=True, env=env), argv, input, check, timeout)

    def processes(self) -> list[str]:
        """``pid args`` of every process in this host's network namespace. Another lab on
        the machine (a second VM, the other backend) runs commands naming the same pools
        and areas: they are not this host's, and a test must neither count nor kill them."""
        here = _text(self.root(["readlink", "/proc/self/ns/net"]).stdout).strip()
        out = _text(self.root(["ps", "-eo", "netns=,pid=,args="]).stdout)
        found = []
        for line in out.splitlines():
            netns, _, rest = line.strip().partition(" ")
            if f"net:[{netns}]" == here and "ps -eo" not in rest:
                found.append(rest.strip())
        return found

    def zfs(self, *args: str, timeout: Optional[float] = DEFAULT_TIMEOUT) -> str:
        """``zfs ARGS`` as root on this host; its stdout."""
        return _text(self.root(["zfs", *args], timeout=timeout).stdout)

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[int] = subprocess.DEVNULL,
        stdout: Optional[int] = subprocess.PIPE,
        stderr: Optional[int] = subprocess.PIPE,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as this host's user in the background.

        The Popen stands for the command (see :meth:`command`): ``terminate()``
        delivers SIGTERM to it. Read its pipes (``communicate()``) or it may block on a
        full pipe. Processes still running after the test are stopped by
        :meth:`stop_children`.
        """
        proc = subprocess.Popen(
            self.command(argv, env=env), stdin=stdin, stdout=stdout, stderr=stderr
        )
        self._children.append((list(argv), proc))
        return proc

    def stop_children(self, timeout: float = 5.0) -> list[list[str]]:
        """Stop every process from :meth:`popen` that still runs (SIGTERM, then SIGKILL).

        Returns the argvs of those that had to be stopped.
        """
        stopped: list[list[str]] = []
        for argv, proc in self._children:
            if proc.poll() is None:
                stopped.append(argv)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
        self._children.clear()
        return stopped

    def _run(
        self,
        local_argv: list[str],
        argv: Sequence[str],
        input: Optional[bytes],
        check: bool,
        timeout: Optional[float],
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            local_argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        # report the command as the test wrote it, not the local wrapper
        result = subprocess.CompletedProcess(list(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise LabCommandError(self.name, result)
        return result


class Lab(abc.ABC):
    """A source and a destination host, plus what is shared between them."""

    backend: str  # "fuse", "openzfs"
    # What tests may rely on beyond the common interface:
    #   "local-processes"  host processes run on this machine: a Popen's pid is the
    #                      command, and they share this machine's mount table
    #   "sudo"             users reach zfs through a sudo rule for /usr/sbin/zfs (zfs-fuse)
    #   "zfs-allow"        users run /usr/sbin/zfs with `zfs allow` rights
    #                      (lab.zfs.DELEGATED_PERMISSIONS)
    #   "openzfs"          current OpenZFS: bookmarks, resumable and raw sends, holds
    #                      listing, `zfs list -p` ...; zfs-fuse has none of these
    features: frozenset[str] = frozenset()

    def __init__(
        self, *, src: LabHost, dst: LabHost, bin_dir: Path, known_hosts: Path, work_dir: Path
    ) -> None:
        self.src = src
        self.dst = dst
        self.bin_dir = bin_dir  # zfs, zpool, zfsrepl wrappers, first on the users' PATH
        self.known_hosts = known_hosts  # host keys of both hosts (already in the users' ~/.ssh)
        self.work_dir = work_dir  # on the hosts: per-test config/state dirs go below it

    @property
    def hosts(self) -> tuple[LabHost, LabHost]:
        return (self.src, self.dst)

    @property
    def zfs_command(self) -> str:
        """A definition's ``zfs_command`` for this lab's users, as setup would choose it:
        through the sudo rule, or the zfs binary itself where `zfs allow` works."""
        return "sudo -n /usr/sbin/zfs" if "sudo" in self.features else "/usr/sbin/zfs"

    @abc.abstractmethod
    def sync_code(self) -> None:
        """Make the hosts' ``zfsrepl`` run the work tree's current ``src/zfsrepl``."""

    def stop_children(self) -> list[list[str]]:
        """Stop background processes the hosts' :meth:`LabHost.popen` left running."""
        return [argv for host in self.hosts for argv in host.stop_children()]

    def set_link(self, up: bool) -> None:
        """Set the link between the hosts (each host's end of their veth pair) up or down.

        Down, packets between the hosts go nowhere, as on a cut cable: open TCP
        connections stay open until a keep-alive or a timeout gives up on them. Runs in
        the hosts' network namespaces, so it works on every backend; the lab's own
        control channels (the VM's ssh) do not use this link.
        """
        state = "up" if up else "down"
        for host in self.hosts:
            host.root(["sh", "-c", _SET_VETHS, "sh", state])

    @contextlib.contextmanager
    def link_down(self) -> Iterator[None]:
        """The link between the hosts down within the context, up again after, always."""
        try:
            self.set_link(False)
            yield
        finally:
            self.set_link(True)


# Sets every veth of the current network namespace (a lab host has one) to "$1".
_SET_VETHS = """
for dev in $(ip -o link show type veth | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
    ip link set "$dev" "$1" || exit 1
done
"""


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return "" if data is None else str(data)


def _argv_text(argv: object) -> str:
    if isinstance(argv, (list, tuple)):
        return " ".join(str(a) for a in argv)
    return str(argv)

