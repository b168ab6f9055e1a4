"""Maintenance that moves with the pool.

On a cluster the source filesystems live on a pool that moves between nodes with
its resource group; the state folder stays behind on the node that recorded it.
So the maintenance flag and its reason are also written into a ZFS user property
of each source filesystem of the service, `zfsrepl:maintenance:<service>`, whose
value is `<seconds since the epoch> <reason>`. The node that takes over finds it
there when its own state file has none (`run` refuses to start, `status` shows
it), and `zfsrepl clear` removes it with the state file's.

The property names the service because one filesystem may be the source of several
services. User property names allow only lowercase letters, digits and `:-._`;
service names also allow capitals, so a capital X is written `:x` (a colon never
occurs in a service name: the mapping is one to one).

Writing the property is best effort: a service whose user lacks the `userprop`
right still goes into maintenance, with a warning that the state will not move.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from zfsrepl import state
from zfsrepl.config import Service
from zfsrepl.errors import ZfsreplError
from zfsrepl.host import LocalHost, first_line
from zfsrepl.log import logger
from zfsrepl.state import ServiceState, StateStore
from zfsrepl.zfs import Zfs

PREFIX = "zfsrepl:maintenance:"
# zfs-fuse (pool version 23) takes user property values of up to 1024 bytes.
MAX_VALUE_BYTES = 1000
_VALUE_RE = re.compile(r"^(\d{1,12}) (.*)$", re.DOTALL)


@dataclass(frozen=True)
class Maintenance:
    since: float | None  # None: the value carried no time
    reason: str


# ---------------------------------------------------------------------------- pure


def property_name(service: str) -> str:
    return PREFIX + "".join(f":{c.lower()}" if "A" <= c <= "Z" else c for c in service)


def encode(since: float, reason: str) -> str:
    """The property value: one line (a tab or newline would break `zfs get -H`),
    cut to what every ZFS stores."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", reason).strip() or "unknown"
    value = f"{int(since)} {text}"
    raw = value.encode("utf-8")
    if len(raw) > MAX_VALUE_BYTES:
        value = raw[:MAX_VALUE_BYTES - 3].decode("utf-8", "ignore") + "..."
    return value


def decode(value: str) -> Maintenance | None:
    """What a property value says; None where it is not set ("-" or empty)."""
    value = value.strip()
    if value in ("", "-"):
        return None
    m = _VALUE_RE.match(value)
    if m is None:  # set by hand: the whole value is the reason
        return Maintenance(None, value)
    return Maintenance(float(m.group(1)), m.group(2) or "unknown")


def combine(values: Mapping[str, str]) -> Maintenance | None:
    """The maintenance the filesystems' values (filesystem -> value) record: the
    earliest, as the service entered it once for all of them."""
    found = [m for m in (decode(v) for v in values.values()) if m is not None]
    if not found:
        return None
    return min(found, key=lambda m: (m.since is None, m.since or 0.0))


def with_maintenance(st: ServiceState, found: Maintenance | None,
                     now: float) -> ServiceState:
    """`st` as the state file has it, or, where that has no maintenance and ZFS has
    one, `st` in that maintenance."""
    if st.in_maintenance or found is None:
        return st
    return state.enter_maintenance(st, found.since if found.since is not None else now,
                                   found.reason)


# ---------------------------------------------------------------------------- ZFS


def source_zfs(svc: Service) -> Zfs:
    """The ZFS of the service's source filesystems: this host's."""
    return Zfs(LocalHost(f"{svc.source.user}@{svc.source.host}"), svc.source.zfs_argv)


def _values(zfs: Zfs, svc: Service) -> dict[str, str]:
    """The property's local value on each source filesystem that exists here; {} where
    ZFS cannot be asked (on a cluster node that has not imported the pool)."""
    filesystems = [p.source for p in svc.filesystems]
    try:
        result = zfs.host.run(zfs.argv("get", "-H", "-s", "local", "-o", "name,value",
                                       property_name(svc.name), *filesystems), check=False)
    except ZfsreplError as exc:
        logger.debug("cannot read %s: %s", property_name(svc.name), exc)
        return {}
    values: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, sep, value = line.partition("\t")
        if sep and name in filesystems:
            values[name] = value
    return values


def read(svc: Service, zfs: Zfs | None = None) -> Maintenance | None:
    """The maintenance recorded in ZFS for `svc`, if any."""
    return combine(_values(zfs or source_zfs(svc), svc))


def _failures(zfs: Zfs, calls: list[tuple[str, list[str]]]) -> Iterator[tuple[str, str]]:
    """Run each (filesystem, zfs argv); (filesystem, why) for each that failed."""
    for fs, argv in calls:
        try:
            result = zfs.host.run(argv, check=False)
        except ZfsreplError as exc:
            yield fs, str(exc)
            continue
        if result.returncode != 0:
            yield fs, first_line(result.stderr) or f"exit status {result.returncode}"


def mark(svc: Service, since: float, reason: str, zfs: Zfs | None = None) -> None:
    """Record the maintenance on every source filesystem (one `zfs set` each: the ZFS
    of the Solaris 10 era sets one dataset per call)."""
    zfs = zfs or source_zfs(svc)
    setting = f"{property_name(svc.name)}={encode(since, reason)}"
    calls = [(p.source, zfs.argv("set", setting, p.source)) for p in svc.filesystems]
    for fs, why in _failures(zfs, calls):
        logger.warning("cannot record the maintenance of %s in ZFS on %s: %s; a cluster "
                       "node that takes the pool over will not see it (the source user "
                       "needs the userprop right)", svc.name, fs, why)


def clear(svc: Service, zfs: Zfs | None = None) -> None:
    """Remove the property where it is set (`zfs inherit` removes a user property)."""
    zfs = zfs or source_zfs(svc)
    name = property_name(svc.name)
    calls = [(fs, zfs.argv("inherit", name, fs)) for fs in _values(zfs, svc)]
    for fs, why in _failures(zfs, calls):
        logger.warning("cannot remove the maintenance of %s from ZFS on %s: %s; remove it "
                       "with: zfs inherit %s %s", svc.name, fs, why, name, fs)


def adopt(svc: Service, store: StateStore, st: ServiceState, now: float,
          zfs: Zfs | None = None) -> ServiceState:
    """At the start of `run`: where the state file has no maintenance and ZFS has one
    (it came with the pool from another node), record it in the state file too."""
    if st.in_maintenance:
        return st
    found = read(svc, zfs)
    if found is None:
        return st
    logger.info("service %s: the maintenance recorded in ZFS (%s on the source "
                "filesystems) applies here", svc.name, property_name(svc.name))
    return store.update(lambda s: with_maintenance(s, found, now))
