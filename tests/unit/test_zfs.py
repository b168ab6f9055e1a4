"""zfs.py: the capability probe, kept for the life of `zfsrepl run`."""

from __future__ import annotations

import json

import pytest

from zfsrepl import agent, zfs, zfserrors
from zfsrepl import cycle as cycle_mod
from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.errors import ZfsreplError
from zfsrepl.host import Result
from zfsrepl.zfs import CapabilityCache, Zfs

from .test_capabilities import OPENZFS


class ScriptedHost:
    """Answers `zfs` (the probe) with OpenZFS's usage; fails everything else."""

    def __init__(self, label: str, port: int | None = None, *,
                 empty_listing: bool = False) -> None:
        self.label = label
        self.endpoint = Endpoint("h", "u", port=port)
        self.probes = 0
        self.others = 0
        self.empty_listing = empty_listing  # a listing answers: no such dataset

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        if argv[-1] == "zfs" or argv == ["sudo", "-n", "zfs"]:
            self.probes += 1
            return Result(argv, 2, "", OPENZFS)
        if self.empty_listing and "get" in argv:
            return Result(argv, 0, "", "")
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
    # The source's filesystem is missing, the destination's listing fails: each of the 3
    # attempts probes each side again (a host's ZFS may have changed: an upgrade, a
    # failover to another machine).
    cache = CapabilityCache()
    src, dst = ScriptedHost("src@a", empty_listing=True), ScriptedHost("dst@b")
    svc = Service(name="t", source=Endpoint("a", "src"), destination=Endpoint("b", "dst"),
                  filesystems=(FilesystemPair("tank/a", "backup/a"),), retries=3,
                  retry_delay=0.0)
    with pytest.raises(ZfsreplError):
        cycle_mod.replicate(svc, src, dst, sleep=lambda s: None, capabilities=cache)
    assert (src.probes, dst.probes) == (3, 3)
    assert len(cache) == 0


# ---------------------------------------------------------------------------- batched forms


class RecordingHost:
    """Records each zfs call and answers with what `answer` says (default: success)."""

    label = "u@h"

    def __init__(self, answer: tuple[int, str] = (0, "")) -> None:
        self.argvs: list[list[str]] = []
        self.answer = answer

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        self.argvs.append(list(argv))
        return Result(argv, self.answer[0], "", self.answer[1])

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def close(self) -> None:
        pass


SNAPS = [f"tank/fs{n}@zfsrepl-src-dst-h-7" for n in range(5)]


def test_one_call_snapshots_every_filesystem() -> None:
    host = RecordingHost()
    Zfs(host, ["zfs"]).snapshot_all([f"tank/fs{n}" for n in range(5)], "zfsrepl-src-dst-h-7")
    assert host.argvs == [["zfs", "snapshot", *SNAPS]]


@pytest.mark.parametrize("sub", ["hold", "release"])
def test_one_call_holds_or_releases_every_snapshot(sub: str) -> None:
    host = RecordingHost()
    getattr(Zfs(host, ["sudo", "-n", "zfs"]), sub)("zfsrepl-t", SNAPS)
    assert host.argvs == [["sudo", "-n", "zfs", sub, "zfsrepl-t", *SNAPS]]


@pytest.mark.parametrize("sub, harmless", [
    ("hold", "cannot hold snapshot '{}': tag already exists on this dataset"),
    ("release", "cannot release hold from snapshot '{}': no such tag on this dataset"),
])
def test_an_existing_hold_or_a_missing_one_is_fine_for_every_snapshot(
        sub: str, harmless: str) -> None:
    # zfs goes on after each snapshot and fails at the end, one line per snapshot
    lines = "\n".join(harmless.format(s) for s in SNAPS[:2]) + "\n"
    getattr(Zfs(RecordingHost((1, lines)), ["zfs"]), sub)("zfsrepl-t", SNAPS)


@pytest.mark.parametrize("sub, harmless", [
    ("hold", "cannot hold snapshot '{}': tag already exists on this dataset"),
    ("release", "cannot release hold from snapshot '{}': no such tag on this dataset"),
])
def test_one_real_failure_among_harmless_ones_fails_the_call(sub: str, harmless: str) -> None:
    lines = (harmless.format(SNAPS[0]) + "\n"
             f"cannot open '{SNAPS[1]}': dataset does not exist\n")
    with pytest.raises(ZfsreplError, match="u@h: "):
        getattr(Zfs(RecordingHost((1, lines)), ["zfs"]), sub)("zfsrepl-t", SNAPS)
    with pytest.raises(ZfsreplError, match="zfs failed"):
        getattr(Zfs(RecordingHost((1, "")), ["zfs"]), sub)("zfsrepl-t", SNAPS)


def test_a_very_long_list_is_split_under_the_agents_limit() -> None:
    host = RecordingHost()
    many = [f"pool/{'x' * 200}/fs{n}@zfsrepl-src-dst-h-7" for n in range(400)]
    Zfs(host, ["zfs"]).hold("zfsrepl-t", many)
    assert len(host.argvs) > 1
    assert [a for argv in host.argvs for a in argv[3:]] == many  # each once, in order
    for argv in host.argvs:
        assert argv[:3] == ["zfs", "hold", "zfsrepl-t"]
        assert len(" ".join(argv).encode()) < zfs._MAX_BATCH_BYTES < agent.MAX_COMMAND_BYTES


# ---------------------------------------------------------------------------- many destroys


