"""Locks that name their holder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from zfsrepl.errors import UsageError
from zfsrepl.lock import Busy, FileLock, Holder, probe


def test_probe_sees_the_holder_and_release_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "cycle.lock"
    assert probe(path) is None  # no file yet
    lk = FileLock(path, "runonce")
    assert lk.try_acquire()
    holder = probe(path)
    assert holder is not None and holder.pid == os.getpid() and holder.role == "runonce"
    assert holder.describe() == f"process {os.getpid()} (runonce)"
    lk.release()
    assert probe(path) is None
    assert path.read_text() == ""  # a free lock names nobody


def test_second_locker_is_refused_with_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "l"
    with FileLock(path, "run") as first:
        assert first.try_acquire()
        second = FileLock(path, "runonce")
        assert not second.try_acquire()
        with pytest.raises(Busy) as err:
            second.acquire(wait=False, grace=0, what="service web")
        assert err.value.holder.pid == os.getpid()
        assert str(err.value) == f"service web is held by process {os.getpid()} (run)"
    assert FileLock(path, "x").try_acquire()


def test_a_waiting_locker_is_told_once_and_gets_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "l"
    first = FileLock(path, "run")
    assert first.try_acquire()
    told: list[Holder] = []
    timer = threading.Timer(0.3, first.release)
    timer.start()
    second = FileLock(path, "runonce")
    second.acquire(wait=True, grace=0, poll=0.02, on_wait=told.append)
    timer.join()
    assert second.held and len(told) == 1 and told[0].role == "run"
    second.release()


def test_a_holder_not_yet_written_is_another_process() -> None:
    assert Holder(None).describe() == "another process"


def test_a_lock_that_cannot_be_opened_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "cycle.lock"  # a file where a folder should be
    assert probe(path) is None
    with pytest.raises(UsageError, match=r"cannot open the lock .*--state-dir"):
        FileLock(path, "run").try_acquire()
