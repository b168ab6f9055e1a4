"""Failover, lockoutkey and failback (manual section 6).

Which way a cycle replicates follows from the definition it runs from: the copy
setup keeps on the destination host says `role = "destination"`, and `runonce`
run from that copy replicates destination -> source (failback, fallback; see
replication.py). The snapshot names stay the service's
(`zfsrepl-<srcuser>-<dstuser>-<dsthost>-N`) in both directions, and the chain
continues by GUID, so forward replication picks up again from whatever failback
left, with no renaming and no flag to forget.

A failover for tests (6.1) only makes the destination filesystems usable: the
source keeps its say, and the next forward cycle overwrites what was changed here
unless `runonce` on this host replicated it back first.

The interlock is for a disaster (6.2.1), where a source that comes back must not
silently overwrite a destination that has taken over. It lives in ZFS, beside the
data it protects, so it survives a rebuilt source's `setup -r` reinstalling the
key: `lockoutkey` (or `failover --takeover`, where the key cannot be locked out)
sets the user property zfsrepl:role=source on the destination filesystems, a
failover keeps a mark it finds, and every cycle refuses to receive into a
filesystem so marked (cycleplan.check_listing) until the operator ends it with
`failover --end`.
Replicating the changes back (failback) works with the mark set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from zfsrepl import diagnosis
from zfsrepl.config import Service
from zfsrepl.cycle import CycleEvents, replicate
from zfsrepl.errors import CommandError, UsageError, ZfsreplError
from zfsrepl.host import LocalHost, SshHost
from zfsrepl.log import logger
from zfsrepl.replication import Replication
from zfsrepl.setup import authorized_keys
from zfsrepl.state import Newest
from zfsrepl.zfs import ROLE_PROPERTY, Zfs
from zfsrepl.zfserrors import PermissionDenied


def failback_warning(svc: Service) -> str:
    fss = ", ".join(p.source for p in svc.filesystems)
    return (f"This replicates service {svc.name} BACKWARDS: from this host "
            f"({svc.destination.host}) to the source {svc.source.user}@{svc.source.host}.\n"
            f"You possibly destroy data on the source system {svc.source.host}: {fss} are "
            "rolled back to the newest snapshot they share with this side and overwritten "
            "with this side's data; anything written there since is lost.\n"
            "Make sure no application writes on the source. Where this user has no key "
            f"there, ssh asks for the password of {svc.source.user}.")


def failback_runner(svc: Service, events: CycleEvents,
                    sleep: Callable[[float], None]) -> dict[str, Newest]:
    """A `service.run_once` runner for the destination's copy of a definition: this host
    sends, the original source receives over ssh (password login allowed)."""
    back = Replication.failback(svc)
    local = LocalHost(f"{back.sending.user}@{back.sending.host}")
    with SshHost(back.receiving, extra_options=("BatchMode=no",)) as remote:
        replicate(back, local, remote, sleep=sleep, events=events)
    return {}


# ---------------------------------------------------------------------------- failover


def parse_mountpoints(values: list[str], svc: Service) -> dict[str, str]:
    """`FS=PATH` options (FS: a destination or source filesystem of the service) as
    destination -> path."""
    by_name: dict[str, str] = {}
    for p in svc.filesystems:
        by_name[p.destination] = p.destination
        by_name[p.source] = p.destination
    out: dict[str, str] = {}
    for value in values:
        fs, sep, path = value.rpartition("=")
        if not sep or not fs:
            raise UsageError(f"--mountpoint {value!r}: expected FS=PATH")
        if fs not in by_name:
            known = ", ".join(p.destination for p in svc.filesystems)
            raise UsageError(f"--mountpoint {value!r}: {fs!r} is not a filesystem of service "
                             f"{svc.name} (its destination filesystems: {known})")
        if not path.startswith("/"):
            raise UsageError(f"--mountpoint {value!r}: {path!r} is not a full path")
        out[by_name[fs]] = path
    return out


@dataclass(frozen=True)
class FailoverResult:
    lines: list[str]  # one per filesystem
    interlocked: bool  # the filesystems carry the interlock mark


def failover(svc: Service, zfs: Zfs, mountpoints: Mapping[str, str], *,
             takeover: bool = False) -> FailoverResult:
    """Make the destination filesystems usable here.

    No interlock for a test failover: the source's next cycle overwrites the changes
    made here. The mark is kept where `lockoutkey` (a disaster) set it on any of the
    filesystems, and set where `takeover` asks for it; then it goes on first, so
    nothing can be written there while a cycle from the source could still overwrite
    it."""
    dsts = [p.destination for p in svc.filesystems]
    lists, roles = zfs.listing(dsts)
    missing = [fs for fs in dsts if lists[fs] is None]
    if missing:
        raise ZfsreplError(f"{', '.join(missing)} does not exist on {zfs.label}: nothing to "
                           "fail over to (was the service ever replicated?)")
    interlocked = takeover or any(roles.get(fs) == diagnosis.ROLE_TAKEN_OVER for fs in dsts)
    lines = []
    for pair in svc.filesystems:
        fs = pair.destination
        if interlocked and roles.get(fs) != diagnosis.ROLE_TAKEN_OVER:
            zfs.set_property(fs, ROLE_PROPERTY, diagnosis.ROLE_TAKEN_OVER)
        zfs.set_property(fs, "readonly", "off")
        target = mountpoints.get(fs) or pair.mountpoint
        if target:
            zfs.set_property(fs, "mountpoint", target)
        props = zfs.get_properties(fs, ["mounted", "mountpoint"])
        if props.get("mounted") != "yes":
            _mount(svc, zfs, fs)
            props = zfs.get_properties(fs, ["mounted", "mountpoint"])
        lines.append(f"{fs}: mounted at {props.get('mountpoint')}, writable"
                     + (", interlocked" if interlocked else ""))
        logger.info("failover of %s: %s mounted at %s%s", svc.name, fs,
                    props.get("mountpoint"), " (interlocked)" if interlocked else "")
    return FailoverResult(lines, interlocked)


def _mount(svc: Service, zfs: Zfs, fs: str) -> None:
    """Mount `fs`. Delegated rights do not cover mount(2) everywhere: on Linux only root
    mounts, so a user's failover ends here with what to run instead."""
    try:
        zfs.mount(fs)
    except CommandError as exc:
        if os.geteuid() == 0 or not isinstance(exc, PermissionDenied):
            raise
        raise ZfsreplError(
            f"{fs} is writable but could not be mounted on {zfs.label}: only root mounts "
            f"filesystems on this system. Run `zfsrepl failover {svc.name}` as root (it "
            f"picks up where this one stopped), or mount it as root: zfs mount {fs}") from exc


