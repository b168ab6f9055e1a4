"""Which way a service replicates: forward (source -> destination) or back (failback,
destination -> source), as one model built from a definition and its role.

The copy of a definition setup keeps on the destination host says
`role = "destination"`; `runonce` and `doctor` run from it replicate back. This is the
one place that turns the role into a direction: everything else asks the `Replication`
which side sends, which receives, what each keeps and whether a new replica is made
read-only.

Both directions keep the service's own snapshot names
(`zfsrepl-<srcuser>-<dstuser>-<dsthost>-N`), so that the chain continues by GUID either
way, and its hold tag. The snapshot hooks quiesce the application on the source host:
they run only forward.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.diagnosis import Side
from zfsrepl.naming import SnapshotNaming


class Direction(enum.Enum):
    FORWARD = "forward"  # source -> destination
    FAILBACK = "failback"  # destination -> source


@dataclass(frozen=True)
class Replication:
    """A service in one direction. `filesystems` pairs each sending filesystem (`source`)
    with its receiving one (`destination`), whichever host they are on."""

    service: Service  # the definition, as written
    direction: Direction

    @classmethod
    def of(cls, service: Service) -> Replication:
        """The direction a definition replicates in from the host it is kept on."""
        return cls.failback(service) if service.is_destination_copy else cls.forward(service)

    @classmethod
    def forward(cls, service: Service) -> Replication:
        return cls(service, Direction.FORWARD)

    @classmethod
    def failback(cls, service: Service) -> Replication:
        return cls(service, Direction.FAILBACK)

    @property
    def is_failback(self) -> bool:
        return self.direction is Direction.FAILBACK

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def naming(self) -> SnapshotNaming:
        return self.service.naming  # the same names both ways

    @property
    def sending(self) -> Endpoint:
        return self.service.destination if self.is_failback else self.service.source

    @property
    def receiving(self) -> Endpoint:
        return self.service.source if self.is_failback else self.service.destination

    @property
    def filesystems(self) -> tuple[FilesystemPair, ...]:
        if not self.is_failback:
            return self.service.filesystems
        return tuple(FilesystemPair(p.destination, p.source) for p in self.service.filesystems)

    @property
    def keep_sending(self) -> int:
        svc = self.service
        return svc.keep_destination if self.is_failback else svc.keep_source

    @property
    def keep_receiving(self) -> int:
        svc = self.service
        return svc.keep_source if self.is_failback else svc.keep_destination

    @property
    def pre_snapshot(self) -> str | None:
        return None if self.is_failback else self.service.pre_snapshot

    @property
    def post_snapshot(self) -> str | None:
        return None if self.is_failback else self.service.post_snapshot

    @property
    def readonly_replica(self) -> bool:
        """A new replica is made read-only (where receive sets properties); not when
        replicating back: the receiving side is then the original source."""
        return not self.is_failback

    @property
    def sending_side(self) -> Side:
        """The sending side as the operator knows it (its role in the definition)."""
        ep = self.sending
        return Side("destination" if self.is_failback else "source", ep.host, ep.user)

    @property
    def receiving_side(self) -> Side:
        ep = self.receiving
        return Side("source" if self.is_failback else "destination", ep.host, ep.user)
