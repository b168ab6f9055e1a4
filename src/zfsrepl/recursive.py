"""One stream for a subtree: the cycle of a service with `recursive = true`.

The service's one [[filesystem]] is a parent. Every filesystem and volume below it on
the source belongs to the service: they are found at each cycle by the listing itself
(`zfs get -r` of the parent, no depth limit, one call per side), so a child created
since the last cycle is replicated by the next one, without a change to the
definition. A cycle is

    zfs snapshot -r PARENT@NEW                         one call: every filesystem below
                                                       at one point in time
    zfs send -R [-i|-I PARENT@BASE] PARENT@NEW | zfs receive -u DESTINATION
    zfs destroy -r PARENT@OLD, else FS@OLD one by one  on each side, by its keep rule

A child that has no BASE yet (created since) travels whole inside the same stream.

The receive has no -F. With a replication stream, -F destroys every snapshot and
filesystem below the destination that the source no longer has, whoever made them.
Without it, a receive destroys nothing: a snapshot made by hand on a replica stays, and
so does a replica whose source filesystem was destroyed (with its snapshots: it is no
longer in the stream, and retention here only destroys a name on a filesystem that the
source still has). What -F does for a single filesystem's stream, roll the replica back
over changes made on it, is not needed: a receive never mounts the replicas (-u), and
one that was changed anyway makes zfs refuse the stream with its own message, as does a
replica that holds a snapshot newer than the base (reported before anything runs, like
any other service's diverged replica).

Retention is the per-filesystem rule of every service (retention.decide on each
filesystem's own list): a name is destroyed with one `destroy -r` only where every
filesystem of that side that has it would destroy it (the names are this service's,
so no other tool's snapshot carries it); else one by one. No hold or bookmark is kept
on the base: a recursive service is for a subtree it owns.

The stream carries the subtree's properties: the destination's agent and zfs wrapper
read the stream's list of filesystems first and refuse properties that reach root
where zfs cannot leave them out (streamcheck, agent.judge_replication).
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from zfsrepl import diagnosis, hooks, plan
from zfsrepl.capabilities import compress_argv
from zfsrepl.config import FilesystemPair
from zfsrepl.cycle import Cycle
from zfsrepl.cycleplan import (
    CyclePlan,
    FilesystemPlan,
    retention_after,
    wire_configured,
    with_new_snapshot,
)
from zfsrepl.errors import CommandError, ReplicationError, ZfsreplError
from zfsrepl.executor import between_hooks
from zfsrepl.host import commands_logger, pipeline_command
from zfsrepl.log import logger
from zfsrepl.naming import SnapshotNaming
from zfsrepl.replication import Replication
from zfsrepl.snapshots import Snapshot
from zfsrepl.transfer import Cancel, Progress, Watchdog, pipe
from zfsrepl.zfs import ROLE_PROPERTY, FsState, Zfs, _int
from zfsrepl.zfserrors import HasClones


@dataclass(frozen=True)
class TreeSend:
    """The one stream of a cycle: full (`base` None) or incremental from `base`."""

    target: str
    base: str | None = None
    intermediates: bool = False  # -I (own snapshots between come along) instead of -i

    def args(self, parent: str) -> list[str]:
        if self.base is None:
            return ["send", "-R", f"{parent}@{self.target}"]
        return ["send", "-R", "-I" if self.intermediates else "-i",
                f"{parent}@{self.base}", f"{parent}@{self.target}"]


@dataclass(frozen=True)
class TreePlan(CyclePlan):
    send: TreeSend | None = None
    problems: list[str] = field(default_factory=list)  # why the tree cannot go as one
    # what each side lists below the parent: retention's `destroy -r` must not reach
    # a filesystem that would keep the name
    source_tree: dict[str, list[Snapshot]] = field(default_factory=dict)
    destination_tree: dict[str, list[Snapshot]] = field(default_factory=dict)

    def conflicts(self) -> list[str]:
        return [*super().conflicts(), *self.problems]

    def describe(self) -> list[str]:
        lines = super().describe()
        parent = self.replication.filesystems[0]
        what = (f"one stream: zfs {' '.join(self.send.args(parent.source))} | zfs receive "
                f"-u {parent.destination}") if self.send else "no stream"
        return [lines[0], f"recursive: {what}", *lines[1:]]


def parse_subtree(output: str) -> dict[str, FsState]:
    """`zfs get -Hp -r -o name,property,value PROPS PARENT` as {dataset: its state}: every
    filesystem and volume below the parent (and it), with its snapshots, oldest first."""
    out: dict[str, FsState] = {}
    snaps: dict[str, dict[str, str]] = {}
    for line in output.splitlines():
        parts = line.rsplit("\t", 2)
        if len(parts) != 3:
            continue
        name, prop, value = parts
        if "@" in name:
            snaps.setdefault(name, {})[prop] = value
        elif "#" not in name:
            st = out.setdefault(name, FsState())
            if prop == ROLE_PROPERTY and value not in ("-", ""):
                st.role = value
    for full, values in snaps.items():
        fs, name = full.split("@", 1)
        if fs in out:
            out[fs].snapshots.append(Snapshot(
                filesystem=fs, name=name, guid=_int(values.get("guid")),
                createtxg=_int(values.get("createtxg")) or 0,
                creation=_int(values.get("creation")) or 0,
                userrefs=_int(values.get("userrefs")) or 0))
    for st in out.values():
        st.snapshots.sort(key=lambda s: (s.createtxg, s.creation))
    return out


def below(name: str, parent: str) -> bool:
    return name == parent or name.startswith(parent + "/")


# What to do when the replicas of one subtree stand at different snapshots.
_APART = ("one stream cannot start from both (a replication stream cut midway leaves "
          "its filesystems apart); bring the replicas behind up to date by hand (zfs "
          "send -I of each), or destroy the newer snapshot on the replicas ahead while "
          "the source still has the older one ('zfsrepl doctor' compares the chains)")


def decide_tree(fps: list[FilesystemPlan], naming: SnapshotNaming
                ) -> tuple[TreeSend | None, list[str]]:
    """The one stream that brings every filesystem of `fps` (the parent first) up to
    date, or None; and why the subtree cannot be sent as one stream (then nothing is)."""
    top = fps[0].plan
    if isinstance(top, plan.Full):
        return TreeSend(target=top.send.target), []
    if isinstance(top, plan.UpToDate):
        # a stream cut midway may have brought the parent and left a child behind
        return None, [f"{fp.pair.destination} is behind {fps[0].pair.destination} "
                      f"(@{p.base} against @{top.common}): {_APART}"
                      for fp in fps[1:] if isinstance(p := fp.plan, plan.Incremental)]
    if not isinstance(top, plan.Incremental):
        return None, []  # nothing yet, or a conflict conflicts() names
    base, target = top.base, top.sends[-1].target
    problems: list[str] = []
    foreign_between = False
    intermediates = False
    for fp in fps:
        p = fp.plan
        if isinstance(p, plan.Full):
            if any(s.name == base for s in fp.source):
                problems.append(
                    f"{fp.pair.destination} is missing, though {fp.pair.source} has "
                    f"@{base}: the stream would bring it as an incremental; destroy "
                    f"{fp.pair.source}@{base} on the source (it is then sent whole), or "
                    "receive it again by hand")
        elif isinstance(p, plan.Incremental):
            if p.base != base:
                problems.append(
                    f"{fp.pair.source} shares @{p.base} with {fp.pair.destination}, not "
                    f"the parent's @{base}: {_APART}")
            foreign_between = foreign_between or len(p.sends) > 1
            intermediates = intermediates or any(s.intermediates for s in p.sends)
        elif not isinstance(p, (plan.NoCommonSnapshot, plan.Diverged, plan.NothingToSend)):
            problems.append(f"{fp.pair.source} is at @{getattr(p, 'common', '?')} while "
                            f"the parent is not: one stream cannot bring both")
    # -I only where nothing between is another's: -i skips the service's own snapshots
    # between too (kept on the source until retention), never bringing a foreign one
    return TreeSend(target, base, intermediates and not foreign_between), problems


def as_sent(fp: FilesystemPlan, send: TreeSend) -> FilesystemPlan:
    """`fp` with the plan the tree's stream carries out for it (what retention and the
    state after the cycle count on)."""
    if isinstance(fp.plan, plan.Incremental):
        one = plan.Send(target=send.target, base=fp.plan.base,
                        intermediates=send.intermediates)
        return dataclasses.replace(fp, plan=plan.Incremental(base=fp.plan.base, sends=(one,)))
    return fp


def _with_retention(rep: Replication, fp: FilesystemPlan, sent_ok: bool) -> FilesystemPlan:
    """`fp` with what retention destroys on each side (cycleplan.retention_after)."""
    destroy_src, destroy_dst = retention_after(rep, fp, sent_ok)
    return dataclasses.replace(fp, destroy_source=destroy_src, destroy_destination=destroy_dst)


def group_destroys(parent: str, wanted: Mapping[str, tuple[str, ...]],
                   tree: Mapping[str, list[Snapshot]]) -> tuple[list[str], list[tuple[str, str]]]:
    """The names to destroy with one `destroy -r parent@NAME` (every filesystem of `tree`
    that has the name would destroy it: `wanted` holds each filesystem's retention
    decision, oldest first), and the (filesystem, name) pairs left to destroy one by one."""
    has: dict[str, set[str]] = {}
    for fs, snaps in tree.items():
        for s in snaps:
            has.setdefault(s.name, set()).add(fs)
    whole = [name for name in wanted.get(parent, ())
             if all(name in wanted.get(fs, ()) for fs in has.get(name, ()))]
    rest = [(fs, name) for fs, names in wanted.items() for name in names
            if name not in whole]
    return whole, rest


class RecursiveCycle(Cycle):
    """A cycle of a recursive service: the parent and all below it as one stream."""

    @property
    def pair(self) -> FilesystemPair:
        return self.rep.filesystems[0]

    def _subtree(self, zfs: Zfs, parent: str) -> dict[str, FsState]:
        """One listing of everything below `parent` ({} when it does not exist)."""
        result = zfs.host.run(zfs.argv("get", "-Hp", "-r", "-o", "name,property,value",
                                       ",".join(zfs._props), parent), check=False)
        zfs._raise_unless_only_missing(result.returncode, result.stderr, result.argv)
        return {fs: st for fs, st in parse_subtree(result.stdout).items()
                if below(fs, parent)}

    def survey(self, take_snapshot: bool) -> TreePlan:
        rep, svc = self.rep, self.service
        hooks.check_executable("pre_snapshot", rep.pre_snapshot, svc.path)
        hooks.check_executable("post_snapshot", rep.post_snapshot, svc.path)
        src_parent, dst_parent = self.pair.source, self.pair.destination
        src_tree = self._subtree(self.src, src_parent)
        if src_parent not in src_tree:
            raise ReplicationError(
                f"source filesystem {src_parent} does not exist on {self.src.label}: create "
                "it, or correct [[filesystem]] source in the definition")
        dst_tree = self._subtree(self.dst, dst_parent)
        taken = sorted(fs for fs, st in dst_tree.items()
                       if st.role == diagnosis.ROLE_TAKEN_OVER)
        if taken:
            raise ReplicationError(diagnosis.interlock_problem(
                taken, svc.name, diagnosis.Side("destination", rep.receiving.host,
                                                rep.receiving.user)))
        outer = dst_parent.rsplit("/", 1)[0]
        if not dst_tree and not self.dst.existing([outer]):
            raise ReplicationError(
                f"destination parent {outer} does not exist on {self.dst.label}: create it "
                f"there (zfs create -p {outer}) or correct [[filesystem]] destination in "
                "the definition")
        lists = [st.snapshots for st in (*src_tree.values(), *dst_tree.values())]
        snapshot = rep.naming.format(plan.next_sequence(rep.naming, *lists)) \
            if take_snapshot else None
        fps: list[FilesystemPlan] = []
        for fs in sorted(src_tree):  # the parent first
            src = src_tree[fs].snapshots
            if snapshot:
                src = with_new_snapshot(src, fs, snapshot)
            dst_fs = dst_parent + fs[len(src_parent):]
            dst = dst_tree[dst_fs].snapshots if dst_fs in dst_tree else None
            fps.append(FilesystemPlan(FilesystemPair(fs, dst_fs), src, dst,
                                      plan.plan_filesystem(src, dst, rep.naming)))
        send, problems = decide_tree(fps, rep.naming)
        if send is not None:
            fps = [as_sent(fp, send) for fp in fps]
        fps = [_with_retention(rep, fp, sent_ok=True) for fp in fps]
        return TreePlan(rep, snapshot, fps, self.wire() if wire_configured(svc) else None,
                        send=send, problems=problems,
                        source_tree={fs: st.snapshots for fs, st in src_tree.items()},
                        destination_tree={fs: st.snapshots for fs, st in dst_tree.items()})

    def take_snapshots(self, cp: CyclePlan) -> CyclePlan:
        """pre hook, one `snapshot -r` of the parent, post hook (always, once the pre hook
        was started); `cp` stamped with the snapshot's time."""
        snapshot = cp.snapshot
        assert snapshot is not None
        taken = 0

        def take() -> None:
            nonlocal taken
            taken = int(time.time())
            self.src.run("snapshot", "-r", f"{self.pair.source}@{snapshot}")
            logger.info("snapshot %s@%s taken with everything below it (%d filesystem(s))",
                        self.pair.source, snapshot, len(cp.filesystems))

        between_hooks(self.rep, [fp.pair.source for fp in cp.filesystems], snapshot, take)
        return cp.stamped(taken)

    def send_and_prune(self, cp: CyclePlan) -> bool:
        """The one stream, then retention on each side (as things stand when the stream
        failed). Never needs another look: nothing here resumes."""
        assert isinstance(cp, TreePlan)
        failure: ZfsreplError | None = None
        if cp.send is not None:
            try:
                self._stream_tree(cp.send)
            except ZfsreplError as exc:
                failure = exc
        fps = cp.filesystems if failure is None else \
            [_with_retention(self.rep, fp, sent_ok=False) for fp in cp.filesystems]
        self._retention(self.src, self.pair.source, cp.source_tree,
                        {fp.pair.source: fp.destroy_source for fp in fps})
        self._retention(self.dst, self.pair.destination, cp.destination_tree,
                        {fp.pair.destination: fp.destroy_destination for fp in fps})
        if failure is not None:
            raise failure
        return False

    def _stream_tree(self, send: TreeSend, cancel: Cancel | None = None) -> None:
        svc, src_fs, dst_fs = self.service, self.pair.source, self.pair.destination
        what = (f"{'full' if send.base is None else 'incremental'} replication stream of "
                f"{src_fs}@{send.target} and everything below it to "
                f"{self.dst.label}:{dst_fs}")
        wire = self.wire()
        logger.info("starting %s%s", what,
                    f" (wire: {wire.describe(False)})" if wire_configured(svc) else "")
        sender = self.src.host.command(self.src.argv(*send.args(src_fs)))
        commands_logger.debug("%s: running %s", self.src.label, shlex.join(sender))
        # No -F: see the module's docstring.
        receive = self.dst.argv("receive", "-u", dst_fs)
        helpers = wire.helpers(False)
        receiver = pipeline_command(self.dst.host, [*helpers, receive],
                                    quiet_helpers=not wire.agent) \
            if helpers else self.dst.host.command(receive)
        compression = wire.for_stream(False)
        result = pipe(sender, receiver, what,
                      progress=Progress(f"{src_fs}@{send.target} (recursive)"),
                      limit=svc.bandwidth_limit,
                      compressor=compress_argv(compression) if compression else None,
                      cancel=cancel,
                      watchdog=Watchdog(svc.stall_timeout,
                                        sender=f"zfs send on {self.src.label}",
                                        receiver=f"zfs receive on {self.dst.label}"))
        size = "" if result.bytes is None else f", {result.bytes} bytes"
        logger.info("finished %s in %.1fs%s", what, result.seconds, size)
        self.events.sent(self.pair, result)

    def _retention(self, zfs: Zfs, parent: str, tree: dict[str, list[Snapshot]],
                   wanted: dict[str, tuple[str, ...]]) -> None:
        """Destroy what retention chose on one side; a failure fails nothing (a later
        cycle destroys what is left)."""
        whole, rest = group_destroys(parent, wanted, tree)
        steps: Iterable[tuple[str, tuple[str, ...]]] = [
            *((f"{parent}@{name}", ("destroy", "-r", f"{parent}@{name}")) for name in whole),
            *((f"{fs}@{name}", ("destroy", f"{fs}@{name}")) for fs, name in rest)]
        for shown, args in steps:
            try:
                zfs.run(*args)
            except HasClones:
                logger.info("kept %s on %s: a clone of it exists", shown, zfs.label)
                continue
            except (CommandError, ZfsreplError) as exc:
                logger.warning("retention on %s: %s", zfs.label, exc)
                continue
            logger.info("destroyed %s%s on %s", shown,
                        " and that snapshot of everything below" if len(args) == 3 else "",
                        zfs.label)
