"""The stall watchdog of a transfer: a pipeline where nothing moves, or whose process
does not exit after its stream ended, is cut (every process ended) with a WARNING, and
the transfer fails; a slow stream that still moves is left alone."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from zfsrepl import transfer
from zfsrepl.transfer import Cancel, TransferFailed, Watchdog, pipe

WATCHDOG = Watchdog(1.0, sender="zfs send on src@a", receiver="zfs receive on dst@b")
WHAT = "full @s1 of tank/a to dst@b:backup/a"


@pytest.fixture(autouse=True)
def _log_reaches_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    # `zfsrepl.log.setup()`, which other tests run, stops the logger's propagation
    monkeypatch.setattr(logging.getLogger("zfsrepl"), "propagate", True)


class Recording(Cancel):
    """A Cancel that keeps every process the pipeline started (never cancelled)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[subprocess.Popen[bytes]] = []

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        self.started.append(proc)
        super().track(proc)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def all_ended(rec: Recording) -> bool:
    return bool(rec.started) and all(p.returncode is not None and not alive(p.pid)
                                     for p in rec.started)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture(params=["splice", "copy"])
def mover(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of moving the stream: splice, and the copy where splice is missing."""
    if request.param == "copy":
        monkeypatch.delattr(os, "splice", raising=False)
    elif not hasattr(os, "splice"):
        pytest.skip("no os.splice here")
    return str(request.param)


def test_a_sender_that_stops_sending_is_cut(mover: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    rec = Recording()
    sender = ["sh", "-c", "printf 'some bytes'; exec sleep 60"]
    with caplog.at_level(logging.WARNING, "zfsrepl"), pytest.raises(TransferFailed) as exc:
        pipe(sender, ["cat"], WHAT, cancel=rec, watchdog=WATCHDOG)
    assert str(exc.value) == f"{WHAT} failed: no data moved for 1 s"
    assert exc.value.sent == len("some bytes")
    assert warnings(caplog) == [f"no data moved for 1 s sending {WHAT}: cut the transfer"]
    assert all_ended(rec)


def test_a_receiver_that_stops_reading_is_cut(mover: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    rec = Recording()
    # far more than the pipes hold; the receiver reads a little, then nothing
    sender = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * (64 << 20))"]
    receiver = ["sh", "-c", "head -c 1000 >/dev/null; exec sleep 60"]
    with caplog.at_level(logging.WARNING, "zfsrepl"), pytest.raises(TransferFailed) as exc:
        pipe(sender, receiver, WHAT, cancel=rec, watchdog=WATCHDOG)
    assert str(exc.value) == f"{WHAT} failed: no data moved for 1 s"
    assert warnings(caplog) == [f"no data moved for 1 s sending {WHAT}: cut the transfer"]
    assert all_ended(rec)


def test_a_stopped_receiver_is_cut_and_killed(caplog: pytest.LogCaptureFixture) -> None:
    # SIGSTOPped, it does not die of SIGTERM: it is killed after the grace
    rec = Recording()
    sender = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * (64 << 20))"]
    receiver = [sys.executable, "-c", "import os, signal, sys; sys.stdin.buffer.read(1000); "
                "os.kill(os.getpid(), signal.SIGSTOP)"]
    with caplog.at_level(logging.WARNING, "zfsrepl"), pytest.raises(TransferFailed) as exc:
        pipe(sender, receiver, WHAT, cancel=rec, watchdog=WATCHDOG)
    assert str(exc.value) == f"{WHAT} failed: no data moved for 1 s"
    assert all_ended(rec)
    assert rec.started[-1].returncode == -signal.SIGKILL


def test_a_slow_stream_that_moves_is_not_cut(mover: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    # a byte every 0.1 s for 3 s: far longer than the timeout, never idle that long
    sender = ["sh", "-c", "i=0; while [ $i -lt 30 ]; do printf x; sleep 0.1; i=$((i+1)); done"]
    receiver = [sys.executable, "-c", "import sys; assert sys.stdin.buffer.read() == b'x' * 30"]
    with caplog.at_level(logging.WARNING, "zfsrepl"):
        result = pipe(sender, receiver, WHAT, watchdog=Watchdog(1.0))
    assert result.bytes == 30
    assert warnings(caplog) == []


def test_pacing_for_the_limit_is_not_a_stall(caplog: pytest.LogCaptureFixture) -> None:
    # 64 KiB chunks at 32 KiB/s: the loop pauses ~2 s after each, longer than the timeout
    size = 160 << 10
    sender = [sys.executable, "-c", f"import sys; sys.stdout.buffer.write(b'x' * {size})"]
    receiver = [sys.executable, "-c", f"import sys; assert len(sys.stdin.buffer.read()) == {size}"]
    relay = [sys.executable, "-c", "import sys\nwhile True:\n"
             " b = sys.stdin.buffer.read(4096)\n if not b: break\n"
             " sys.stdout.buffer.write(b); sys.stdout.buffer.flush()"]
    with caplog.at_level(logging.WARNING, "zfsrepl"):
        result = pipe(sender, receiver, WHAT, limit=32 << 10, compressor=relay,
                      watchdog=Watchdog(1.0))
    assert result.bytes == size
    assert warnings(caplog) == []


def test_a_receiver_that_does_not_exit_after_the_stream_is_cut(
        mover: str, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recording()
    receiver = ["sh", "-c", "cat >/dev/null; exec sleep 60"]
    with caplog.at_level(logging.WARNING, "zfsrepl"), pytest.raises(TransferFailed) as exc:
        pipe(["printf", "the stream"], receiver, WHAT, cancel=rec, watchdog=WATCHDOG)
    late = "zfs receive on dst@b did not exit 1 s after its stream ended"
    assert str(exc.value) == f"{WHAT} failed: {late}"
    assert warnings(caplog) == [f"{late} ({WHAT}): cut the transfer"]
    assert all_ended(rec)


def test_a_sender_that_does_not_exit_after_its_stream_is_cut(
        caplog: pytest.LogCaptureFixture) -> None:
    rec = Recording()
    # closes its output, and lingers
    sender = ["sh", "-c", "printf 'the stream'; exec 1>&-; exec sleep 60"]
    with caplog.at_level(logging.WARNING, "zfsrepl"), pytest.raises(TransferFailed) as exc:
        pipe(sender, ["cat"], WHAT, cancel=rec, watchdog=WATCHDOG)
    assert str(exc.value) == \
        f"{WHAT} failed: zfs send on src@a did not exit 1 s after its stream ended"
    assert all_ended(rec)


def test_a_stall_behind_the_compressor_cuts_every_process(
        mover: str, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recording()
    sender = ["sh", "-c", "printf 'some bytes'; exec sleep 60"]
    with caplog.at_level(logging.WARNING, "zfsrepl"), pytest.raises(TransferFailed) as exc:
        pipe(sender, ["cat"], WHAT, compressor=["cat"], cancel=rec, watchdog=WATCHDOG)
    assert str(exc.value) == f"{WHAT} failed: no data moved for 1 s"
    # two loops saw the same stall: one warning
    assert warnings(caplog) == [f"no data moved for 1 s sending {WHAT}: cut the transfer"]
    assert len(rec.started) == 3 and all_ended(rec)


def test_without_a_watchdog_a_slow_start_is_waited_for(tmp_path: Path) -> None:
    sender = ["sh", "-c", "sleep 1.5; printf late"]
    result = pipe(sender, ["cat"], WHAT)
    assert result.bytes == 4


def test_activity_counts_pacing_as_busy() -> None:
    now = [100.0]
    act = transfer._Activity(5.0, clock=lambda: now[0])
    now[0] = 103.0
    assert act.left() == 2.0
    act.moved(until=110.0)  # pacing until then
    assert act.left() == 12.0
    act.moved()  # bytes now: never moves the mark back
    assert act.left() == 12.0
