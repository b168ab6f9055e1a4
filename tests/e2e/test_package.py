"""The Debian package: built by scripts/build-deb with Debian's tooling, lintian clean,
holding what the README's "Install" section promises, and working once unpacked.

Needs no lab. Skipped only where the build tools are missing and cannot be installed
(not root, or apt-get fails); CI runs as root and installs them through the script.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from zfsrepl import __version__, cli, managers

REPO = Path(__file__).resolve().parents[2]
# Debian's interpreter: the one the package depends on.
PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package unpacked into a throwaway root (removed with the temporary folder)."""
    where = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(where)], check=True, timeout=120)
    return where


def run_installed(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The packaged /usr/bin/zfsrepl, run by Debian's python3 on the unpacked modules."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "PYTHONPATH": str(root / "usr/lib/python3/dist-packages"), "LANG": "C.UTF-8"}
    return subprocess.run([PYTHON, str(root / "usr/bin/zfsrepl"), *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_the_control_fields(deb: Path) -> None:
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True,
                          check=True).stdout
    fields = dict(re.findall(r"^ ([A-Z][\w-]*): (.*)$", info, re.MULTILINE))
    assert fields["Package"] == "zfsrepl" and fields["Architecture"] == "all"
    assert fields["Version"] == __version__
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert "openssh-client" in depends
    assert any(d.startswith("python3") for d in depends)
    # tomli only where tomllib is missing: Debian 12's Python 3.11 has it
    assert [d for d in depends if "tomli" in d] == ["python3-tomli | python3 (>> 3.11)"]


def test_the_contents(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    entries = {}
    for line in listing.splitlines():
        mode, owner, *_, name = line.split(None, 5)
        entries[name.split(" -> ")[0].removeprefix(".")] = (mode, owner)
    for path, mode in {
        "/usr/bin/zfsrepl": "-rwxr-xr-x",
        "/usr/lib/python3/dist-packages/zfsrepl/agent.py": "-rw-r--r--",
        "/usr/lib/systemd/system/zfsrepl@.service": "-rw-r--r--",
        "/usr/lib/systemd/system/zfsrepl-metrics.service": "-rw-r--r--",
        "/usr/lib/ocf/resource.d/zfsrepl/service": "-rwxr-xr-x",
        "/usr/share/man/man8/zfsrepl.8.gz": "-rw-r--r--",
        "/usr/share/bash-completion/completions/zfsrepl": "-rw-r--r--",
        "/etc/logrotate.d/zfsrepl": "-rw-r--r--",
        "/etc/zfsrepl/services/": "drwxr-xr-x",
        "/var/lib/zfsrepl/": "drwxr-xr-x",
        "/var/log/zfsrepl/": "drwxr-xr-x",
    }.items():
        assert entries.get(path) == (mode, "root/root"), path


def test_lintian_finds_nothing_unexplained(deb: Path) -> None:
    proc = subprocess.run(["lintian", "--fail-on", "none", str(deb)], capture_output=True,
                          text=True, timeout=600)
    tags = [line for line in proc.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert tags == []


def test_the_installed_command_runs(root: Path) -> None:
    version = run_installed(root, "--version")
    assert (version.returncode, version.stdout) == (0, f"zfsrepl {__version__}\n")
    help_text = run_installed(root, "--help")
    assert help_text.returncode == 0 and "runonce" in help_text.stdout
    status_help = run_installed(root, "status", "--help").stdout
    assert "3  unknown: a host could not be asked" in status_help
    # the agent, as a destination's forced command starts it, refuses what it is not
    agent = run_installed(root, "agent", "--help")
    assert agent.returncode == 0 and "--filesystem" in agent.stdout


def test_the_unit_is_the_sandboxed_template(root: Path) -> None:
    unit = (root / "usr/lib/systemd/system/zfsrepl@.service").read_text()
    assert unit == managers.packaged(managers.SYSTEMD_TEMPLATE)
    assert "ExecStart=/usr/bin/zfsrepl run %i" in unit
    # `enable` uses this unit as it is: it finds it where it looks
    assert Path("/usr/lib/systemd/system") in managers.SYSTEMD_UNIT_DIRS


def test_the_man_page_holds_every_command(root: Path) -> None:
    page = subprocess.run(["zcat", str(root / "usr/share/man/man8/zfsrepl.8.gz")],
                          capture_output=True, text=True, check=True).stdout
    assert page.startswith(".TH ZFSREPL 8 ")
    for command in cli.MODULE_OF:
        if command not in ("setup-remote", "agent"):
            assert f".SS {command.replace('-', chr(92) + '-')}\n" in page, command


def test_bash_completes_commands_and_service_names(root: Path, tmp_path: Path) -> None:
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "web.toml").write_text("")
    script = root / "usr/share/bash-completion/completions/zfsrepl"

    def complete(*words: str) -> list[str]:
        line = " ".join(f'"{w}"' for w in words)
        code = (f"source {script}; COMP_WORDS=(zfsrepl {line}); "
                f"COMP_CWORD={len(words)}; _zfsrepl; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        out = subprocess.run(["bash", "-c", code], capture_output=True, text=True, check=True,
                             env={"ZFSREPL_CONFIG_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
        return out.stdout.split()

    assert {"status", "check", "runonce", "--debug"} <= set(complete(""))
    assert complete("stat") == ["status", "state"]
    assert complete("status", "") == ["web"]
    assert "--max-lag" in complete("check", "--m")


def test_logrotate_accepts_the_snippet(root: Path, tmp_path: Path) -> None:
    if shutil.which("logrotate", path="/usr/sbin:/usr/bin") is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        "logrotate"], capture_output=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if shutil.which("logrotate", path="/usr/sbin:/usr/bin") is None:
        pytest.skip("no logrotate here, and it could not be installed")
    text = (root / "etc/logrotate.d/zfsrepl").read_text()
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "web.log").write_text("a line\n")
    conf = tmp_path / "conf"
    conf.write_text(text.replace("/var/log/zfsrepl/", f"{logs}/"))
    proc = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the daemon reopens a moved file (test_log): rotation moves it, no copytruncate
    directives = [line.strip() for line in text.splitlines()]
    assert "create" in directives and "copytruncate" not in directives


def test_the_venv_install_of_the_readme(tmp_path: Path) -> None:
    """`python3 -m venv DIR && DIR/bin/pip install .`: the alternative to the package."""
    import sys

    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                          text=True, timeout=300)
    if made.returncode != 0:
        pytest.skip(f"this Python makes no virtual environment: {made.stderr[-500:]}")
    # a copy of the tree: pip builds in place and leaves build/ behind
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "dist", "build", "*.egg-info", "__pycache__", ".*_cache", "bench"))
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(src)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    version = subprocess.run([str(venv / "bin" / "zfsrepl"), "--version"], capture_output=True,
                             text=True, timeout=120)
    assert (version.returncode, version.stdout) == (0, f"zfsrepl {__version__}\n")


def test_the_maintainer_scripts_reload_systemd_and_enable_nothing(deb: Path,
                                                                  tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "control")], check=True)
    postinst = (tmp_path / "control" / "postinst").read_text()
    assert "systemctl --system daemon-reload" in postinst and "py3compile" in postinst
    commands = [line for line in postinst.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in commands if "enable" in line]
    assert "daemon-reload" in (tmp_path / "control" / "postrm").read_text()
