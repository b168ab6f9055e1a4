"""Log lines: the journal's priority prefixes under systemd, -q, -v and --debug."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from zfsrepl import host, log
from zfsrepl.config import Endpoint, FilesystemPair, Service, dump_service
from zfsrepl.errors import CommandError


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    saved = (list(log.logger.handlers), log.logger.level, log.logger.propagate,
             log.commands_logger.level)
    yield
    log.logger.handlers[:], log.logger.level, log.logger.propagate, \
        log.commands_logger.level = saved


@pytest.mark.parametrize(("level", "prio"), [
    (log.ALARM, 1), (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
    (logging.INFO, 6), (logging.DEBUG, 7)])
def test_priority(level: int, prio: int) -> None:
    assert log.priority(level) == prio


def test_journal_lines_have_a_priority_and_no_time_of_their_own() -> None:
    out = io.StringIO()
    log.setup(out, journal=True)
    log.alarm("could not replicate %s", "web")
    log.logger.warning("first\nsecond")
    log.logger.info("fine")
    assert out.getvalue().splitlines() == [
        "<1>ALARM could not replicate web", "<4>WARNING first", "<4>second", "<6>INFO fine"]


def test_without_the_journal_the_lines_keep_their_format() -> None:
    out = io.StringIO()
    log.setup(out, journal=False)
    log.logger.info("fine")
    date, clock, level, text = out.getvalue().split(" ", 3)
    assert len(date) == 10 and len(clock) == 8 and (level, text) == ("INFO", "fine\n")


def test_journal_stream_must_name_the_very_stream(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as f, open(tmp_path / "other", "w") as g:
        st = os.fstat(f.fileno())
        value = f"{st.st_dev}:{st.st_ino}"
        assert log.to_journal({"JOURNAL_STREAM": value}, f.fileno())
        assert not log.to_journal({"JOURNAL_STREAM": value}, g.fileno())  # redirected
        assert not log.to_journal({}, f.fileno())
        assert not log.to_journal({"JOURNAL_STREAM": "garbage"}, f.fileno())


def test_levels() -> None:
    assert log.level_for() == logging.INFO
    assert log.level_for(quiet=True) == logging.WARNING
    assert log.level_for(verbose=True) == logging.DEBUG
    assert log.level_for(debug=True, quiet=True) == logging.DEBUG


def test_commands_are_logged_with_debug_only() -> None:
    out = io.StringIO()
    log.setup(out, logging.DEBUG, journal=True)  # -v
    host.LocalHost("src@srchost").run(["true", "a b"])
    assert out.getvalue() == ""
    log.setup(out, logging.DEBUG, commands=True, journal=True)  # --debug
    host.LocalHost("src@srchost").run(["true", "a b"])
    assert out.getvalue() == "<7>DEBUG src@srchost: running true 'a b'\n"


def test_a_missing_zfs_says_to_set_zfs_command_or_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(CommandError) as exc:
        host.LocalHost("src@srchost").run(["zfs-not-here/zfs", "list"])
    assert "command not found: zfs-not-here/zfs" in str(exc.value)
    assert 'zfs_command = "/usr/sbin/zfs"' in str(exc.value) and "PATH" in str(exc.value)
    monkeypatch.setattr(host.os.path, "basename", lambda p: "zfs")
    with pytest.raises(CommandError) as exc:
        host.LocalHost("src@srchost").run(["zfs-missing-in-path", "list"])
    assert "looked in PATH=/usr/bin:/bin" in str(exc.value)


# ---------------------------------------------------------------------------- commands


def zfsrepl(tmp_path: Path, *args: str, journal: bool) -> str:
    """Run zfsrepl with its standard error in a file (the journal's stream, if `journal`);
    what it wrote there."""
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "PYTHONPATH": str(Path(log.__file__).parents[1])}
        env.pop("JOURNAL_STREAM", None)
        if journal:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-m", "zfsrepl", "--config-dir", str(tmp_path),
                        "--state-dir", str(tmp_path / "state"), "--log-dir",
                        str(tmp_path / "log"), *args], stdout=subprocess.DEVNULL, stderr=f,
                       env=env, check=False)
    return err.read_text()


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    (tmp_path / "services").mkdir()
    svc = Service("web", Endpoint("srchost", "src", zfs_command="/nonexistent/zfs"),
                  Endpoint("127.0.0.1", "dst", port=1),  # refused at once
                  (FilesystemPair("tank/web", "backup/web"),))
    (tmp_path / "services" / "web.toml").write_text(dump_service(svc))
    state_file = tmp_path / "state" / "services" / "web" / "state.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(json.dumps({"maintenance_since": 1.0, "maintenance_reason": "x"}))
    return tmp_path


def test_under_the_journal_a_command_logs_with_priorities(confdir: Path) -> None:
    assert zfsrepl(confdir, "clear", "web", journal=True) == \
        "<6>INFO maintenance of web cleared (it was: x)\n"
    # the log file keeps its own time stamps
    assert " INFO maintenance of web cleared" in (confdir / "log" / "web.log").read_text()


def test_quiet_leaves_out_the_info_lines(confdir: Path) -> None:
    assert zfsrepl(confdir, "clear", "web", "-q", journal=False) == ""


def test_debug_shows_each_command_run(confdir: Path) -> None:
    err = zfsrepl(confdir, "--debug", "status", "web", journal=True)
    assert "<7>DEBUG src@srchost: running /nonexistent/zfs " in err
    assert "running" not in zfsrepl(confdir, "-v", "status", "web", journal=True)


def test_the_log_file_is_opened_again_after_logrotate_moved_it(tmp_path: Path) -> None:
    """Why the logrotate snippet needs neither copytruncate nor a signal."""
    from zfsrepl import logfile

    log.setup(io.StringIO(), journal=False)
    handler = logfile.attach(tmp_path, "web")
    try:
        log.logger.info("before")
        (tmp_path / "web.log").rename(tmp_path / "web.log.1")
        (tmp_path / "web.log").touch()  # logrotate's `create`
        log.logger.info("after")
    finally:
        logfile.detach(handler)
    assert "before" in (tmp_path / "web.log.1").read_text()
    assert "after" in (tmp_path / "web.log").read_text()
    assert "before" not in (tmp_path / "web.log").read_text()
