"""`stall_timeout` in a definition: its bounds, the watchdog a cycle gives each stream,
the bound on every other command of a cycle, and the retry after a stalled stream."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from zfsrepl import config
from zfsrepl import cycle as cycle_mod
from zfsrepl.config import Endpoint
from zfsrepl.errors import CommandError, ConfigError
from zfsrepl.host import LocalHost, SshHost
from zfsrepl.transfer import TransferFailed, TransferResult

from .fakes import SimZfs
from .test_capabilities import FUSE
from .test_wire_compression import SVC


@pytest.fixture(autouse=True)
def _log_reaches_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    # `zfsrepl.log.setup()`, which other tests run, stops the logger's propagation
    monkeypatch.setattr(logging.getLogger("zfsrepl"), "propagate", True)


def definition(**extra: object) -> dict[str, object]:
    return {"name": "s", "source": {"host": "a", "user": "src"},
            "destination": {"host": "b", "user": "dst"},
            "filesystem": [{"source": "tank/a", "destination": "backup/a"}], **extra}


def test_stall_timeout_defaults_to_five_minutes_and_round_trips() -> None:
    assert config.parse_service(definition()).stall_timeout == 300
    assert "stall_timeout" not in config.dump_service(config.parse_service(definition()))
    svc = config.parse_service(definition(stall_timeout=30))
    assert svc.stall_timeout == 30
    assert "stall_timeout = 30" in config.dump_service(svc)


@pytest.mark.parametrize("value", [0, 4, 86401, -5, "300", 30.5, True])
def test_a_bad_stall_timeout_names_file_key_and_bounds(value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse_service(definition(stall_timeout=value), Path("/c/s.toml"))
    assert str(exc.value) == (f"/c/s.toml: stall_timeout: {value!r} is not valid; "
                              "expected an integer from 5 to 86400")


def test_a_host_cuts_a_command_that_outlives_its_bound() -> None:
    host = LocalHost("src@a", command_timeout=0.5)
    with pytest.raises(CommandError) as exc:
        host.run(["sleep", "30"])
    assert str(exc.value) == "src@a: sleep 30 did not finish within 0.5 s: cut it"
    # a timeout the caller names wins
    assert host.run(["sh", "-c", "sleep 1; echo done"], timeout=30).stdout == "done\n"


def test_a_cycle_bounds_every_command_of_its_hosts() -> None:
    for stall, bound in ((10, 60.0), (600, 600.0)):
        svc = dataclasses.replace(SVC, stall_timeout=stall)
        src, dst = LocalHost("src@srchost"), SshHost(Endpoint("desthost", "dst"))
        try:
            cycle_mod.Cycle(svc, src, dst)
            assert (src.command_timeout, dst.command_timeout) == (bound, bound)
        finally:
            dst.close()


def test_a_stalled_stream_fails_the_attempt_and_the_retry_sends_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    svc = dataclasses.replace(SVC, filesystems=SVC.filesystems[:1], stall_timeout=7,
                              retries=2)
    pair = svc.filesystems[0]
    src = SimZfs("src@srchost", FUSE, [pair.source], {"tank/src"})
    dst = SimZfs("dst@desthost", FUSE, [], {"backup/dst"})
    calls: list[dict[str, Any]] = []

    def pipe(sender: list[str], receiver: list[str], what: str, **kw: Any) -> TransferResult:
        calls.append(kw)
        if len(calls) == 1:  # as the watchdog cuts a stalled stream
            raise TransferFailed(f"{what} failed: no data moved for 7 s", argv=sender,
                                 stderr="", returncode=-15, sent=1000)
        target = sender[-1].partition("@")[2]
        snap = next(s for s in src.fs[pair.source] if s.name == target)
        dst.fs.setdefault(pair.destination, []).append(
            dataclasses.replace(snap, txg=dst.next_txg()))
        dst.marks.setdefault(pair.destination, {})
        return TransferResult(0.1, 100)

    monkeypatch.setattr(cycle_mod, "pipe", pipe)
    caplog.set_level(logging.INFO, logger="zfsrepl")
    cycle_mod.replicate(svc, src, dst, sleep=lambda s: None)
    assert len(calls) == 2
    watchdog = calls[0]["watchdog"]
    assert (watchdog.timeout, watchdog.sender, watchdog.receiver) == (
        7, "zfs send on src@srchost", "zfs receive on dst@desthost")
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failed) == 1
    assert failed[0].startswith("attempt 1 of 2 failed: ")
    assert f"of {pair.source} to dst@desthost:{pair.destination} failed: no data moved " \
        "for 7 s; retrying" in failed[0]
    assert [s.name for s in dst.fs[pair.destination]] == [s.name for s in src.fs[pair.source]]
