"""OpenZFS backend: one qemu VM with OpenZFS 2.3, holding the two hosts as network namespaces.

The shell scripts beside this file build the image (build.sh, cached), boot the VM and
set up the lab inside it (setup.sh, guest/setup.sh) and remove it (teardown.sh); this
module drives them and implements :class:`~lab.base.LabHost` on top of run.py, which
runs a command in the VM through the lab's one ssh master connection.

What differs from the zfs-fuse backend, and how tests see it (``lab.features``):

* the users hold `zfs allow` rights (guest/permissions) and run /usr/sbin/zfs directly;
* host processes run in the VM: a Popen's pid is run.py's, which forwards SIGTERM,
  SIGINT and SIGHUP to the command in the VM (see run.py);
* ``mountpoint()`` is a path under LABDIR/mnt, which is the VM's LABDIR/mnt mounted
  here with sshfs; the VM's datasets are mounted at the same paths there.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

from ..base import Lab, LabHost
from ..fuse import SESSION_OWNED, _LabLock, read_env_file

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = Path("/var/tmp/zfsrepl-lab-openzfs")
FEATURES = frozenset({"openzfs", "zfs-allow"})


def lab_dir() -> Path:
    return Path(os.environ.get("ZFSREPL_LAB_OPENZFS_DIR") or DEFAULT_DIR)


def run_script(name: str, *args: str, directory: Path, locked: bool = False) -> str:
    """Run one of the lab scripts as root; its output, or an error carrying it."""
    env = dict(os.environ, ZFSREPL_LAB_OPENZFS_DIR=str(directory))
    if locked:
        env["ZFSREPL_LAB_LOCKED"] = "1"
    proc = subprocess.run(
        ["bash", str(HERE / name), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed ({proc.returncode}):\n{out}")
    return out


class VmHost(LabHost):
    def __init__(self, *, side: str, env: Mapping[str, str], directory: Path) -> None:
        up = side.upper()
        super().__init__(
            name=side,
            address=env[f"{up}_IP"],
            user=env[f"{up}_USER"],
            pool=env[f"{up}_POOL"],
            netns=env[f"{up}_NS"],
        )
        self._dir = directory
        self._mnt = Path(env["LAB_MNT"])
        self._env = env

    def command(
        self, argv: Sequence[str], *, root: bool = False, env: Optional[Mapping[str, str]] = None
    ) -> list[str]:
        cmd = [sys.executable, str(HERE / "run.py"), str(self._dir), self.name]
        cmd.append("root" if root else "user")
        if env:
            cmd += ["env", *(f"{k}={v}" for k, v in env.items())]
        return cmd + list(argv)

    def vm(self, script: str, *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run the shell command ``script`` as root in the VM's own namespace."""
        ssh = [
            "ssh", "-S", self._env["SSH_CONTROL"], "-o", "ControlMaster=no",
            "-p", self._env["SSH_PORT"], "-i", self._env["SSH_KEY"],
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-T", "root@127.0.0.1",
        ]  # fmt: skip
        proc = subprocess.run(
            [*ssh, script],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"in the VM: {script} failed ({proc.returncode}):\n"
                + proc.stdout.decode("utf-8", "replace")
                + proc.stderr.decode("utf-8", "replace")
            )
        return proc

    def _sshd(self, *args: str) -> None:
        words = ["env", f"ZFSREPL_LAB_DIR={self._dir}", "bash", f"{self._dir}/scripts/sshd.sh"]
        self.vm(shlex.join([*words, *args]))

    def stop_sshd(self) -> None:
        self._sshd("stop", self.name)

    def start_sshd(self) -> None:
        self._sshd("start", self.name)

    @contextlib.contextmanager
    def password_login(self, password: str) -> Iterator[None]:
        self._sshd("password-on", self.name, password)
        try:
            yield
        finally:
            self._sshd("password-off", self.name)

    def mountpoint(self, fs: str) -> Path:
        props = dict(
            line.split("\t", 1)
            for line in self.zfs("get", "-H", "-o", "property,value", "mounted,mountpoint", fs)
            .strip()
            .splitlines()
        )
        if props.get("mounted") != "yes":
            raise RuntimeError(f"{fs} is not mounted ({props})")
        path = Path(props["mountpoint"])
        if self._mnt not in path.parents:
            raise RuntimeError(f"{fs} is mounted at {path}, outside {self._mnt} (the sshfs mount)")
        return path


class VmLab(Lab):
    backend = "openzfs"
    features = FEATURES

    def __init__(self, directory: Path) -> None:
        env = read_env_file(directory / "lab.env")
        super().__init__(
            src=VmHost(side="src", env=env, directory=directory),
            dst=VmHost(side="dst", env=env, directory=directory),
            bin_dir=Path(env["LAB_BIN"]),
            known_hosts=Path(env["KNOWN_HOSTS"]),
            work_dir=Path(env["LAB_WORK"]),
        )
        self.dir = directory

    def sync_code(self) -> None:
        run_script("setup.sh", "--sync-code", directory=self.dir)


@contextlib.contextmanager
def openzfs_lab_session(
    *, keep: bool = False, directory: Optional[Path] = None, wait: float = 3600.0
) -> Iterator[VmLab]:
    """Have the VM lab to ourselves for a test session, building and booting it if needed.

    As :func:`lab.fuse.fuse_lab_session`: a lab this session set up is torn down at its
    end unless ``keep`` (the cached image stays); one set up by hand is left standing.
    """
    directory = directory or lab_dir()
    lock = _LabLock(Path(f"{directory}.lock"))
    lock.acquire(wait)
    try:
        fresh = not (directory / "lab.env").exists()
        try:
            run_script("setup.sh", directory=directory, locked=True)
        except BaseException:
            if fresh and not keep:
                run_script("teardown.sh", directory=directory, locked=True)
            raise
        if fresh:
            (directory / SESSION_OWNED).touch()
        lab = VmLab(directory)
        try:
            yield lab
        finally:
            lab.stop_children()
            if not keep and (directory / SESSION_OWNED).exists():
                run_script("teardown.sh", directory=directory, locked=True)
    finally:
        lock.release()