class AgentHost:
    """A host behind a zfsrepl agent: its `hello` names `requests`; a `destroy` of several
    snapshots answers with one report a line from `reports` ({name: (rc, stderr)}; a
    name left out was not reached), then `end` (returncode, stderr); a single destroy
    succeeds."""

    label = "u@h"

    def __init__(self, requests: list[str], reports: dict[str, tuple[int, str]] | None = None,
                 end: tuple[int, str] = (0, "")) -> None:
        self.argvs: list[list[str]] = []
        self.timeouts: list[float | None] = []
        self.command_timeout: float | None = None
        self.requests = requests
        self.reports = reports
        self.end = end

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        self.argvs.append(list(argv))
        self.timeouts.append(timeout)
        if argv == ["hello"]:
            return Result(argv, 0, json.dumps({"agent": "zfsrepl", "version": "0",
                                               "requests": self.requests}), "")
        names = argv[2:]
        if len(names) == 1:
            return Result(argv, 0, "", "")
        reports = {n: (0, "") for n in names} if self.reports is None else self.reports
        out = "".join(json.dumps({"name": n, "returncode": rc, "stderr": err}) + "\n"
                      for n in names if n in reports for rc, err in [reports[n]])
        return Result(argv, self.end[0], out, self.end[1])

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def close(self) -> None:
        pass


def journaled(host: AgentHost) -> Zfs:
    z = Zfs(host, ["zfs"])
    z.journal = []
    return z


def test_many_destroys_are_one_request_where_the_agent_takes_it() -> None:
    host = AgentHost(["destroy-many"])
    z = journaled(host)
    assert z.destroy_snapshots(SNAPS) == [None] * len(SNAPS)
    assert host.argvs == [["hello"], ["zfs", "destroy", *SNAPS]]
    assert z.journal == [("destroy", s) for s in SNAPS]
    # asked once: the next request goes straight on, two snapshots too
    assert z.destroy_snapshots(SNAPS[:2]) == [None, None]
    assert host.argvs[2:] == [["zfs", "destroy", *SNAPS[:2]]]


@pytest.mark.parametrize("requests", [[], ["something-else"]])
def test_an_agent_from_before_it_gets_a_destroy_each(requests: list[str]) -> None:
    host = AgentHost(requests)
    assert Zfs(host, ["zfs"]).destroy_snapshots(SNAPS) == [None] * len(SNAPS)
    assert host.argvs == [["hello"], *(["zfs", "destroy", s] for s in SNAPS)]


def test_one_is_a_destroy_of_its_own_without_asking() -> None:
    host = AgentHost(["destroy-many"])
    assert Zfs(host, ["zfs"]).destroy_snapshots(SNAPS[:1]) == [None]
    assert host.argvs == [["zfs", "destroy", SNAPS[0]]]


def test_each_destroy_has_its_own_outcome() -> None:
    reports = {s: (0, "") for s in SNAPS}
    reports[SNAPS[1]] = (1, f"cannot destroy snapshot {SNAPS[1]}: dataset is busy\n")
    reports[SNAPS[3]] = (1, f"cannot destroy '{SNAPS[3]}': snapshot has dependent clones\n")
    host = AgentHost(["destroy-many"], reports, end=(1, ""))
    z = journaled(host)
    outcomes = z.destroy_snapshots(SNAPS)
    # the busy one was tried again alone, and went
    assert [o is None for o in outcomes] == [True, True, True, False, True]
    assert isinstance(outcomes[3], zfserrors.HasClones)
    assert "u@h: cannot destroy" in str(outcomes[3])
    assert host.argvs[2:] == [["zfs", "destroy", SNAPS[1]]]
    assert sorted(z.journal or []) == sorted(("destroy", s) for s in SNAPS if s != SNAPS[3])


def test_a_request_cut_short_leaves_the_rest_unknown() -> None:
    reports = {s: (0, "") for s in SNAPS[:2]}
    host = AgentHost(["destroy-many"], reports, end=(255, "Connection reset by peer\n"))
    z = journaled(host)
    outcomes = z.destroy_snapshots(SNAPS)
    assert outcomes[:2] == [None, None]
    assert all(isinstance(o, ZfsreplError) and "Connection reset" in str(o)
               for o in outcomes[2:])
    # what may or may not be gone: its listing is not trusted (the listing cache)
    assert z.journal == [("destroy", SNAPS[0]), ("destroy", SNAPS[1]),
                         *(("other", s) for s in SNAPS[2:])]


def test_a_refused_request_asks_each_alone() -> None:
    # e.g. one filesystem taken over: the others' retention goes on
    host = AgentHost(["destroy-many"], {}, end=(agent.EXIT_REFUSED,
                                                "zfsrepl agent: refused: taken over\n"))
    z = journaled(host)
    assert z.destroy_snapshots(SNAPS) == [None] * len(SNAPS)
    assert host.argvs[2:] == [["zfs", "destroy", s] for s in SNAPS]
    assert z.journal == [("destroy", s) for s in SNAPS]


def test_a_request_that_fails_without_an_answer_fails_each() -> None:
    host = AgentHost(["destroy-many"], {}, end=(255, "Connection reset by peer\n"))
    z = journaled(host)
    outcomes = z.destroy_snapshots(SNAPS)
    assert all(isinstance(o, ZfsreplError) and "Connection reset" in str(o) for o in outcomes)
    assert len(host.argvs) == 2  # not asked again: the next cycle will
    assert z.journal == [("other", s) for s in SNAPS]


def test_a_request_of_many_may_take_what_each_may() -> None:
    host = AgentHost(["destroy-many"])
    host.command_timeout = 60.0  # the cycle's bound on one command
    Zfs(host, ["zfs"]).destroy_snapshots(SNAPS)
    assert host.timeouts[-1] == 60.0 * len(SNAPS)
