"""Failover helpers without ZFS: the reversed service, --mountpoint, lockout, and which
of failover and lockoutkey sets the interlock (a ZFS of the destination in memory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zfsrepl import diagnosis, failover, zfserrors
from zfsrepl.config import parse_service
from zfsrepl.errors import CommandError, ConfigError, UsageError, ZfsreplError
from zfsrepl.setup import authorized_keys
from zfsrepl.snapshots import Snapshot
from zfsrepl.zfs import ROLE_PROPERTY, Zfs


def definition(**extra: object) -> dict[str, object]:
    return {"name": "svc", "keep_source": 2, "keep_destination": 5,
            "pre_snapshot": "/bin/true",
            "source": {"host": "srchost", "user": "src"},
            "destination": {"host": "dsthost", "user": "dst",
                            "zfs_command": "sudo -n /usr/sbin/zfs"},
            "filesystem": [{"source": "p/src/a", "destination": "p/dst/a",
                            "mountpoint": "/srv/a"},
                           {"source": "p/src/b", "destination": "p/dst/b"}],
            **extra}


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


class FakeZfs(Zfs):
    """The destination's filesystems in memory: their properties, what was set."""

    def __init__(self, filesystems: dict[str, dict[str, str]]) -> None:
        self.fs = filesystems
        self.sets: list[tuple[str, str, str]] = []

    @property
    def label(self) -> str:
        return "dst@dsthost"

    def listing(self, filesystems: list[str]) -> tuple[dict[str, list[Snapshot] | None],
                                                       dict[str, str]]:
        lists: dict[str, list[Snapshot] | None] = {
            fs: ([] if fs in self.fs else None) for fs in filesystems}
        roles = {fs: self.fs[fs][ROLE_PROPERTY] for fs in filesystems
                 if ROLE_PROPERTY in self.fs.get(fs, {})}
        return lists, roles

    def set_property(self, filesystem: str, prop: str, value: str) -> None:
        self.sets.append((filesystem, prop, value))
        self.fs[filesystem][prop] = value

    def get_properties(self, filesystem: str, props: list[str]) -> dict[str, str]:
        return {p: self.fs[filesystem].get(p, "-") for p in props}

    def mount(self, filesystem: str) -> None:
        self.fs[filesystem]["mounted"] = "yes"

    def unmount(self, filesystem: str) -> None:
        self.fs[filesystem]["mounted"] = "no"

    def roles(self) -> dict[str, str | None]:
        return {fs: props.get(ROLE_PROPERTY) for fs, props in self.fs.items()}


def replicas(**role: str) -> FakeZfs:
    return FakeZfs({fs: {"mounted": "no", "mountpoint": f"/m/{fs}", "readonly": "on",
                         **({ROLE_PROPERTY: role[fs[-1]]} if fs[-1] in role else {})}
                    for fs in ("p/dst/a", "p/dst/b")})


def test_failover_for_tests_sets_no_interlock() -> None:
    svc = parse_service(definition())
    zfs = replicas()
    result = failover.failover(svc, zfs, {"p/dst/b": "/y"})
    assert not result.interlocked
    assert zfs.roles() == {"p/dst/a": None, "p/dst/b": None}
    assert all(prop != ROLE_PROPERTY for _, prop, _ in zfs.sets)
    assert result.lines == ["p/dst/a: mounted at /srv/a, writable",
                            "p/dst/b: mounted at /y, writable"]
    assert all(props["readonly"] == "off" and props["mounted"] == "yes"
               for props in zfs.fs.values())
    # A failover that was ended before leaves the replica mark alone.
    zfs = replicas(a=diagnosis.ROLE_REPLICA)
    assert not failover.failover(svc, zfs, {}).interlocked
    assert zfs.roles() == {"p/dst/a": diagnosis.ROLE_REPLICA, "p/dst/b": None}


def test_failover_keeps_the_interlock_of_a_disaster_and_takeover_sets_it() -> None:
    svc = parse_service(definition())
    taken = {"p/dst/a": diagnosis.ROLE_TAKEN_OVER, "p/dst/b": diagnosis.ROLE_TAKEN_OVER}
    zfs = replicas(b=diagnosis.ROLE_TAKEN_OVER)  # lockoutkey marked (some of) them
    result = failover.failover(svc, zfs, {})
    assert result.interlocked and zfs.roles() == taken
    assert result.lines[0] == "p/dst/a: mounted at /srv/a, writable, interlocked"
    assert ("p/dst/b", ROLE_PROPERTY, diagnosis.ROLE_TAKEN_OVER) not in zfs.sets  # kept

    zfs = replicas()
    assert failover.failover(svc, zfs, {}, takeover=True).interlocked
    assert zfs.roles() == taken
    # The mark goes on before the filesystem is made writable.
    assert zfs.sets.index(("p/dst/a", ROLE_PROPERTY, diagnosis.ROLE_TAKEN_OVER)) < \
        zfs.sets.index(("p/dst/a", "readonly", "off"))

    zfs = FakeZfs({"p/dst/a": {}})
    with pytest.raises(ZfsreplError, match="p/dst/b does not exist on dst@dsthost"):
        failover.failover(svc, zfs, {}, takeover=True)
    assert zfs.sets == []  # nothing changed


