"""Typed wrappers over the `zfs` command line of one host.

Only forms that work on every ZFS from the Solaris 10 era (pool v23, zfs-fuse)
to current OpenZFS are used here; richer features are probed, never assumed.
"""

from __future__ import annotations

import re
import time

from zfsrepl.errors import CommandError
from zfsrepl.host import Host, first_line
from zfsrepl.plan import Send
from zfsrepl.snapshots import Snapshot

# zfsrepl:role is read on the filesystems' lines (the interlock, see failover.py);
# ZFS prints "-" for it where it is not set.
ROLE_PROPERTY = "zfsrepl:role"
_LIST_PROPS = ("guid", "createtxg", "creation", "userrefs", ROLE_PROPERTY)
_MISSING_RE = re.compile(r"^cannot open '(.+)': dataset does not exist$")
_BUSY_RETRIES = 20


class Zfs:
    """The zfs command of one host, run as `zfs_argv` (e.g. ["sudo", "-n", "zfs"])."""

    def __init__(self, host: Host, zfs_argv: list[str]) -> None:
        self.host = host
        self.zfs_argv = list(zfs_argv)
        self._props: tuple[str, ...] = _LIST_PROPS

    @property
    def label(self) -> str:
        return self.host.label

    def argv(self, *args: str) -> list[str]:
        return [*self.zfs_argv, *args]

    def run(self, *args: str, check: bool = True) -> str:
        return self.host.run(self.argv(*args), check=check).stdout

    # -- reading ------------------------------------------------------------------

    def snapshots(self, filesystems: list[str]) -> dict[str, list[Snapshot] | None]:
        """Each filesystem's snapshots (None: the filesystem does not exist), in one call."""
        return self.listing(filesystems)[0]

    def listing(self, filesystems: list[str]) -> tuple[dict[str, list[Snapshot] | None],
                                                       dict[str, str]]:
        """`snapshots()`, and the zfsrepl:role of the filesystems where it is set, from
        the same call."""
        if not filesystems:
            return {}, {}
        result = self.host.run(
            self.argv("get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
                      ",".join(self._props), *filesystems), check=False)
        if result.returncode != 0 and "invalid property 'userrefs'" in result.stderr:
            # ZFS before pool version 18 has no holds: list without them.
            self._props = tuple(p for p in self._props if p != "userrefs")
            return self.listing(filesystems)
        self._raise_unless_only_missing(result.returncode, result.stderr, result.argv)

        wanted = set(filesystems)
        present: set[str] = set()
        props: dict[str, dict[str, str]] = {}
        roles: dict[str, str] = {}
        for line in result.stdout.splitlines():
            parts = line.rsplit("\t", 2)
            if len(parts) != 3:
                continue
            name, prop, value = parts
            if "@" in name:
                fs = name.split("@", 1)[0]
                if fs in wanted:
                    props.setdefault(name, {})[prop] = value
            elif name in wanted:
                present.add(name)
                if prop == ROLE_PROPERTY and value not in ("-", ""):
                    roles[name] = value
        out: dict[str, list[Snapshot] | None] = {fs: ([] if fs in present else None)
                                                   for fs in filesystems}
        for full, values in props.items():
            fs, snap = full.split("@", 1)
            found = out[fs]
            if found is None:
                continue
            found.append(Snapshot(
                filesystem=fs, name=snap, guid=_int(values.get("guid")),
                createtxg=_int(values.get("createtxg")) or 0,
                creation=_int(values.get("creation")) or 0,
                userrefs=_int(values.get("userrefs")) or 0,
            ))
        for snaps in out.values():
            if snaps is not None:
                snaps.sort(key=lambda s: (s.createtxg, s.creation))
        return out, roles

    def existing(self, names: list[str]) -> set[str]:
        """Which of `names` exist, in one call."""
        if not names:
            return set()
        result = self.host.run(self.argv("list", "-H", "-o", "name", *names), check=False)
        self._raise_unless_only_missing(result.returncode, result.stderr, result.argv)
        return {line for line in result.stdout.splitlines() if line in names}

    def _raise_unless_only_missing(self, returncode: int, stderr: str, argv: list[str]) -> None:
        if returncode == 0:
            return
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        if lines and all(_MISSING_RE.match(ln) for ln in lines):
            return
        raise CommandError(f"{self.label}: {first_line(stderr) or 'zfs failed'}",
                           argv=argv, stderr=stderr, returncode=returncode)

    # -- changing -----------------------------------------------------------------

    def snapshot(self, filesystem: str, name: str) -> None:
        self.run("snapshot", f"{filesystem}@{name}")

    def destroy_snapshot(self, filesystem: str, name: str) -> None:
        """Destroy one snapshot, riding out the short 'dataset is busy' of FUSE mounts."""
        target = f"{filesystem}@{name}"
        for attempt in range(_BUSY_RETRIES):
            result = self.host.run(self.argv("destroy", target), check=False)
            if result.returncode == 0:
                return
            if "dataset is busy" not in result.stderr or attempt == _BUSY_RETRIES - 1:
                raise CommandError(f"{self.label}: {first_line(result.stderr)}",
                                   argv=result.argv, stderr=result.stderr,
                                   returncode=result.returncode)
            time.sleep(0.1 * (attempt + 1))

    def rollback(self, filesystem: str, name: str) -> None:
        """Roll back to `name`, which must be the newest snapshot (no -r: nothing else
        is destroyed)."""
        self.run("rollback", f"{filesystem}@{name}")

    def set_property(self, filesystem: str, prop: str, value: str) -> None:
        self.run("set", f"{prop}={value}", filesystem)

    def get_properties(self, filesystem: str, props: list[str]) -> dict[str, str]:
        """Values (-p) of `props` of one dataset."""
        out = self.run("get", "-Hp", "-o", "property,value", ",".join(props), filesystem)
        values: dict[str, str] = {}
        for line in out.splitlines():
            prop, _, value = line.partition("\t")
            values[prop] = value
        return values

    def mount(self, filesystem: str) -> None:
        self.run("mount", filesystem)

    def unmount(self, filesystem: str) -> None:
        self.run("unmount", filesystem)

    # -- streams ------------------------------------------------------------------

    def send_argv(self, filesystem: str, send: Send) -> list[str]:
        args = ["send"]
        if send.base is not None:
            args += ["-I" if send.intermediates else "-i", f"{filesystem}@{send.base}"]
        args.append(f"{filesystem}@{send.target}")
        return self.host.command(self.argv(*args))

    def receive_argv(self, filesystem: str, *, incremental: bool) -> list[str]:
        # -u: a replica is never mounted by a receive. -F (incremental only): roll the
        # replica back to its newest snapshot first, discarding changes made there.
        args = ["receive", "-u"]
        if incremental:
            args.append("-F")
        args.append(filesystem)
        return self.host.command(self.argv(*args))


def _int(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)
