"""The files zfsrepl writes in its state and log folders are never reached through a link
that someone else planted: root must not truncate or append to a file a user points at.

Each attack plants a link to a stand-in for a file only root may change (a copy in a
folder of the test's own, never a real system file) and checks that it is refused and
that the stand-in is unchanged.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from zfsrepl import fileio, logfile
from zfsrepl.errors import UsageError
from zfsrepl.lock import FileLock
from zfsrepl.log import logger
from zfsrepl.metrics import write_textfile
from zfsrepl.state import ServicePaths, StateStore, scheduled

SECRET = b"root:$6$not-a-real-hash:19000:0:99999:7:::\n"
NOBODY = 65534

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the attack is on root")


def _target(tmp_path: Path) -> Path:
    """A root-only file standing in for /etc/shadow."""
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    target = vault / "shadow"
    target.write_bytes(SECRET)
    target.chmod(0o600)
    return target


def _service(tmp_path: Path, owner: int | None = None) -> ServicePaths:
    paths = ServicePaths(tmp_path / "state", "web")
    paths.folder.mkdir(parents=True, mode=0o750)
    paths.folder.chmod(0o750)
    if owner is not None:
        os.chown(paths.folder, owner, owner)
    return paths


def _refusal(action: Callable[[], object]) -> str | None:
    """The message `action` is refused with, or None if it ran."""
    try:
        action()
    except UsageError as exc:
        return str(exc)
    return None


def _take_lock(path: Path) -> Callable[[], object]:
    return lambda: FileLock(path, "run").try_acquire()


ATTACKS: dict[str, Callable[[ServicePaths], tuple[Path, Callable[[], object]]]] = {
    "run.lock": lambda p: (p.daemon_lock, _take_lock(p.daemon_lock)),
    "cycle.lock": lambda p: (p.cycle_lock, _take_lock(p.cycle_lock)),
    "state.lock": lambda p: (p.state_lock,
                             lambda: StateStore(p).update(lambda s: scheduled(s, 1.0))),
}


@as_root
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_root_refuses_a_folder_another_user_owns(tmp_path: Path, name: str) -> None:
    target = _target(tmp_path)
    paths = _service(tmp_path, owner=NOBODY)
    path, action = ATTACKS[name](paths)
    path.symlink_to(target)  # what the user "nobody" could do in its own folder
    refused = _refusal(action)
    assert target.read_bytes() == SECRET
    assert refused is not None and re.search(r"owned by nobody, not by root: run zfsrepl "
                                             r"as nobody", refused)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_link_in_ones_own_folder_is_not_followed(tmp_path: Path, name: str) -> None:
    target = _target(tmp_path)
    paths = _service(tmp_path)
    path, action = ATTACKS[name](paths)
    path.symlink_to(target)
    refused = _refusal(action)
    assert target.read_bytes() == SECRET
    assert refused is not None and "symbolic link" in refused


@as_root
def test_root_refuses_a_hard_link_to_a_file_of_its_own(tmp_path: Path) -> None:
    target = _target(tmp_path)
    paths = _service(tmp_path)
    os.link(target, paths.daemon_lock)
    refused = _refusal(_take_lock(paths.daemon_lock))
    assert target.read_bytes() == SECRET
    assert refused is not None and "hard link" in refused


def test_a_folder_others_may_write_is_refused(tmp_path: Path) -> None:
    paths = _service(tmp_path)
    paths.folder.chmod(0o770)
    with pytest.raises(UsageError, match="writable by others"):
        paths.create()
    with pytest.raises(UsageError, match="writable by others"):
        FileLock(paths.cycle_lock, "run").try_acquire()


def test_a_sticky_shared_folder_is_fine_for_ones_own_files(tmp_path: Path) -> None:
    paths = _service(tmp_path)
    paths.folder.chmod(0o1777)
    with FileLock(paths.cycle_lock, "run") as lk:
        assert lk.try_acquire()


def test_the_state_file_replaces_a_link_and_never_writes_through_it(tmp_path: Path) -> None:
    target = _target(tmp_path)
    paths = _service(tmp_path)
    paths.state_file.symlink_to(target)
    StateStore(paths).update(lambda s: scheduled(s, 1.0))
    assert target.read_bytes() == SECRET
    assert not paths.state_file.is_symlink() and "next_run" in paths.state_file.read_text()


def test_a_fifo_for_a_state_file_is_not_waited_on(tmp_path: Path) -> None:
    paths = _service(tmp_path)
    os.mkfifo(paths.state_file)
    assert StateStore(paths).load().next_run is None  # a warning, no hang


@as_root
def test_root_writes_no_metrics_into_another_users_folder(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir(mode=0o755)
    os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(OSError, match=r"owned by .*not by root"):
        write_textfile(folder / "web.prom", "x 1\n")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("as_root_over_nobody", [False, True])
def test_the_log_file_is_not_reached_through_a_link(tmp_path: Path,
                                                     as_root_over_nobody: bool) -> None:
    if as_root_over_nobody and os.geteuid() != 0:
        pytest.skip("needs root")
    target = _target(tmp_path)
    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o755)
    if as_root_over_nobody:
        os.chown(log_dir, NOBODY, NOBODY)
    logfile.log_path(log_dir, "web").symlink_to(target)
    handler = logfile.attach(log_dir, "web", warn=True)
    try:
        assert handler is None
        logger.log(logging.WARNING, "a line that must not reach the target")
    finally:
        logfile.detach(handler)
    assert target.read_bytes() == SECRET


def test_the_log_file_is_written_and_reopened_after_rotation(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    handler = logfile.attach(log_dir, "web")
    assert handler is not None
    try:
        logger.warning("first")
        path = logfile.log_path(log_dir, "web")
        path.rename(log_dir / "web.log.1")
        logger.warning("second")
    finally:
        logfile.detach(handler)
    assert "second" in path.read_text() and "first" in (log_dir / "web.log.1").read_text()


def test_folder_and_file_problems_are_pure_decisions(tmp_path: Path) -> None:
    folder = os.stat(tmp_path)
    mine = folder.st_uid
    assert fileio.folder_problem(folder, mine) is None
    assert fileio.folder_problem(folder, 0) is None  # root trusts root and itself
    other = mine + 1 if mine else NOBODY
    if mine:
        assert "owned by" in (fileio.folder_problem(folder, other) or "")
    file = tmp_path / "f"
    file.write_text("")
    assert fileio.file_problem(os.stat(file), mine) is None
    assert "not a regular file" in (fileio.file_problem(folder, mine) or "")
    os.link(file, tmp_path / "g")
    assert "hard link" in (fileio.file_problem(os.stat(file), mine) or "")


def test_a_log_file_replaced_by_a_link_is_left_alone_with_one_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = _target(tmp_path)
    log_dir = tmp_path / "log"
    handler = logfile.attach(log_dir, "web")
    assert handler is not None
    try:
        path = logfile.log_path(log_dir, "web")
        path.rename(log_dir / "web.log.1")
        path.symlink_to(target)
        for _ in range(3):
            logger.warning("a line that must not reach the target")
    finally:
        logfile.detach(handler)
    assert target.read_bytes() == SECRET
    err = capsys.readouterr().err
    assert err.count("no longer writing the log file") == 1 and "Traceback" not in err, err
