"""zfs.py: the capability probe, kept for the life of `zfsrepl run`."""

from __future__ import annotations

import pytest

from zfsrepl import cycle as cycle_mod
from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.errors import ZfsreplError
from zfsrepl.host import Result
from zfsrepl.zfs import CapabilityCache, Zfs

from .test_capabilities import OPENZFS


class ScriptedHost:
    """Answers `zfs` (the probe) with OpenZFS's usage; fails everything else."""

    def __init__(self, label: str, port: int | None = None) -> None:
        self.label = label
        self.endpoint = Endpoint("h", "u", port=port)
        self.probes = 0
        self.others = 0

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        if argv[-1] == "zfs" or argv == ["sudo", "-n", "zfs"]:
            self.probes += 1
            return Result(argv, 2, "", OPENZFS)
        self.others += 1
        return Result(argv, 1, "", "internal error: out of luck")

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def close(self) -> None:
        pass


def test_without_a_cache_each_zfs_object_probes_once() -> None:
    host = ScriptedHost("u@h")
    a, b = Zfs(host, ["zfs"]), Zfs(host, ["zfs"])
    assert a.capabilities() == a.capabilities() == b.capabilities()
    assert a.capabilities().multi_snapshot
    assert host.probes == 2


def test_a_shared_cache_probes_a_host_once_for_its_whole_life() -> None:
    cache = CapabilityCache()
    host = ScriptedHost("u@h")
    for _ in range(5):  # five cycles, each with its own Zfs
        assert Zfs(host, ["zfs"], cache).capabilities().resume
    assert host.probes == 1 and len(cache) == 1


@pytest.mark.parametrize("other", [
    (ScriptedHost("u@h2"), ["zfs"]),        # another host
    (ScriptedHost("v@h"), ["zfs"]),         # another user
    (ScriptedHost("u@h", port=2222), ["zfs"]),  # another sshd
    (ScriptedHost("u@h"), ["sudo", "-n", "zfs"]),  # another zfs command
])
def test_the_cache_is_keyed_by_host_user_and_zfs_command(
        other: tuple[ScriptedHost, list[str]]) -> None:
    cache = CapabilityCache()
    first = ScriptedHost("u@h")
    Zfs(first, ["zfs"], cache).capabilities()
    host, argv = other
    Zfs(host, argv, cache).capabilities()
    assert (first.probes, host.probes, len(cache)) == (1, 1, 2)


def test_a_failed_attempt_has_the_next_one_probe_again() -> None:
    # Every listing fails: each of the 3 attempts probes each side again (a host's ZFS
    # may have changed: an upgrade, a failover to another machine).
    cache = CapabilityCache()
    src, dst = ScriptedHost("src@a"), ScriptedHost("dst@b")
    svc = Service(name="t", source=Endpoint("a", "src"), destination=Endpoint("b", "dst"),
                  filesystems=(FilesystemPair("tank/a", "backup/a"),), retries=3,
                  retry_delay=0.0)
    with pytest.raises(ZfsreplError):
        cycle_mod.replicate(svc, src, dst, sleep=lambda s: None, capabilities=cache)
    assert (src.probes, dst.probes) == (3, 3)
    assert len(cache) == 0
