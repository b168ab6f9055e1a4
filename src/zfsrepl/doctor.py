"""`zfsrepl doctor`: gather both sides' chains and facts, diagnose them (diagnosis.py,
pure), print the findings, and apply the safe repairs.

The direction is the one `runonce` takes from the same definition: source ->
destination from the source's definition, destination -> source from the copy on
the destination host (failback). A diverged receiving filesystem is repaired by
renaming it aside (repair.py), which destroys nothing; the other repairs are only
ever: destroying snapshots of this service, rolling back to a snapshot common to
both sides (no -r) -- for a diverged one only when asked to (`--destroy`) -- and
clearing the maintenance state; each one is re-checked against its finding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Union

from zfsrepl import diagnosis, repair
from zfsrepl.config import Endpoint, Service
from zfsrepl.diagnosis import Chains, Finding, Kind, Side
from zfsrepl.errors import ZfsreplError
from zfsrepl.host import LocalHost, SshHost
from zfsrepl.replication import Replication
from zfsrepl.state import ServicePaths, StateStore, clear_maintenance
from zfsrepl.zfs import RESUME_TOKEN, FsState, Zfs


@dataclass
class Report:
    replication: Replication  # the direction this host replicates in
    chains: list[Chains] = field(default_factory=list)
    findings: list[tuple[str, Finding]] = field(default_factory=list)  # (subject, finding)
    tables: dict[str, list[str]] = field(default_factory=dict)
    # the repair that keeps a diverged replica's data (repair.py), by subject
    asides: dict[str, repair.RenameAside] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return all(f.healthy for _, f in self.findings)

    def repairs(self, destroy: bool = False) -> list[Step]:
        """What --fix does: for a diverged replica, the rename aside (or with `destroy`,
        the finding's destroy and roll back); the findings' repairs for the rest."""
        steps: list[Step] = []
        for subject, f in self.findings:
            aside = self.asides.get(subject)
            steps += [aside] if aside is not None and not destroy else f.repairs
        return steps

    def unfixed(self, destroy: bool = False) -> list[Finding]:
        return [f for subject, f in self.findings if not f.healthy and not f.repairs
                and (destroy or subject not in self.asides)]

    @property
    def sending(self) -> Side:
        return self.replication.sending_side

    @property
    def receiving(self) -> Side:
        return self.replication.receiving_side

    def lines(self) -> list[str]:
        out = [f"service {self.replication.name}: replicating {self.sending.label} -> "
               f"{self.receiving.label}"]
        for subject, f in self.findings:
            out.append("")
            out.append(f"{subject}: {f.title.upper()}")
            out += self.tables.get(subject, [])
            out.append(f"  {f.explanation}")
            aside = self.asides.get(subject)
            if aside is not None:
                out.append("  Repair that keeps what was written there (the default of "
                           "`zfsrepl doctor --fix`): " + repair.describe(aside) + ".")
                out += [f"  fix: on {self.receiving.host}: {cmd}"
                        for cmd in repair.commands(aside)]
                if f.commands:
                    out.append("  or discard it" + (" (`zfsrepl doctor --fix --destroy`)"
                                                    if f.repairs else "") + ":")
            for cmd in f.commands:
                out.append(f"  fix: {cmd}")
            if f.repairs and aside is None:
                out.append("  `zfsrepl doctor --fix` does this for you")
        return out


Step = Union[diagnosis.Repair, repair.RenameAside]


def describe(step: Step) -> str:
    if isinstance(step, repair.RenameAside):
        return repair.describe(step)
    return diagnosis.describe_repair(step)


def _remote(ep: Endpoint, via_agent: bool) -> SshHost:
    return SshHost(ep) if via_agent else SshHost(ep, extra_options=("BatchMode=no",))


def examine(svc_def: Service, state_dir: Path, now: datetime | None = None
            ) -> tuple[Report, Zfs, SshHost]:
    """Everything doctor knows about the service; the caller closes the SshHost.
    `now` names a diverged replica's new name (repair.py)."""
    rep = Replication.of(svc_def)
    # forward, the receiving side is reached through its agent; back (failback), the
    # original source is logged into as its user, a password allowed
    via_agent = not rep.is_failback
    report = Report(rep)
    local = Zfs(LocalHost(rep.sending_side.label), rep.sending.zfs_argv)
    remote_host = _remote(rep.receiving, via_agent)
    remote = Zfs(remote_host, rep.receiving.zfs_argv)
    snd_states, rcv_states = _list_both(report, local, remote, via_agent)
    chains_ok = False
    if snd_states is not None and rcv_states is not None:
        chains_ok = _examine_chains(report, remote, snd_states, rcv_states, via_agent,
                                    now or datetime.now(timezone.utc))
    st = StateStore(ServicePaths(state_dir, rep.name)).load()
    if st.in_maintenance:
        report.findings.insert(0, ("service", diagnosis.diagnose_maintenance(
            rep.name, st.maintenance_reason, chains_ok)))
    return report, local, remote_host


States = dict[str, Optional[FsState]]  # evaluated at run time: no `|` before 3.10


def _list_both(report: Report, local: Zfs, remote: Zfs, via_agent: bool
               ) -> tuple[States | None, States | None]:
    """Both sides' filesystems (None: that side could not be asked, a finding says why)."""
    rep = report.replication
    pairs = rep.filesystems
    snd_states: States | None = None
    rcv_states: States | None = None
    resumable = False
    try:
        snd_states = local.states([p.source for p in pairs])  # bookmarks included
        resumable = local.capabilities().resume
    except ZfsreplError as exc:
        report.findings.append((f"{report.sending.label}", diagnosis.diagnose_access(
            exc, report.sending, rep.name, via_agent=False)))
    try:
        # the token of a cut receive, read where a cycle reads it (both sides resume)
        resumable = resumable and remote.capabilities().resume
        rcv_states = remote.states([p.destination for p in pairs],
                                   (RESUME_TOKEN,) if resumable else ())
    except ZfsreplError as exc:
        report.findings.append((f"{report.receiving.label}", diagnosis.diagnose_access(
            exc, report.receiving, rep.name, via_agent=via_agent)))
    return snd_states, rcv_states


def _examine_chains(report: Report, remote: Zfs, snd_states: States, rcv_states: States,
                    via_agent: bool, now: datetime) -> bool:
    """A finding and a table for each filesystem (and the rename aside for a diverged
    replica); whether every chain allows the next cycle, as is or once repaired."""
    rep = report.replication
    pairs = rep.filesystems
    missing_parents = sorted({p.destination.rsplit("/", 1)[0] for p in pairs
                              if rcv_states[p.destination] is None})
    present = remote.existing(missing_parents) if missing_parents else set()
    chains_ok = True
    for p in pairs:
        snd, rcv = snd_states[p.source], rcv_states[p.destination]
        written = None
        if not via_agent and rcv is not None and rcv.snapshots:
            written = _written(remote, p.destination)
        c = Chains(p.source, p.destination, snd.snapshots if snd else None,
                   rcv.snapshots if rcv else None,
                   sending_bookmarks=tuple(snd.bookmarks) if snd else (),
                   receiving_resume_token=rcv.resume_token if rcv else None,
                   receiving_role=rcv.role if rcv else None,
                   receiving_parent_exists=p.destination.rsplit("/", 1)[0] in present
                   or rcv is not None,
                   receiving_written=written, sending_side=report.sending,
                   receiving_side=report.receiving)
        f = diagnosis.diagnose(c, rep.naming, rep.name)
        subject = f"{p.source} -> {p.destination}"
        report.chains.append(c)
        report.findings.append((subject, f))
        report.tables[subject] = diagnosis.chain_table(c, rep.naming)
        if f.kind in repair.DIVERGED:
            aside = repair.offer(c, f, rep.naming, now, readonly=rep.readonly_replica
                                 and remote.capabilities().recv_props)
            if aside is not None:
                report.asides[subject] = aside
        chains_ok = chains_ok and (f.healthy or bool(f.repairs) or subject in report.asides)
    return chains_ok


def _written(zfs: Zfs, fs: str) -> int | None:
    """Bytes written since the newest snapshot, where this ZFS tells (not pool v23)."""
    try:
        value = zfs.get_properties(fs, ["written"]).get("written", "")
    except ZfsreplError:
        return None
    return int(value) if value.isdigit() else None


def apply(report: Report, local: Zfs, remote: Zfs, state_dir: Path, *,
          destroy: bool = False) -> list[str]:
    """Carry out the report's repairs (`Report.repairs`), in order; one line per step
    done."""
    done: list[str] = []
    naming = report.replication.naming
    for step in report.repairs(destroy):
        if isinstance(step, repair.RenameAside):
            done += repair.apply(step, remote)
            continue
        if isinstance(step, diagnosis.ClearMaintenance):
            StateStore(ServicePaths(state_dir, step.service)).update(clear_maintenance)
            done.append(f"cleared the maintenance state of {step.service}")
            continue
        zfs = local if step.side == "sending" else remote
        if isinstance(step, diagnosis.DestroySnapshot):
            if not naming.is_ours(step.snapshot):  # never another's snapshot
                raise ZfsreplError(f"refusing to destroy @{step.snapshot}: not made by "
                                   f"service {report.replication.name}")
            zfs.destroy_snapshot(step.filesystem, step.snapshot)
            done.append(f"destroyed {step.filesystem}@{step.snapshot} on {zfs.label}")
        else:
            zfs.rollback(step.filesystem, step.snapshot)
            done.append(f"rolled {step.filesystem} back to @{step.snapshot} on {zfs.label}")
    return done


def kinds(report: Report) -> list[Kind]:
    return [f.kind for _, f in report.findings]
