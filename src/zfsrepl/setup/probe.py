"""What a host offers for ZFS rights, found out as the service's user there.

`zfs allow` delegation is used where it works. zfs-fuse (and any ZFS a non-root
user cannot talk to at all) has none that works: there a sudo rule limited to the
zfs binary gives the rights, and the definition's zfs_command becomes
`sudo -n /path/to/zfs`. This runs on each host (locally, or through
`zfsrepl setup-remote probe` over the setup's login), so it imports nothing heavy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from zfsrepl.capabilities import SYSTEM_ZFS_PATHS

_NO_ALLOW = ("pyzfs", "unrecognized command", "failed to initialize", "Permission denied")


@dataclass(frozen=True)
class ZfsProbe:
    zfs_path: str | None
    allow: bool  # the user can run zfs itself and `zfs allow` works here
    home: str

    @property
    def zfs_command(self) -> str:
        """The definition's zfs_command for this host."""
        if not self.allow:
            from zfsrepl.zfswrap import WRAPPER_PATH  # not at import: the probe stays light

            return f"sudo -n {WRAPPER_PATH}"
        return self.zfs_path or "zfs"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ZfsProbe:
        return cls(zfs_path=data.get("zfs_path"), allow=bool(data.get("allow")),
                   home=str(data.get("home", "")))


def find_zfs() -> str | None:
    for path in SYSTEM_ZFS_PATHS:  # before PATH
        if os.access(path, os.X_OK):
            return path
    return shutil.which("zfs")


def allow_works(output: str, returncode: int) -> bool:
    """Whether `zfs allow` (no arguments, as the user) shows a working delegation.

    OpenZFS and Solaris print its usage (exit 2); zfs-fuse says its pyzfs helper is
    missing; a ZFS the user cannot reach fails to initialise.
    """
    if any(text in output for text in _NO_ALLOW):
        return False
    return returncode in (0, 2) and "allow" in output


def probe() -> ZfsProbe:
    path = find_zfs()
    allow = False
    if path:
        try:
            proc = subprocess.run([path, "allow"], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=30, check=False)
            allow = allow_works((proc.stdout + proc.stderr).decode("utf-8", "replace"),
                                proc.returncode)
        except (OSError, subprocess.TimeoutExpired):
            allow = False
    return ZfsProbe(zfs_path=path, allow=allow, home=os.path.expanduser("~"))
