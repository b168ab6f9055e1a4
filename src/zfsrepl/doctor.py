"""`zfsrepl doctor`: gather both sides' chains and facts, diagnose them (diagnosis.py,
pure), print the findings, and apply the safe repairs.

The direction is the one `runonce` takes from the same definition: source ->
destination from the source's definition, destination -> source from the copy on
the destination host (failback). Repairs are only ever: destroying snapshots of
this service, rolling back to a snapshot common to both sides (no -r), and
clearing the maintenance state; each one is re-checked against its finding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zfsrepl import diagnosis, failover
from zfsrepl.config import Endpoint, Service
from zfsrepl.diagnosis import Chains, Finding, Kind, Side
from zfsrepl.errors import ZfsreplError
from zfsrepl.host import LocalHost, SshHost
from zfsrepl.state import ServicePaths, StateStore, clear_maintenance
from zfsrepl.zfs import RESUME_TOKEN, FsState, Zfs


@dataclass
class Report:
    service: Service  # as replicated from this host (reversed on the destination)
    sending: Side
    receiving: Side
    chains: list[Chains] = field(default_factory=list)
    findings: list[tuple[str, Finding]] = field(default_factory=list)  # (subject, finding)
    tables: dict[str, list[str]] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return all(f.healthy for _, f in self.findings)

    def repairs(self) -> list[diagnosis.Repair]:
        return [r for _, f in self.findings for r in f.repairs]

    def lines(self) -> list[str]:
        svc = self.service
        out = [f"service {svc.name}: replicating {self.sending.label} -> {self.receiving.label}"]
        for subject, f in self.findings:
            out.append("")
            out.append(f"{subject}: {f.title.upper()}")
            out += self.tables.get(subject, [])
            out.append(f"  {f.explanation}")
            for cmd in f.commands:
                out.append(f"  fix: {cmd}")
            if f.repairs:
                out.append("  `zfsrepl doctor --fix` does this for you")
        return out


def sides(svc: Service) -> tuple[Service, Side, Side, bool]:
    """(service as replicated from here, sending side, receiving side, via the agent)."""
    src = Side("source", svc.source.host, svc.source.user)
    dst = Side("destination", svc.destination.host, svc.destination.user)
    if svc.is_destination_copy:
        return failover.reversed_service(svc), dst, src, False
    return svc, src, dst, True


def _remote(ep: Endpoint, via_agent: bool) -> SshHost:
    return SshHost(ep) if via_agent else SshHost(ep, extra_options=("BatchMode=no",))


def examine(svc_def: Service, state_dir: Path) -> tuple[Report, Zfs, SshHost]:
    """Everything doctor knows about the service; the caller closes the SshHost."""
    svc, snd_side, rcv_side, via_agent = sides(svc_def)
    report = Report(svc, snd_side, rcv_side)
    local = Zfs(LocalHost(snd_side.label), svc.source.zfs_argv)
    remote_host = _remote(svc.destination, via_agent)
    remote = Zfs(remote_host, svc.destination.zfs_argv)
    pairs = list(svc.filesystems)

    snd_states: dict[str, FsState | None] | None = None
    rcv_states: dict[str, FsState | None] | None = None
    resumable = False
    try:
        snd_states = local.states([p.source for p in pairs])  # bookmarks included
        resumable = local.capabilities().resume
    except ZfsreplError as exc:
        report.findings.append((f"{snd_side.label}", diagnosis.diagnose_access(
            str(exc), snd_side, svc.name, via_agent=False)))
    try:
        # the token of a cut receive, read where a cycle reads it (both sides resume)
        resumable = resumable and remote.capabilities().resume
        rcv_states = remote.states([p.destination for p in pairs],
                                   (RESUME_TOKEN,) if resumable else ())
    except ZfsreplError as exc:
        report.findings.append((f"{rcv_side.label}", diagnosis.diagnose_access(
            str(exc), rcv_side, svc.name, via_agent=via_agent)))

    chains_ok = True
    if snd_states is not None and rcv_states is not None:
        missing_parents = sorted({p.destination.rsplit("/", 1)[0] for p in pairs
                                  if rcv_states[p.destination] is None})
        present = remote.existing(missing_parents) if missing_parents else set()
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
                       receiving_written=written, sending_side=snd_side,
                       receiving_side=rcv_side)
            f = diagnosis.diagnose(c, svc.naming, svc.name)
            subject = f"{p.source} -> {p.destination}"
            report.chains.append(c)
            report.findings.append((subject, f))
            report.tables[subject] = diagnosis.chain_table(c, svc.naming)
            chains_ok = chains_ok and (f.healthy or bool(f.repairs))
    else:
        chains_ok = False

    st = StateStore(ServicePaths(state_dir, svc.name)).load()
    if st.in_maintenance:
        report.findings.insert(0, ("service", diagnosis.diagnose_maintenance(
            svc.name, st.maintenance_reason, chains_ok)))
    return report, local, remote_host


def _written(zfs: Zfs, fs: str) -> int | None:
    """Bytes written since the newest snapshot, where this ZFS tells (not pool v23)."""
    try:
        value = zfs.get_properties(fs, ["written"]).get("written", "")
    except ZfsreplError:
        return None
    return int(value) if value.isdigit() else None


def apply(report: Report, local: Zfs, remote: Zfs, state_dir: Path) -> list[str]:
    """Carry out the report's repairs, in order; one line per step done."""
    done: list[str] = []
    naming = report.service.naming
    for repair in report.repairs():
        if isinstance(repair, diagnosis.ClearMaintenance):
            StateStore(ServicePaths(state_dir, repair.service)).update(clear_maintenance)
            done.append(f"cleared the maintenance state of {repair.service}")
            continue
        zfs = local if repair.side == "sending" else remote
        if isinstance(repair, diagnosis.DestroySnapshot):
            if not naming.is_ours(repair.snapshot):  # never another's snapshot
                raise ZfsreplError(f"refusing to destroy @{repair.snapshot}: not made by "
                                   f"service {report.service.name}")
            zfs.destroy_snapshot(repair.filesystem, repair.snapshot)
            done.append(f"destroyed {repair.filesystem}@{repair.snapshot} on {zfs.label}")
        else:
            zfs.rollback(repair.filesystem, repair.snapshot)
            done.append(f"rolled {repair.filesystem} back to @{repair.snapshot} on {zfs.label}")
    return done


def kinds(report: Report) -> list[Kind]:
    return [f.kind for _, f in report.findings]
