"""The command line imports only the module of the command it runs."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zfsrepl import agent, cli, log


def registered(module_name: str) -> set[str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(f"zfsrepl.cli.{module_name}").register(sub, [])
    return set(sub.choices)


@pytest.mark.parametrize("module_name", list(cli.COMMANDS))
def test_the_table_names_what_each_module_registers(module_name: str) -> None:
    assert registered(module_name) == set(cli.COMMANDS[module_name])


@pytest.mark.parametrize(("argv", "command"), [
    (["runonce", "svc"], "runonce"),
    (["--config-dir", "runonce", "status", "svc"], "status"),
    (["--config-dir=/x", "--state-dir", "/y", "doctor", "svc", "--fix"], "doctor"),
    (["--conf", "/x", "list"], "list"),  # an abbreviated option takes its value
    (["runonce", "--config-dir", "/x", "svc"], "runonce"),
    (["--help"], None),
    ([], None),
    (["--config-dir"], None),  # malformed: the full parser says what is wrong
    (["nosuchcommand"], "nosuchcommand"),
])
def test_command_word(argv: list[str], command: str | None) -> None:
    assert cli.command_word(argv) == command


def test_a_partial_parser_parses_like_the_full_one() -> None:
    argv = ["--config-dir", "/c", "runonce", "--dry-run", "--state-dir", "/s", "svc"]
    full = vars(cli.build_parser().parse_args(argv))
    only = vars(cli.build_parser(cli.command_word(argv)).parse_args(argv))
    assert only == full


def test_an_unknown_command_gets_the_full_choice_of_commands(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["nosuchcommand"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuchcommand'" in err and "runonce" in err and "doctor" in err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in cli.MODULE_OF:
        if command != "setup-remote":  # internal, not shown
            assert command in out


def imported_by(*argv: str) -> set[str]:
    """The zfsrepl modules a fresh interpreter has imported once `zfsrepl ARGV` is parsed."""
    code = ("import sys\nfrom zfsrepl import cli\n"
            f"cli.build_parser(cli.command_word({list(argv)!r})).parse_args({list(argv)!r})\n"
            "print(' '.join(m for m in sys.modules if m.startswith('zfsrepl')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    return set(out.split())


def test_runonce_does_not_import_the_other_commands() -> None:
    modules = imported_by("runonce", "svc")
    assert "zfsrepl.cli.runonce" in modules
    assert not {"zfsrepl.cli.setup", "zfsrepl.setup.wizard", "zfsrepl.doctor",
                "zfsrepl.cli.doctor"} & modules


def test_the_agent_imports_nothing_of_the_command_line() -> None:
    """Every remote command of a cycle starts `zfsrepl agent`: it pays for no more
    than the agent."""
    code = ("import sys\nfrom zfsrepl import cli\n"
            "rc = cli.main(['agent', '--service', 's', '--filesystem', 'p/a', '--source-user',"
            " 'u', '--destination-user', 'v', '--destination-host', 'h'])\n"
            "print(rc, ' '.join(m for m in sys.modules if m.startswith('zfsrepl')))")
    env = {**os.environ, "SSH_ORIGINAL_COMMAND": "zfs frobnicate"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out[0] == str(agent.EXIT_REFUSED)
    modules = set(out[1:])
    assert "zfsrepl.agent" in modules
    assert not {m for m in modules if m.startswith("zfsrepl.cli.")}
    assert not {"zfsrepl.config", "zfsrepl.log", "zfsrepl.cycle"} & modules


def test_the_agent_starts_without_typing_dataclasses_or_ctypes() -> None:
    """Their imports were a third of the agent's start, paid on every remote command (a
    receive for each filesystem in a cycle): its modules use zfsrepl.record instead."""
    src = Path(agent.__file__).parents[1]
    code = (f"import sys\nsys.path.insert(0, {str(src)!r})\nfrom zfsrepl import cli\n"
            "rc = cli.main(['agent', '--service', 's', '--filesystem', 'p/a', '--source-user',"
            " 'u', '--destination-user', 'v', '--destination-host', 'h'])\n"
            "print(rc, ' '.join(m for m in ('typing', 'dataclasses', 'inspect', 'ctypes')"
            " if m in sys.modules))")
    env = {**os.environ, "SSH_ORIGINAL_COMMAND": "zfs destroy p/a"}
    # -S: no site module, which may import typing itself
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out == [str(agent.EXIT_REFUSED)]


def test_what_the_system_refuses_is_one_line_not_a_traceback(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from zfsrepl.cli import status

    def refused(args: object, ctx: object) -> int:
        raise OSError(28, "No space left on device", "/var/lib/zfsrepl/x.json")

    monkeypatch.setattr(status, "list_services", refused)  # registered by name
    # main() sets the zfsrepl logger up: the other tests get it back as it was
    monkeypatch.setattr(log.logger, "handlers", list(log.logger.handlers))
    monkeypatch.setattr(log.logger, "propagate", log.logger.propagate)
    monkeypatch.setattr(log.logger, "level", log.logger.level)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err == "zfsrepl: error: No space left on device: /var/lib/zfsrepl/x.json\n"


def test_a_reader_that_goes_away_gets_no_broken_pipe_message(tmp_path: Path) -> None:
    services = tmp_path / "services"
    services.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zfsrepl", "--config-dir", str(tmp_path), "--state-dir",
         str(tmp_path), "status", "--json", "--cached"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -1` gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait() in (0, 141)
    assert "Broken pipe" not in err and "BrokenPipeError" not in err and err == ""


def test_every_command_takes_verbose_quiet_and_debug() -> None:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        if name == "agent":  # a forced command: it parses its own arguments
            continue
        options = {s for a in command._actions for s in a.option_strings}
        assert {"-v", "--verbose", "-q", "--quiet", "--debug"} <= options, name
    args = parser.parse_args(["list", "-q"])
    assert (args.quiet, args.verbose, args.debug) == (True, False, False)
    args = parser.parse_args(["--debug", "list"])
    assert (args.quiet, args.verbose, args.debug) == (False, False, True)
