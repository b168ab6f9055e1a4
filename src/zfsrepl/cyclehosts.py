"""What the parts of a cycle share: both hosts' ZFS, the replication they carry out,
the service's hold tag, the events the service learns of, the stream seam, and what
is probed once per connection (capabilities, the wire's tools)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ContextManager, Protocol

from zfsrepl.capabilities import Capabilities
from zfsrepl.config import FilesystemPair
from zfsrepl.cycleplan import wire_configured
from zfsrepl.errors import ZfsreplError
from zfsrepl.host import NO_TOOLS
from zfsrepl.listing_cache import Listings
from zfsrepl.log import logger
from zfsrepl.replication import Replication
from zfsrepl.transfer import TransferResult, Wire, choose_wire
from zfsrepl.zfs import Zfs


class CycleEvents:
    """What the long-running service learns of a cycle as it goes; the defaults do nothing."""

    def attempt_failed(self, attempt: int, attempts: int, error: ZfsreplError) -> None:
        """An attempt failed (the last one too, before the error is raised)."""

    def sent(self, pair: FilesystemPair, result: TransferResult) -> None:
        """One stream reached the destination. Called from worker threads when the
        service sends several filesystems at once (`parallel`): must be thread-safe."""

    def snapshot_phase(self) -> ContextManager[None]:
        """Wraps hooks and snapshots, which a stop request must not cut in half."""
        return contextlib.nullcontext()

    def listing_folder(self) -> Path | None:
        """Where the listing cache is kept (listing_cache.py); None: no cache."""
        return None


class Streams(Protocol):
    """The seam where a cycle moves data: one `zfs send | zfs receive` pipeline
    (transfer.pipe's arguments and result)."""

    def pipe(self, sender: list[str], receiver: list[str], what: str,
             **options: Any) -> TransferResult: ...


class CycleHosts:
    """Both sides of one cycle and what is known of them."""

    def __init__(self, rep: Replication, src: Zfs, dst: Zfs, tag: str, events: CycleEvents,
                 streams: Streams) -> None:
        self.rep = rep
        self.src = src
        self.dst = dst
        self.tag = tag
        self.events = events
        self.streams = streams
        self._wire: Wire | None = None
        # A failback lists the other way round: it keeps no listing cache, so that
        # one direction's cached listings never stand for the other's.
        self.listings = Listings(rep.service,
                                 None if rep.is_failback else events.listing_folder(),
                                 src, dst)

    def wire(self) -> Wire:
        """How this cycle's streams cross the network: what the definition asks for, as
        far as both hosts have the tools (looked up once per connection; a missing tool
        is a WARNING, and the stream goes without it)."""
        if self._wire is None:
            svc = self.rep.service
            if not wire_configured(svc):
                self._wire = Wire()
            else:
                src_tools = self.src.tools() if svc.wire_compression != "none" else NO_TOOLS
                self._wire, notes = choose_wire(svc.wire_compression, svc.buffer,
                                                self.src.label, src_tools,
                                                self.dst.label, self.dst.tools())
                for level, message in notes:
                    logger.log(level, "%s", message)
        return self._wire

    def forget_probes(self) -> None:
        """Probe both hosts again (after a failed attempt: a host may have changed)."""
        self.src.forget_capabilities()
        self.dst.forget_capabilities()
        self._wire = None

    def readonly_replica(self, dst_caps: Capabilities) -> bool:
        """A new replica is made read-only, where receive can set properties; not when
        replicating back (failback): the receiving side is then the original source."""
        return dst_caps.recv_props and self.rep.readonly_replica

    def resumable(self) -> bool:
        return self.dst.capabilities().resume and self.src.capabilities().resume

    def connected(self) -> None:
        """Have each host's ssh connection up before a filesystem is handed to a worker.
        Done in the main thread: a connection lost in the middle of a cycle is opened
        again once, not by each worker that finds it gone; and the new master dies with
        the process, not with the worker thread that would have started it
        (PR_SET_PDEATHSIG follows the thread that started a child)."""
        for zfs in (self.src, self.dst):
            connect = getattr(zfs.host, "connect", None)
            if connect is not None:
                connect()
