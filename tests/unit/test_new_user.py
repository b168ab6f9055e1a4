"""What a new user runs into first: each mistake gets one clear message, nothing hangs,
nothing is skipped silently."""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from zfsrepl import config, hooks, log
from zfsrepl.cli import main
from zfsrepl.config import Endpoint, FilesystemPair, Service, dump_service
from zfsrepl.errors import ConfigError, UsageError

GOOD = dump_service(Service("web", Endpoint("srchost", "src"), Endpoint("desthost", "dst"),
                            (FilesystemPair("tank/web", "backup/web"),)))


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() sets the zfsrepl logger up: the other tests get it back as it was."""
    for logger in (log.logger, log.commands_logger):
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "level", logger.level)


def define(confdir: Path, name: str, text: str) -> Path:
    path = confdir / "services" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(("key", "value"), [
    ("retry_delay", "1e10"), ("retry_delay", "31622401"), ("interval", "10000000000"),
    ("hook_timeout", "10000000000")])
def test_every_duration_is_bounded(tmp_path: Path, key: str, value: str) -> None:
    text = GOOD.replace("interval = 60\n", "") if key == "interval" else GOOD
    path = define(tmp_path, "web", f"{key} = {value}\n{text}")
    with pytest.raises(ConfigError) as exc:
        config.load_service(tmp_path, "web")
    shown = "10000000000.0" if value == "1e10" else value
    assert str(exc.value) == (f"{path}: {key}: {shown} is too long; expected at most "
                              "31622400 seconds (366 days)")


def test_the_longest_durations_are_accepted(tmp_path: Path) -> None:
    define(tmp_path, "web", "retry_delay = 31622400\n" + GOOD.replace("interval = 60",
                                                                      "interval = 31622400"))
    assert config.load_service(tmp_path, "web").retry_delay == 31622400.0


def test_a_single_filesystem_table_says_to_double_the_brackets(tmp_path: Path) -> None:
    text = GOOD.replace("[[filesystem]]", "[filesystem]")
    path = define(tmp_path, "web", text)
    with pytest.raises(ConfigError) as exc:
        config.load_service(tmp_path, "web")
    assert str(exc.value) == (f"{path}: filesystem: written as a single table [filesystem]; "
                              "expected [[filesystem]], with two brackets, before each "
                              "filesystem's source and destination")


def test_a_fifo_among_the_definitions_hangs_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    define(tmp_path, "web", GOOD)
    fifo = tmp_path / "services" / "db.toml"
    os.mkfifo(fifo)
    # Were it read, the read would block: a thread with a bounded join tells.
    done: list[object] = []

    def listing() -> None:
        done.append(config.list_services(tmp_path))
        try:
            config.load_service(tmp_path, "db")
        except ConfigError as exc:
            done.append(str(exc))

    worker = threading.Thread(target=listing, daemon=True)
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():  # unblock it: open the writing end once
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading the definitions blocked on a FIFO")
    assert done == [["web"], f"{fifo}: not a regular file; a service definition is a TOML "
                    "file"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_file_name_that_is_no_service_name_is_skipped_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log.logger, "propagate", True)  # for caplog
    define(tmp_path, "web", GOOD)
    define(tmp_path, "my svc", GOOD)
    define(tmp_path, ".hidden", GOOD)
    with caplog.at_level("WARNING", logger="zfsrepl"):
        assert config.list_services(tmp_path) == ["web"]
    (record,) = caplog.records
    assert record.getMessage() == (
        f"{tmp_path / 'services' / 'my svc.toml'}: skipped: 'my svc' is not a service name "
        "(1-64 letters, digits, '_', '.' or '-', starting with a letter or digit); rename "
        "the file")


def test_a_hook_that_cannot_run_names_the_definition(tmp_path: Path) -> None:
    path = tmp_path / "services" / "web.toml"
    with pytest.raises(ConfigError) as exc:
        hooks.check_executable("pre_snapshot", "/nonexistent/hook", path)
    assert str(exc.value).startswith(f"{path}: pre_snapshot: /nonexistent/hook is not an "
                                     "executable file")


def test_smf_manifest_takes_a_name_with_a_dot(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    define(tmp_path, "a.b", GOOD.replace('name = "web"', 'name = "a.b"'))
    assert main(["--config-dir", str(tmp_path), "smf-manifest", "a.b"]) == 0
    out = capsys.readouterr().out
    assert '<instance name="a_b"' in out and " run a.b" in out


def test_python_before_3_11_without_tomli_is_one_clear_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    define(tmp_path, "web", GOOD)
    monkeypatch.setattr(config.sys, "version_info", (3, 10, 12, "final", 0))
    monkeypatch.setitem(sys.modules, "tomli", None)  # import tomli fails
    with pytest.raises(UsageError) as exc:
        config.load_service(tmp_path, "web")
    assert str(exc.value) == (
        "reading service definitions on Python 3.10 needs the tomli module (tomllib comes "
        "with 3.11): install python3-tomli, or `pip install tomli` where zfsrepl is installed")
