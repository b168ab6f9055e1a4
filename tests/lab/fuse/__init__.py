"""zfs-fuse backend: two network namespaces sharing this machine's zfs-fuse daemon.

The shell scripts beside this file build and remove the lab (see setup.sh); this
module drives them and implements :class:`~lab.base.LabHost` on top of the
``on-src``/``on-dst`` wrappers they install.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

from ..base import Lab, LabHost

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = Path("/var/tmp/zfsrepl-lab")
# present while the lab was set up by a test session, which then also tears it down
SESSION_OWNED = "run/set-up-by-tests"


def lab_dir() -> Path:
    return Path(os.environ.get("ZFSREPL_LAB_DIR") or DEFAULT_DIR)


def run_script(name: str, *args: str, directory: Path, locked: bool = False) -> str:
    """Run one of the lab scripts as root; its output, or an error carrying it."""
    env = dict(os.environ, ZFSREPL_LAB_DIR=str(directory))
    if locked:  # the caller holds the lab lock (see common.sh: lab_lock)
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


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return values


class FuseHost(LabHost):
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
        self._wrapper = Path(env["LAB_BIN"]) / f"on-{side}"

    def command(
        self, argv: Sequence[str], *, root: bool = False, env: Optional[Mapping[str, str]] = None
    ) -> list[str]:
        cmd = [str(self._wrapper)]
        if root:
            cmd.append("--root")
        if env:
            cmd += ["env", *(f"{k}={v}" for k, v in env.items())]
        return cmd + list(argv)

    def stop_sshd(self) -> None:
        run_script("sshd.sh", "stop", self.name, directory=self._dir)

    def start_sshd(self) -> None:
        run_script("sshd.sh", "start", self.name, directory=self._dir)

    @contextlib.contextmanager
    def password_login(self, password: str) -> Iterator[None]:
        dropin = self._dir / "ssh" / str(self.netns) / "sshd_config.d" / "50-password.conf"
        shadow = subprocess.run(
            ["getent", "shadow", self.user], capture_output=True, text=True, check=True
        ).stdout
        # the hash and the day of the last change, which chpasswd stamps with today
        saved_hash, saved_day = shadow.split(":")[1:3]
        dropin.write_text("PasswordAuthentication yes\n")
        try:
            subprocess.run(
                ["chpasswd"], input=f"{self.user}:{password}\n", text=True, check=True
            )
            run_script("sshd.sh", "restart", self.name, directory=self._dir)
            yield
        finally:
            dropin.unlink()
            subprocess.run(["usermod", "-p", saved_hash, self.user], check=True)
            if saved_day:
                subprocess.run(["chage", "-d", saved_day, self.user], check=True)
            run_script("sshd.sh", "restart", self.name, directory=self._dir)

    def mountpoint(self, fs: str) -> Path:
        props = dict(
            line.split("\t", 1)
            for line in self.zfs("get", "-H", "-o", "property,value", "mounted,mountpoint", fs)
            .strip()
            .splitlines()
        )
        if props.get("mounted") != "yes":
            raise RuntimeError(f"{fs} is not mounted ({props})")
        return Path(props["mountpoint"])


class FuseLab(Lab):
    backend = "fuse"
    features = frozenset({"local-processes", "sudo"})

    def __init__(self, directory: Path) -> None:
        env = read_env_file(directory / "lab.env")
        super().__init__(
            src=FuseHost(side="src", env=env, directory=directory),
            dst=FuseHost(side="dst", env=env, directory=directory),
            bin_dir=Path(env["LAB_BIN"]),
            known_hosts=Path(env["KNOWN_HOSTS"]),
            work_dir=Path(env["LAB_WORK"]),
        )
        self.dir = directory

    def sync_code(self) -> None:
        run_script("setup.sh", "--sync-code", directory=self.dir)


class _LabLock:
    """The flock on ``LABDIR.lock`` that the scripts take too (common.sh: lab_lock).

    A test session holds it for its whole length: tests stop sshds and enable
    passwords, which would break the tests of another session using the lab at the
    same time. Teardown deletes the file, so after locking we check that the file we
    hold is still the one at the path.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another test session has held the lab ({self.path}) for {timeout:.0f} s"
                    ) from None
                time.sleep(0.5)
                continue
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self.fd = fd
                    return
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def fuse_lab_session(
    *, keep: bool = False, directory: Optional[Path] = None, wait: float = 3600.0
) -> Iterator[FuseLab]:
    """Have the lab to ourselves for a test session, setting it up if needed.

    A second session on the machine waits (up to ``wait`` seconds) until the first
    is done. A lab set up by a test session is torn down at the end of the first
    session without ``keep``; one set up by hand (setup.sh, scripts/test) is only
    repaired if needed, and left standing.
    """
    directory = directory or lab_dir()
    lock = _LabLock(Path(f"{directory}.lock"))
    lock.acquire(wait)
    try:
        fresh = not (directory / "lab.env").exists()
        run_script("setup.sh", directory=directory, locked=True)  # creates or repairs
        if fresh:
            (directory / SESSION_OWNED).touch()
        lab = FuseLab(directory)
        lab.sync_code()
        try:
            yield lab
        finally:
            lab.stop_children()
            if not keep and (directory / SESSION_OWNED).exists():
                run_script("teardown.sh", directory=directory, locked=True)
    finally:
        lock.release()
