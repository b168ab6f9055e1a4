"""Failover helpers without ZFS: the reversed service, --mountpoint, lockout."""

from __future__ import annotations

from pathlib import Path

import pytest

from zfsrepl import failover
from zfsrepl.config import parse_service
from zfsrepl.errors import ConfigError, UsageError, ZfsreplError
from zfsrepl.setup import authorized_keys


def definition(**extra: object) -> dict[str, object]:
    return {"name": "svc", "keep_source": 2, "keep_destination": 5,
            "pre_snapshot": "/bin/true",
            "source": {"host": "srchost", "user": "src"},
            "destination": {"host": "dsthost", "user": "dst", "zfs_command": "sudo -n zfs"},
            "filesystem": [{"source": "p/src/a", "destination": "p/dst/a",
                            "mountpoint": "/srv/a"},
                           {"source": "p/src/b", "destination": "p/dst/b"}],
            **extra}


def test_reversed_service_keeps_the_names_and_swaps_the_sides() -> None:
    svc = parse_service(definition(role="destination"))
    back = failover.reversed_service(svc)
    assert back.naming == svc.naming  # the chain continues by GUID under the same names
    assert back.source == svc.destination and back.destination == svc.source
    assert [(p.source, p.destination) for p in back.filesystems] == [
        ("p/dst/a", "p/src/a"), ("p/dst/b", "p/src/b")]
    assert (back.keep_source, back.keep_destination) == (5, 2)
    assert back.pre_snapshot is None
    assert failover.is_destination_copy(svc)
    assert not failover.is_destination_copy(parse_service(definition()))


def test_mountpoint_key_is_validated() -> None:
    svc = parse_service(definition())
    assert svc.filesystems[0].mountpoint == "/srv/a" and svc.filesystems[1].mountpoint is None
    bad = definition()
    bad["filesystem"] = [{"source": "p/s", "destination": "p/d", "mountpoint": "rel"}]
    with pytest.raises(ConfigError, match=r"filesystem\[1\]\.mountpoint: 'rel' is not a full"):
        parse_service(bad)


def test_parse_mountpoints() -> None:
    svc = parse_service(definition())
    assert failover.parse_mountpoints(["p/dst/a=/x", "p/src/b=/y"], svc) == {
        "p/dst/a": "/x", "p/dst/b": "/y"}
    for value, msg in (("nope", "expected FS=PATH"), ("p/other=/x", "not a filesystem"),
                       ("p/dst/a=rel", "not a full path")):
        with pytest.raises(UsageError, match=msg):
            failover.parse_mountpoints([value], svc)


def test_lockout_removes_only_the_service_line(tmp_path: Path) -> None:
    svc = parse_service(definition())
    marker = authorized_keys.service_marker("svc", "src", "srchost")
    first, second = b"ssh-ed25519 AAAAother admin@x\n", b"# a comment zfsrepl:svc:src@srchost\n"
    ours = f'restrict,command="zfsrepl agent" ssh-ed25519 AAAAkey {marker}\n'.encode()
    path = tmp_path / "authorized_keys"
    path.write_bytes(first + ours + second)
    assert failover.lockout(svc, path) == marker
    assert path.read_bytes() == first + second
    with pytest.raises(ZfsreplError, match="is not there"):
        failover.lockout(svc, path)
    with pytest.raises(ZfsreplError, match="does not exist"):
        failover.lockout(svc, tmp_path / "missing")
