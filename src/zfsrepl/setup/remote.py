"""The setup's own login to the destination, as the destination user.

It is an ordinary login (the user's own keys, or the password OpenSSH asks on the
terminal), never the service key, whose forced command would send every request
to the agent. One master connection serves the whole setup, so the password is
asked once. On the destination, the steps run as `zfsrepl setup-remote ...`
(see cli/setup.py) with their data as JSON on standard input.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import replace
from typing import Any

from zfsrepl import zfserrors
from zfsrepl.config import Endpoint
from zfsrepl.errors import CommandError, ConnectionFailed
from zfsrepl.host import Host, SshHost, first_line
from zfsrepl.setup.probe import ZfsProbe
from zfsrepl.setup.rootscript import RootStep


def dataset_state(host: Host, zfs_argv: list[str], name: str) -> str | None:
    """None if `name` exists on `host`, "missing", or why it cannot be told (rights)."""
    try:
        result = host.run([*zfs_argv, "list", "-H", "-o", "name", name], check=False)
    except ConnectionFailed:
        raise
    except CommandError as exc:  # e.g. zfs or sudo not installed
        return str(exc)
    if result.returncode == 0 and result.stdout.strip() == name:
        return None
    if zfserrors.says(result.stderr, zfserrors.DatasetMissing):
        return "missing"
    return first_line(result.stderr) or f"exit code {result.returncode}"


class LoginHost(SshHost):
    """An SshHost that may ask for a password or a host key on the terminal."""

    def __init__(self, endpoint: Endpoint, ssh_options: tuple[str, ...] = ()) -> None:
        # ssh keeps the first value of an option: these come before BatchMode=yes.
        super().__init__(replace(endpoint, identity=None),
                         extra_options=(*ssh_options, "BatchMode=no"))

    def connect(self) -> None:
        if self._master is not None and self._master.poll() is None:
            return
        path = self.control_path
        self._master_err = tempfile.TemporaryFile()  # noqa: SIM115 - lives with the master
        argv = [*self._base(), "-M", "-N", "-S", path, "-o", "ControlPersist=no",
                self.endpoint.host]
        # ssh asks passwords and host keys on /dev/tty, not on stdin: no deadline
        # here, a person is typing. The master ends when it fails or when we close it.
        self._master = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self._master_err)
        while not os.path.exists(path):
            if self._master.poll() is not None:
                reason = self._master_error() or "ssh ended"
                self._stop_master()
                raise ConnectionFailed(f"cannot log in as {self.label}: {reason}", argv=argv)
            time.sleep(0.05)


class Destination:
    """The setup steps run on the destination over one login."""

    def __init__(self, login: LoginHost) -> None:
        self.login = login
        self.label = login.label
        self._zfsrepl: str | None = None

    def close(self) -> None:
        self.login.close()

    @property
    def zfsrepl(self) -> str:
        """Absolute path of zfsrepl there: the forced command must not depend on PATH."""
        if self._zfsrepl is None:
            result = self.login.run(["sh", "-c", "command -v zfsrepl"], check=False)
            path = result.stdout.strip()
            if result.returncode != 0 or not path.startswith("/"):
                raise CommandError(f"zfsrepl is not installed for {self.label} (not on its "
                                   "PATH): install it there first")
            self._zfsrepl = path
        return self._zfsrepl

    def helper(self, action: str, *args: str, data: Any = None) -> Any:
        stdin = json.dumps(data).encode("utf-8") if data is not None else b""
        result = self.login.run([self.zfsrepl, "setup-remote", action, *args], input=stdin,
                                check=False)
        if result.returncode != 0:
            raise CommandError(f"{self.label}: zfsrepl setup-remote {action} failed: "
                               f"{first_line(result.stderr) or result.stdout.strip()}")
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise CommandError(f"{self.label}: zfsrepl setup-remote {action} printed "
                               f"{result.stdout[:200]!r}; is zfsrepl the same version "
                               "there?") from None

    def probe(self) -> ZfsProbe:
        return ZfsProbe.from_json(self.helper("probe"))

    def parent_state(self, zfs_argv: list[str], parent: str) -> str | None:
        """None if `parent` exists there, "missing", or why it cannot be told."""
        return dataset_state(self.login, zfs_argv, parent)

    def install_key(self, line: str, marker: str) -> bool:
        return bool(self.helper("install-key", data={"line": line, "marker": marker})
                    ["changed"])

    def write_file(self, name: str, content: str, mode: int) -> tuple[str, bool]:
        """Write `name` under the user's home there; (its full path, changed)."""
        out = self.helper("write-file", data={"name": name, "content": content, "mode": mode})
        return str(out["path"]), bool(out["changed"])

    def root_problems(self, step: RootStep) -> list[str]:
        return [str(p) for p in self.helper("check-root", data=step.to_json())["problems"]]