def set_interlock(svc: Service, zfs: Zfs) -> tuple[list[str], list[str]]:
    """Mark the destination filesystems here as taken over (a disaster): one line per
    filesystem marked, and the filesystems that do not exist here."""
    dsts = [p.destination for p in svc.filesystems]
    lists, roles = zfs.listing(dsts)
    lines, missing = [], []
    for fs in dsts:
        if lists[fs] is None:
            missing.append(fs)
        elif roles.get(fs) == diagnosis.ROLE_TAKEN_OVER:
            lines.append(f"{fs}: interlock already set")
        else:
            zfs.set_property(fs, ROLE_PROPERTY, diagnosis.ROLE_TAKEN_OVER)
            lines.append(f"{fs}: interlock set")
            logger.info("interlock of %s set on %s", svc.name, fs)
    return lines, missing


def end_failover(svc: Service, zfs: Zfs) -> list[str]:
    """This side becomes the replica again (the interlock, if set, is cleared): the next
    forward cycle overwrites what was written here since the newest common snapshot."""
    lines = []
    for pair in svc.filesystems:
        fs = pair.destination
        lists, _ = zfs.listing([fs])
        if lists[fs] is None:
            lines.append(f"{fs}: does not exist (the next cycle sends it whole)")
            continue
        try:
            zfs.unmount(fs)
        except ZfsreplError as exc:
            logger.warning("could not unmount %s (%s); the next receive rolls it back anyway",
                           fs, exc)
        zfs.set_property(fs, ROLE_PROPERTY, diagnosis.ROLE_REPLICA)
        lines.append(f"{fs}: a replica of {pair.source} again")
    return lines


# ---------------------------------------------------------------------------- lockoutkey


def lockout(svc: Service, path: Path) -> str:
    """Remove the service's key line from `path`; the marker that was removed."""
    marker = authorized_keys.service_marker(svc.name, svc.source.user, svc.source.host)
    if not path.exists():
        raise ZfsreplError(f"{path} does not exist: no key of service {svc.name} to remove")
    changed = authorized_keys.update(path, lambda c: authorized_keys.without_marker(c, marker))
    if not changed:
        raise ZfsreplError(f"{path} has no line ending in {marker}: the key of service "
                           f"{svc.name} is not there (locked out already, or installed by "
                           "hand: remove that line yourself)")
    return marker
