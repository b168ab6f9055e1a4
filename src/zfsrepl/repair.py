"""The repair of a diverged replica that keeps what was written there (manual 7.2).

The receiving filesystem FS diverged: it holds snapshots after the newest one it
shares with the sending side, or it was written since. The repairs diagnosis.py
names destroy those snapshots and roll back; this one loses nothing:

1. rename FS aside to FS.diverged-YYYYmmdd-HHMMSS (UTC): its snapshots and what
   was written there stay readable under the new name;
2. clone the common snapshot of the renamed dataset back as FS (read-only where
   the cycle makes its replicas read-only);
3. promote FS: it owns the common snapshot and those before it again, with their
   GUIDs, so the next cycle sends incrementally from it.

The renamed dataset stays a clone of FS@COMMON: retention on the receiving side
keeps that snapshot (cycle.py) until the renamed dataset is destroyed. Under the
agent, these three requests are exactly what it allows beyond a cycle's (agent.py).
`offer` is pure; `apply` runs the three steps.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime, timezone

from zfsrepl.diagnosis import Chains, Finding, Kind, chain_state
from zfsrepl.errors import ZfsreplError
from zfsrepl.naming import SnapshotNaming
from zfsrepl.zfs import Zfs
from zfsrepl.zfserrors import DatasetBusy, DatasetExists, PermissionDenied

ASIDE_INFIX = ".diverged-"  # agent.py's ASIDE_RE accepts exactly these names
STAMP_FORMAT = "%Y%m%d-%H%M%S"
# What a diverged replica looks like in a finding: snapshots after the common one, or
# writes since its newest snapshot (which an incremental receive -F would discard).
DIVERGED = (Kind.RECEIVER_HAS_EXTRA, Kind.RECEIVER_MODIFIED)


@dataclass(frozen=True)
class RenameAside:
    """Rename `filesystem` to `aside`, clone `aside@snapshot` back as `filesystem`,
    promote it. `snapshot`: the newest common one, as the receiving side names it."""

    side: str  # always "receiving": the sending side is never renamed
    filesystem: str
    aside: str
    snapshot: str
    readonly: bool  # the clone is made read-only, as a new replica would be


def aside_name(filesystem: str, when: datetime) -> str:
    return f"{filesystem}{ASIDE_INFIX}{when.astimezone(timezone.utc).strftime(STAMP_FORMAT)}"


def offer(c: Chains, finding: Finding, naming: SnapshotNaming, when: datetime, *,
          readonly: bool) -> RenameAside | None:
    """The rename-aside repair of a diverged receiving filesystem, or None where it does
    not apply: no divergence, no common snapshot, or a common snapshot this service did
    not make (the agent clones only from the service's own snapshots)."""
    if finding.kind not in DIVERGED or c.sending is None or c.receiving is None:
        return None
    state = chain_state(c, naming)
    common = None if state is None else state.common
    if common is None:
        return None
    rcv_common = common.receiving  # the receiver's snapshot of the common point
    if not naming.is_ours(rcv_common.name):
        return None
    return RenameAside("receiving", c.receiving_fs, aside_name(c.receiving_fs, when),
                       rcv_common.name, readonly)


def describe(r: RenameAside) -> str:
    return (f"rename {r.filesystem} to {r.aside} (on the {r.side} side; nothing is "
            f"destroyed), then clone its @{r.snapshot} back as {r.filesystem} and promote "
            "it: the next cycle goes on incrementally")


def commands(r: RenameAside) -> tuple[str, ...]:
    """The three steps as zfs commands, for doing them by hand."""
    clone = ["zfs", "clone", *(["-o", "readonly=on"] if r.readonly else []),
             f"{r.aside}@{r.snapshot}", r.filesystem]
    return (shlex.join(["zfs", "rename", r.filesystem, r.aside]), shlex.join(clone),
            shlex.join(["zfs", "promote", r.filesystem]))


def apply(r: RenameAside, zfs: Zfs) -> list[str]:
    """The three steps on the receiving side; one line per step done. A failure after the
    rename raises with what is left to do by hand (and how to undo the rename)."""
    try:
        zfs.rename(r.filesystem, r.aside)
    except DatasetBusy as exc:
        raise ZfsreplError(f"cannot rename {r.filesystem} on {zfs.label}: it is in use "
                           f"(mounted?): unmount it (zfs unmount {r.filesystem}) and run "
                           "doctor --fix again; nothing was changed") from exc
    except DatasetExists as exc:
        raise ZfsreplError(f"cannot rename {r.filesystem} to {r.aside} on {zfs.label}: "
                           f"{r.aside} exists; run doctor --fix again in a second; nothing "
                           "was changed") from exc
    except PermissionDenied as exc:
        raise ZfsreplError(_rights(r, zfs, exc) + "; nothing was changed") from exc
    done = [f"renamed {r.filesystem} to {r.aside} on {zfs.label}"]
    try:
        zfs.clone(f"{r.aside}@{r.snapshot}", r.filesystem, readonly=r.readonly)
        done.append(f"cloned {r.aside}@{r.snapshot} back as {r.filesystem}")
        zfs.promote(r.filesystem)
        done.append(f"promoted {r.filesystem}: it holds @{r.snapshot} again")
    except ZfsreplError as exc:
        left = commands(r)[len(done):]
        why = _rights(r, zfs, exc) if isinstance(exc, PermissionDenied) else str(exc)
        raise ZfsreplError(
            f"{'; '.join(done)}; then: {why}. Nothing is lost: finish by hand on "
            f"{zfs.label}: {'; '.join(left)} (or undo: "
            + ("zfs destroy " + shlex.quote(r.filesystem) + "; " if len(done) > 1 else "")
            + f"{shlex.join(['zfs', 'rename', r.aside, r.filesystem])})") from exc
    return done


def _rights(r: RenameAside, zfs: Zfs, exc: ZfsreplError) -> str:
    parent = r.filesystem.rsplit("/", 1)[0]
    return (f"{exc}: the user on {zfs.label} may not rename, clone or promote there; grant "
            f"it (zfs allow -u USER rename,clone,promote,create,mount {parent}), or "
            "discard what was written there instead: doctor --fix --destroy")
