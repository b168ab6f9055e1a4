"""The direction of a replication: forward from a definition, back (failback) from the
copy setup keeps on the destination host."""

from __future__ import annotations

from typing import Any

from zfsrepl.config import parse_service
from zfsrepl.diagnosis import Side
from zfsrepl.replication import Direction, Replication


def definition(**extra: Any) -> dict[str, Any]:
    return {"name": "svc", "keep_source": 2, "keep_destination": 5,
            "pre_snapshot": "/bin/true", "post_snapshot": "/bin/true",
            "source": {"host": "srchost", "user": "src"},
            "destination": {"host": "dsthost", "user": "dst",
                            "zfs_command": "sudo -n /usr/sbin/zfs"},
            "filesystem": [{"source": "p/src/a", "destination": "p/dst/a"},
                           {"source": "p/src/b", "destination": "p/dst/b"}],
            **extra}


def test_a_definition_replicates_forward_from_the_source() -> None:
    svc = parse_service(definition())
    rep = Replication.of(svc)
    assert rep.direction is Direction.FORWARD and not rep.is_failback
    assert (rep.sending, rep.receiving) == (svc.source, svc.destination)
    assert rep.filesystems == svc.filesystems
    assert (rep.keep_sending, rep.keep_receiving) == (2, 5)
    assert (rep.pre_snapshot, rep.post_snapshot) == ("/bin/true", "/bin/true")
    assert rep.readonly_replica
    assert rep.sending_side == Side("source", "srchost", "src")
    assert rep.receiving_side == Side("destination", "dsthost", "dst")


def test_the_destination_copy_replicates_back_under_the_same_names() -> None:
    svc = parse_service(definition(role="destination"))
    rep = Replication.of(svc)
    assert rep == Replication.failback(svc) and rep.is_failback
    assert rep.naming == svc.naming  # the chain continues by GUID under the same names
    assert (rep.sending, rep.receiving) == (svc.destination, svc.source)
    assert rep.sending.zfs_argv == ["sudo", "-n", "/usr/sbin/zfs"]
    assert [(p.source, p.destination) for p in rep.filesystems] == [
        ("p/dst/a", "p/src/a"), ("p/dst/b", "p/src/b")]
    assert (rep.keep_sending, rep.keep_receiving) == (5, 2)
    # the hooks quiesce the application on the source host: not here
    assert (rep.pre_snapshot, rep.post_snapshot) == (None, None)
    # the receiving side is the original source: never made read-only
    assert not rep.readonly_replica
    assert rep.sending_side == Side("destination", "dsthost", "dst")
    assert rep.receiving_side == Side("source", "srchost", "src")
