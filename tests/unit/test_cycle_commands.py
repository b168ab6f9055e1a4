"""What a cycle does at the zfs level, pinned: every command on each side, in order,
every log line, every stream reported to the service, and what the cycle tells the
service about the destination afterwards, over several cycles of a service of one and
of three filesystems, on both kinds of ZFS, forward and back (failback), with a stream
cut in between. The expected record (data/cycle_commands.json) was taken from the
cycle before it was split into plan and executor, and taken again when the
destination's destroys became one request (the agent's destroy-many): a change of the
number, order or form of its commands shows here."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.cycle import CycleEvents, destination_after, replicate
from zfsrepl.errors import CommandError
from zfsrepl.replication import Replication
from zfsrepl.transfer import TransferResult
from zfsrepl.zfs import CapabilityCache

from .fakes import SimZfs, World
from .test_capabilities import FUSE, OPENZFS

RECORD = Path(__file__).parent / "data" / "cycle_commands.json"
CYCLES = 4


def service(n: int, **extra: Any) -> Service:
    pairs = tuple(FilesystemPair(f"tank/src/fs{i}", f"backup/dst/fs{i}") for i in range(n))
    return Service(name="batch", source=Endpoint("srchost", "src"),
                   destination=Endpoint("desthost", "dst"), filesystems=pairs,
                   keep_source=2, keep_destination=3, retry_delay=0.0, **extra)


class Events(CycleEvents):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def attempt_failed(self, attempt: int, attempts: int, error: Exception) -> None:
        self.seen.append(f"attempt {attempt}/{attempts} failed: {error}")

    def sent(self, pair: FilesystemPair, result: TransferResult) -> None:
        self.seen.append(f"sent {pair.source} -> {pair.destination}: {result.bytes}")


def back(svc: Service) -> Service:
    """The definition's copy on the destination host (its cycles replicate back)."""
    return dataclasses.replace(svc, role="destination")


def run(svc: Service, usage: str, cut_in: int | None, caplog: pytest.LogCaptureFixture
        ) -> dict[str, Any]:
    """CYCLES cycles of `svc` between a source whose filesystems exist and an empty
    destination; the first filesystem's streams are cut in cycle `cut_in`."""
    failback = svc.role == "destination"
    sending = [p.destination if failback else p.source for p in svc.filesystems]
    src = SimZfs("src@srchost", usage, sending, {"tank/src", "backup/dst"})
    src.requests = []  # the sending side runs zfs itself: no agent
    dst = SimZfs("dst@desthost", usage, [], {"tank/src", "backup/dst"})
    w = World(src, dst, svc, CapabilityCache())
    events = Events()
    after: list[dict[str, list[str] | None]] = []
    caplog.set_level(logging.INFO, logger="zfsrepl")
    for n in range(1, CYCLES + 1):
        w.streams.cut = {sending[0]} if n == cut_in else set()
        try:
            cp = replicate(Replication.failback(svc) if failback else svc, src, dst,
                           sleep=lambda s: None, events=events, capabilities=w.cache,
                           streams=w.streams)
        except CommandError as exc:
            events.seen.append(f"cycle {n} failed: {exc}")
            continue
        after.append({fp.pair.destination: _names(destination_after(fp))
                      for fp in cp.filesystems})
    return {"source": src.calls, "destination": dst.calls,
            "log": [f"{r.levelname} {r.getMessage()}" for r in caplog.records
                    if r.name.startswith("zfsrepl")],
            "events": events.seen, "after": after}


def _names(snaps: Any) -> list[str] | None:
    return None if snaps is None else [s.name for s in snaps]


CASES = {
    "openzfs-1": (service(1), OPENZFS, None),
    "openzfs-3": (service(3), OPENZFS, None),
    "zfs-fuse-3": (service(3), FUSE, None),
    "openzfs-3-cut": (service(3, retries=2), OPENZFS, 3),
    "zfs-fuse-3-cut": (service(3), FUSE, 2),
    "openzfs-3-failback": (back(service(3)), OPENZFS, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_cycle_runs_the_commands_it_always_ran(case: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    svc, usage, cut_in = CASES[case]
    got = run(svc, usage, cut_in, caplog)
    want = json.loads(RECORD.read_text())[case]
    for key in ("source", "destination", "log", "events", "after"):
        assert got[key] == want[key], key

