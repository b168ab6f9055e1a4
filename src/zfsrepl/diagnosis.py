"""Pure diagnosis of a service's chains: what state each filesystem is in, in plain
words, and the exact steps that repair it.

`diagnose` takes both sides' chains, compared by chain.compare (the comparison the
planner decides from, bookmarks and resume token included), and a few facts (roles,
whether the receiving parent exists, whether the receiving side was written since its
last snapshot) and returns a typed `Finding`. `diagnose_access` does the same for
what stops a side from being asked at all (a rejected key, missing ZFS rights).
Nothing here runs a command: doctor.py gathers the facts and applies the repairs.

The sides are named by what they do in the direction this host replicates:
the *sending* side takes and sends the snapshots, the *receiving* side holds the
replica. On the source host that is source -> destination; on the destination
host (failback, see replication.py) it is destination -> source.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass, field
from typing import Union

from zfsrepl import zfserrors
from zfsrepl.chain import ChainState, Common, Receiver, Sender, Verdict, compare
from zfsrepl.errors import CommandError, ConnectionFailed, LoginRefused, ZfsreplError
from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot, by_age

# Values of the zfsrepl:role user property (zfs.ROLE_PROPERTY) of a filesystem.
ROLE_TAKEN_OVER = "source"  # a destination made usable by `zfsrepl failover`
ROLE_REPLICA = "destination"  # the failover ended: replicas again


class Kind(enum.Enum):
    UP_TO_DATE = "up to date"
    RESUMING = "a cut transfer waits to be resumed"
    SENDER_AHEAD = "sending side ahead"
    NOTHING_YET = "no snapshot of this service yet"
    RECEIVER_MODIFIED = "receiving side modified since its last snapshot"
    RECEIVER_HAS_EXTRA = "receiving side holds snapshots the sending side lacks"
    NO_COMMON = "no common snapshot"
    SENDER_MISSING = "filesystem missing on the sending side"
    RECEIVER_MISSING = "filesystem missing on the receiving side"
    RECEIVER_PARENT_MISSING = "parent missing on the receiving side"
    TAKEN_OVER = "receiving side took over (failover)"
    KEY_REJECTED = "key locked out or rejected"
    UNREACHABLE = "host unreachable"
    MISSING_RIGHTS = "missing ZFS rights"
    MAINTENANCE = "service in maintenance"
    UNKNOWN_ERROR = "cannot be asked"


@dataclass(frozen=True)
class Side:
    """One side as the operator knows it: what it is called and where it lives."""

    role: str  # "source" or "destination" in the service definition
    host: str
    user: str

    @property
    def label(self) -> str:
        return f"{self.role} {self.user}@{self.host}"


@dataclass(frozen=True)
class DestroySnapshot:
    """Destroy one snapshot of this service (never another's, never a filesystem)."""

    side: str  # "sending" or "receiving"
    filesystem: str
    snapshot: str


@dataclass(frozen=True)
class Rollback:
    """Roll back to a snapshot common to both sides that is the newest on its side."""

    side: str
    filesystem: str
    snapshot: str


@dataclass(frozen=True)
class ClearMaintenance:
    service: str


Repair = Union[DestroySnapshot, Rollback, ClearMaintenance]


def describe_repair(r: Repair) -> str:
    if isinstance(r, ClearMaintenance):
        return f"clear the maintenance state of service {r.service}"
    if isinstance(r, DestroySnapshot):
        return f"destroy {r.filesystem}@{r.snapshot} (on the {r.side} side)"
    return f"roll {r.filesystem} back to @{r.snapshot} (on the {r.side} side, no -r)"


@dataclass(frozen=True)
class Finding:
    kind: Kind
    explanation: str  # plain words: what is wrong, what happens next
    commands: tuple[str, ...] = ()  # exact commands that fix it by hand
    repairs: tuple[Repair, ...] = ()  # what `doctor --fix` does (safe steps only)
    healthy: bool = False  # replication works as things stand

    @property
    def title(self) -> str:
        return self.kind.value


@dataclass(frozen=True)
class Chains:
    """Both sides of one filesystem of a service, and the facts around them."""

    sending_fs: str
    receiving_fs: str
    sending: list[Snapshot] | None  # None: the filesystem does not exist
    receiving: list[Snapshot] | None
    # the sending filesystem's bookmarks: a common point where their snapshot is gone
    sending_bookmarks: tuple[Snapshot, ...] = ()
    receiving_resume_token: str | None = None  # a cut resumable receive left it
    receiving_role: str | None = None  # zfsrepl:role of the receiving filesystem
    receiving_parent_exists: bool = True
    receiving_written: int | None = None  # bytes written since its last snapshot, if known
    sending_side: Side = field(default_factory=lambda: Side("source", "source", "src"))
    receiving_side: Side = field(default_factory=lambda: Side("destination", "dst", "dst"))


def zfs_cmd(*args: str) -> str:
    return shlex.join(["zfs", *args])


def chain_state(c: Chains, naming: SnapshotNaming) -> ChainState | None:
    """The comparison of both chains (None: the sending filesystem does not exist)."""
    if c.sending is None:
        return None
    receiving = None if c.receiving is None else \
        Receiver.of(c.receiving, c.receiving_resume_token)
    return compare(Sender.of(c.sending, c.sending_bookmarks), receiving, naming)


def diagnose(c: Chains, naming: SnapshotNaming, service: str) -> Finding:
    """The situation of one filesystem, from both chains and the facts."""
    rcv = c.receiving_side
    state = chain_state(c, naming)
    if state is None:
        return _sender_missing(c)
    if c.receiving_role == ROLE_TAKEN_OVER:
        return _taken_over(c, service)
    verdict = state.verdict
    if verdict is Verdict.RESUME:
        return Finding(
            Kind.RESUMING,
            f"{c.receiving_fs} on the {rcv.label} holds the token of a cut resumable "
            "receive: the next cycle sends the rest of that stream (zfs send -t), then "
            "whatever is still missing.", healthy=True)
    if state.receiving is None:
        return _receiver_missing(c, state)
    if verdict is Verdict.NOTHING_YET:
        return Finding(Kind.NOTHING_YET,
                       f"{c.sending_fs} has no snapshot of service {service} yet: the next "
                       "cycle takes one.", healthy=True)
    if verdict is Verdict.NO_COMMON:
        return _no_common(c, state, service)
    common = state.common
    assert common is not None
    if verdict is Verdict.DIVERGED:
        return _diverged(c, state, common, naming, service)
    base = common.receiving  # the receiver's newest snapshot, as nothing is newer
    if c.receiving_written:
        return Finding(
            Kind.RECEIVER_MODIFIED,
            f"{c.receiving_fs} on the {rcv.label} was written since its last snapshot "
            f"@{base.name} ({c.receiving_written} bytes). The next incremental receive "
            "rolls it back and discards these changes; to keep them, use failover and "
            "replicate them back instead.",
            (f"on {rcv.host}: {zfs_cmd('rollback', base.full_name)}",),
            (Rollback("receiving", c.receiving_fs, base.name),), healthy=True)
    mark = (f" (a bookmark: its snapshot is gone from {c.sending_fs}, the replica is "
            "still good)") if common.bookmark else ""
    if verdict is Verdict.BEHIND:
        pending = state.pending
        return Finding(
            Kind.SENDER_AHEAD,
            f"{c.sending_fs} has {len(pending)} snapshot(s) after {common.label} that "
            f"{c.receiving_fs} lacks (newest @{pending[-1].name}): the next cycle sends them "
            f"incrementally from {common.label}{mark}.",
            healthy=True)
    return Finding(Kind.UP_TO_DATE,
                   f"{c.receiving_fs} holds {common.label}{mark}, the newest snapshot of "
                   f"{c.sending_fs} of this service.", healthy=True)


def _sender_missing(c: Chains) -> Finding:
    snd = c.sending_side
    return Finding(
        Kind.SENDER_MISSING,
        f"{c.sending_fs} does not exist on the {snd.label}: there is nothing to send.",
        (f"on {snd.host}: zfs create {shlex.quote(c.sending_fs)}  (or correct "
         "[[filesystem]] in the definition)",))


def _taken_over(c: Chains, service: str) -> Finding:
    snd, rcv = c.sending_side, c.receiving_side
    return Finding(
        Kind.TAKEN_OVER,
        f"{c.receiving_fs} on the {rcv.label} was made usable by `zfsrepl failover` "
        "and may hold changes made there since. Replication refuses to overwrite it "
        "until you decide.",
        (f"keep the changes: on {rcv.host} as {rcv.user}: zfsrepl runonce {service} "
         f"(replicates them back to {snd.host})",
         f"discard them: on {rcv.host} as {rcv.user}: zfsrepl failover --end {service}, "
         "then replicate again"))


def _receiver_missing(c: Chains, state: ChainState) -> Finding:
    rcv = c.receiving_side
    if not c.receiving_parent_exists:
        parent = c.receiving_fs.rsplit("/", 1)[0]
        return Finding(
            Kind.RECEIVER_PARENT_MISSING,
            f"neither {c.receiving_fs} nor its parent {parent} exists on the "
            f"{rcv.label}: the stream has nowhere to go.",
            (f"on {rcv.host}: zfs create -p {shlex.quote(parent)}",))
    return Finding(
        Kind.RECEIVER_MISSING,
        f"{c.receiving_fs} does not exist on the {rcv.label}: the next cycle sends "
        f"{c.sending_fs} whole" + ("." if state.own else " once it has a snapshot."),
        healthy=True)


def _no_common(c: Chains, state: ChainState, service: str) -> Finding:
    rcv = c.receiving_side
    why = (" Snapshots with the same names exist on both sides but are different "
           "snapshots (other GUIDs): one side was re-created." if state.same_names else "")
    moved = f"{c.receiving_fs}.old"
    return Finding(
        Kind.NO_COMMON,
        f"{c.receiving_fs} on the {rcv.label} shares no snapshot or bookmark with "
        f"{c.sending_fs} (compared by GUID), so no incremental stream can apply.{why} Doctor "
        "never destroys a filesystem: move it aside and the next cycle sends a full stream.",
        (f"on {rcv.host}: {zfs_cmd('rename', c.receiving_fs, moved)}",
         f"then: zfsrepl runonce {service}  (sends {c.sending_fs} whole)"))


def _diverged(c: Chains, state: ChainState, common: Common, naming: SnapshotNaming,
              service: str) -> Finding:
    rcv = c.receiving_side
    extra = state.diverged
    back = common.receiving  # the receiver's own copy of the common point
    names = ", ".join("@" + s.name for s in extra)
    foreign = [s for s in extra if not naming.is_ours(s.name)]
    held = [s for s in extra if s.userrefs > 0]
    text = (f"{c.receiving_fs} on the {rcv.label} holds snapshots newer than @{back.name}, "
            f"the last one it shares with {c.sending_fs}: {names}. An incremental "
            f"stream from {common.label} cannot apply on top of them (manual 7.2). "
            f"Repair: destroy them and roll {c.receiving_fs} back to @{back.name}; "
            f"what changed there after @{back.name} is lost, {c.sending_fs} is not "
            "touched.")
    cmds = tuple(f"on {rcv.host}: {zfs_cmd('destroy', s.full_name)}" for s in reversed(extra))
    cmds += (f"on {rcv.host}: {zfs_cmd('rollback', back.full_name)}",
             f"then: zfsrepl runonce {service}")
    if foreign or held:
        reasons: list[str] = []
        if foreign:
            reasons.append("not made by this service: " + ", ".join("@" + s.name for s in foreign))
        if held:
            reasons.append("held: " + ", ".join("@" + s.name for s in held))
        return Finding(Kind.RECEIVER_HAS_EXTRA,
                       text + " doctor --fix --destroy leaves this to you, as some of them are "
                       + "; ".join(reasons) + ".", cmds)
    repairs: tuple[Repair, ...] = tuple(
        DestroySnapshot("receiving", c.receiving_fs, s.name) for s in reversed(extra))
    repairs += (Rollback("receiving", c.receiving_fs, back.name),)
    return Finding(Kind.RECEIVER_HAS_EXTRA, text, cmds, repairs)


def diagnose_access(exc: ZfsreplError, side: Side, service: str, *, via_agent: bool
                    ) -> Finding:
    """Why a side could not be listed, from the kind of error, with what fixes it."""
    error = str(exc)
    if isinstance(exc, CommandError):
        exc = zfserrors.typed(exc)
    if isinstance(exc, LoginRefused):
        how = (f"on {side.host} as {side.user}: the service's key is no longer in "
               "~/.ssh/authorized_keys (after `zfsrepl lockoutkey` this is intended). To let "
               f"the service in again, run on the source: zfsrepl setup -r RESPONSE_FILE "
               f"(setup re-installs the key of {service})") if via_agent else \
              (f"the login as {side.user}@{side.host} was refused: give this user a key "
               "there, or run the command in a terminal to be asked for the password")
        return Finding(Kind.KEY_REJECTED,
                       f"the {side.label} refused the login: {error}", (how,))
    if isinstance(exc, ConnectionFailed):
        return Finding(Kind.UNREACHABLE, f"the {side.label} cannot be reached: {error}",
                       (f"check that {side.host} is up and its sshd answers",))
    if isinstance(exc, zfserrors.PermissionDenied):
        return Finding(
            Kind.MISSING_RIGHTS,
            f"{side.user} on {side.host} may not run the zfs commands the service needs: "
            f"{error}",
            ("re-run the root script setup wrote for this side (zfsrepl setup -r "
             "RESPONSE_FILE prints it), or grant the rights: zfs allow -u "
             f"{side.user} create,destroy,mount,send,snapshot,receive,rollback,userprop "
             "POOL/PARENT (or a sudo rule for zfs where zfs allow is missing)",))
    return Finding(Kind.UNKNOWN_ERROR, f"the {side.label} could not be listed: {error}")


def diagnose_maintenance(service: str, reason: str | None, chains_ok: bool) -> Finding:
    """The service stopped after its retries ran out; clearing is safe once the chains
    are fine (or repaired)."""
    why = f" ({reason})" if reason else ""
    if chains_ok:
        return Finding(Kind.MAINTENANCE,
                       f"service {service} stopped replicating after its retries ran out{why}. "
                       "The chains allow the next cycle now: clear the maintenance state.",
                       (f"zfsrepl clear {service}",), (ClearMaintenance(service),))
    return Finding(Kind.MAINTENANCE,
                   f"service {service} stopped replicating after its retries ran out{why}. "
                   "Repair the chains below first, then clear it.",
                   (f"zfsrepl clear {service}",))


def interlock_problem(taken_over: list[str], service: str, receiving: Side) -> str:
    """The refusal of a cycle whose receiving filesystems took over by failover."""
    return (f"{', '.join(taken_over)} on {receiving.user}@{receiving.host} took over by "
            f"`zfsrepl failover` (zfsrepl:role={ROLE_TAKEN_OVER}): replicating would overwrite "
            f"what changed there. Keep those changes: run `zfsrepl runonce {service}` on "
            f"{receiving.host} as {receiving.user} (replicates them back); discard them: run "
            f"`zfsrepl failover --end {service}` there, then replicate again")


def chain_table(c: Chains, naming: SnapshotNaming) -> list[str]:
    """Both chains side by side, oldest first, aligned by GUID, the newest common point
    marked. A bookmark of the sending side shows where its snapshot is gone."""
    state = chain_state(c, naming)
    common = state.common if state is not None else None
    snapshot_guids = {s.guid for s in c.sending or []}
    marks = [m for m in c.sending_bookmarks if m.guid not in snapshot_guids]
    snd = by_age([*(c.sending or []), *marks])
    rcv = by_age(c.receiving or [])
    rcv_guids = {s.guid for s in rcv}
    snd_guids = {s.guid for s in snd}
    rows: list[tuple[Snapshot | None, Snapshot | None]] = []
    i = j = 0
    while i < len(snd) or j < len(rcv):
        a = snd[i] if i < len(snd) else None
        b = rcv[j] if j < len(rcv) else None
        if a is not None and b is not None and a.guid == b.guid:
            rows.append((a, b))
            i += 1
            j += 1
        elif a is not None and (a.guid not in rcv_guids or b is None):
            rows.append((a, None))
            i += 1
        elif b is not None and (b.guid not in snd_guids or a is None):
            rows.append((None, b))
            j += 1
        else:  # both are on the other side later: order differs; show them apart
            rows.append((a, None))
            i += 1

    def cell(s: Snapshot | None) -> str:
        if s is None:
            return "-"
        sep = "#" if s in marks else "@"
        return f"{sep}{s.name} guid={s.guid} created={s.creation}"

    lines = [f"  {'sending: ' + c.sending_fs:<60}  receiving: {c.receiving_fs}"]
    if c.sending is None:
        lines.append("  (sending filesystem does not exist)")
    if c.receiving is None:
        lines.append("  (receiving filesystem does not exist)")
    for a, b in rows:
        mark = "=" if a is not None and b is not None else " "
        if common is not None and a is not None and a.guid == common.sending.guid:
            mark = "*"
        lines.append(f"{mark} {cell(a):<60}  {cell(b)}")
    if common is None:
        lines.append("  newest common snapshot: none")
    elif common.bookmark:
        lines.append(f"  newest common snapshot: {common.label} (bookmark)")
    else:
        lines.append(f"  newest common snapshot: {common.label}")
    return lines