def test_set_interlock_and_end_failover() -> None:
    svc = parse_service(definition())
    zfs = replicas(a=diagnosis.ROLE_TAKEN_OVER)
    lines, missing = failover.set_interlock(svc, zfs)
    assert lines == ["p/dst/a: interlock already set", "p/dst/b: interlock set"]
    assert missing == []
    assert zfs.roles() == {"p/dst/a": diagnosis.ROLE_TAKEN_OVER,
                           "p/dst/b": diagnosis.ROLE_TAKEN_OVER}
    assert failover.end_failover(svc, zfs) == ["p/dst/a: a replica of p/src/a again",
                                               "p/dst/b: a replica of p/src/b again"]
    assert zfs.roles() == {"p/dst/a": diagnosis.ROLE_REPLICA,
                           "p/dst/b": diagnosis.ROLE_REPLICA}

    zfs = FakeZfs({"p/dst/a": {}})
    assert failover.set_interlock(svc, zfs) == (["p/dst/a: interlock set"], ["p/dst/b"])
    assert zfs.roles() == {"p/dst/a": diagnosis.ROLE_TAKEN_OVER}


def test_lockoutkey_removes_the_key_first_then_names_a_missing_filesystem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from zfsrepl.cli import failover as cli
    from zfsrepl.cli.common import Context

    svc = parse_service(definition())
    marker = authorized_keys.service_marker("svc", "src", "srchost")
    path = tmp_path / "authorized_keys"
    path.write_bytes(f"ssh-ed25519 AAAAkey {marker}\n".encode())
    zfs = FakeZfs({"p/dst/a": {}})
    monkeypatch.setattr(cli.config, "load_service", lambda _dir, _name: svc)
    monkeypatch.setattr(cli, "_local_zfs", lambda _svc: zfs)
    args = argparse.Namespace(name="svc", authorized_keys=path)
    ctx = Context(tmp_path, tmp_path, tmp_path)
    with pytest.raises(ZfsreplError, match="p/dst/b does not exist on dst@dsthost: no "
                                           "interlock set there"):
        cli.run_lockoutkey(args, ctx)
    out = capsys.readouterr().out
    assert f"removed the key of service svc ({marker})" in out
    assert "p/dst/a: interlock set" in out
    assert path.read_bytes() == b""
    assert zfs.roles() == {"p/dst/a": diagnosis.ROLE_TAKEN_OVER}

    # Locked out already: the interlock is set all the same, the key's absence reported.
    zfs.fs["p/dst/b"] = {}
    with pytest.raises(ZfsreplError, match="is not there"):
        cli.run_lockoutkey(args, ctx)
    assert "p/dst/b: interlock set" in capsys.readouterr().out
    assert zfs.roles() == {"p/dst/a": diagnosis.ROLE_TAKEN_OVER,
                           "p/dst/b": diagnosis.ROLE_TAKEN_OVER}


class RootMountsOnly(FakeZfs):
    """A ZFS where the user's delegated rights stop at mount(2) (Linux)."""

    def mount(self, filesystem: str) -> None:
        # as Zfs raises it: typed from zfs's text (zfserrors)
        raise zfserrors.failed("dst@dsthost: cannot mount", argv=[], returncode=1, stderr=(
            f"cannot mount '/m/{filesystem}': failed to create mountpoint: Permission denied"))


def test_failover_says_to_run_as_root_where_only_root_mounts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    svc = parse_service(definition())
    zfs = RootMountsOnly(replicas().fs)
    monkeypatch.setattr(failover.os, "geteuid", lambda: 1000)
    with pytest.raises(ZfsreplError) as exc:
        failover.failover(svc, zfs, {})
    text = str(exc.value)
    assert "p/dst/a is writable but could not be mounted" in text
    assert "`zfsrepl failover svc` as root" in text and "zfs mount p/dst/a" in text
    # as root the error is zfs's own: nothing to add
    monkeypatch.setattr(failover.os, "geteuid", lambda: 0)
    with pytest.raises(CommandError):
        failover.failover(svc, RootMountsOnly(replicas().fs), {})
