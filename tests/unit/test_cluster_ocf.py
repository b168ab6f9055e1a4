"""The OCF resource agent packaging/ocf/service, run for real against a stand-in
`zfsrepl run` (a program that holds the service's run lock until SIGTERM) and the
real `zfsrepl state`; no ZFS. The e2e test runs ocf-tester on a real service."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zfsrepl import lock, state
from zfsrepl.config import Endpoint, FilesystemPair, Service, dump_service
from zfsrepl.state import ServicePaths, StateStore

AGENT = Path(__file__).resolve().parents[2] / "packaging" / "ocf" / "service"
SRC = Path(__file__).resolve().parents[2] / "src"
DTD_DIR = Path("/usr/share/resource-agents")
OCF_SUCCESS, OCF_ERR_GENERIC, OCF_ERR_CONFIGURED, OCF_ERR_INSTALLED, OCF_NOT_RUNNING = \
    0, 1, 6, 5, 7
NAME = "web"

# `run` holds the run lock like zfsrepl run; every other command is zfsrepl itself.
STAND_IN = f"""#!{sys.executable}
import os, signal, sys, time
sys.path.insert(0, {str(SRC)!r})
args = sys.argv[1:]
if "run" in args:
    from pathlib import Path
    from zfsrepl.lock import FileLock
    state_dir = Path(args[args.index("--state-dir") + 1])
    folder = state_dir / "services" / args[-1]
    folder.mkdir(parents=True, exist_ok=True)
    if os.environ.get("STAND_IN_FAIL"):
        print("zfsrepl: error: cannot open the lock: Permission denied", file=sys.stderr)
        sys.exit(2)
    if os.environ.get("STAND_IN_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    with FileLock(folder / "run.lock", "run") as lk:
        lk.try_acquire()
        print("2026-01-01 00:00:00 INFO service running", file=sys.stderr, flush=True)
        while True:
            time.sleep(0.05)
from zfsrepl import cluster_state
cluster_state.read = lambda svc, zfs=None: None  # no ZFS here
from zfsrepl.cli import main
sys.exit(main(args))
"""


class Agent:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.config = tmp_path / "config"
        self.state = tmp_path / "state"
        (self.config / "services").mkdir(parents=True)
        svc = Service(NAME, Endpoint("src-cluster", "src"), Endpoint("dst-cluster", "dst"),
                      (FilesystemPair("tank/web", "backup/web"),))
        (self.config / "services" / f"{NAME}.toml").write_text(dump_service(svc))
        self.command = tmp_path / "zfsrepl-stand-in"
        self.command.write_text(STAND_IN)
        self.command.chmod(0o755)
        self.rsctmp = tmp_path / "rsctmp"
        self.params = {"service": NAME, "config_dir": str(self.config),
                       "state_dir": str(self.state), "log_dir": str(tmp_path / "log"),
                       "zfsrepl": str(self.command)}

    def env(self, **params: str) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HA_RSCTMP": str(self.rsctmp),
               "OCF_ROOT": "/usr/lib/ocf", "OCF_RESOURCE_INSTANCE": "zfsrepl-web",
               "OCF_RESKEY_CRM_meta_timeout": "20000", "OCF_RESKEY_CRM_meta_interval": "10000"}
        env.update({f"OCF_RESKEY_{k}": v for k, v in {**self.params, **params}.items()})
        return env

    def __call__(self, action: str, extra: dict[str, str] | None = None,
                 **params: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(AGENT), action], env={**self.env(**params),
                                                               **(extra or {})},
                              capture_output=True, text=True, timeout=60, check=False)

    def holder(self) -> lock.Holder | None:
        return lock.probe(ServicePaths(self.state, NAME).daemon_lock)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path)
    yield a
    holder = a.holder()
    if holder is not None and holder.pid is not None:
        os.kill(holder.pid, signal.SIGKILL)


def test_meta_data_is_valid_ra_api_xml(agent: Agent) -> None:
    out = agent("meta-data")
    assert out.returncode == OCF_SUCCESS
    assert '<parameter name="service" unique="1" required="1">' in out.stdout
    if not (DTD_DIR / "ra-api-1.dtd").exists() or shutil.which("xmllint") is None:
        pytest.skip("the ra-api DTD (Debian package resource-agents) or xmllint is missing")
    lint = subprocess.run(["xmllint", "--noout", "--valid", "-"], input=out.stdout,
                          cwd=DTD_DIR, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stderr


def test_start_monitor_stop(agent: Agent) -> None:
    assert agent("validate-all").returncode == OCF_SUCCESS
    assert agent("monitor").returncode == OCF_NOT_RUNNING
    assert agent("stop").returncode == OCF_SUCCESS  # stopping a stopped one succeeds
    assert agent("start").returncode == OCF_SUCCESS
    holder = agent.holder()
    assert holder is not None and holder.pid is not None
    assert agent("monitor").returncode == OCF_SUCCESS
    assert agent("start").returncode == OCF_SUCCESS  # and starting a started one
    assert agent.holder() == holder
    assert agent("stop").returncode == OCF_SUCCESS
    assert agent.holder() is None
    assert agent("monitor").returncode == OCF_NOT_RUNNING


def test_stop_kills_a_service_that_does_not_go_before_the_stop_times_out(
        agent: Agent) -> None:
    assert agent("start", {"STAND_IN_IGNORE_TERM": "1"}).returncode == OCF_SUCCESS
    holder = agent.holder()
    assert holder is not None
    # 6 s for the stop: SIGTERM, then SIGKILL with the agent's margin of 5 s left (at
    # least 5 s after the SIGTERM)
    stop = agent("stop", {"OCF_RESKEY_CRM_meta_timeout": "6000"})
    assert stop.returncode == OCF_SUCCESS
    assert "did not stop on SIGTERM: killing it" in stop.stderr
    assert agent.holder() is None


def test_the_services_standard_error_does_not_grow_while_it_runs(agent: Agent) -> None:
    assert agent("start").returncode == OCF_SUCCESS
    err = agent.rsctmp / "zfsrepl-zfsrepl-web.err"
    wait = 0
    while not err.read_text() and wait < 100:  # its first line may come just after
        time.sleep(0.1)
        wait += 1
    assert "service running" in err.read_text()
    assert agent("monitor").returncode == OCF_SUCCESS
    assert err.read_text() == ""


def test_maintenance_is_a_failure_with_its_reason(agent: Agent) -> None:
    StateStore(ServicePaths(agent.state, NAME)).update(
        lambda s: state.enter_maintenance(s, 1.0, "cannot connect to dst@dst-cluster"))
    monitor = agent("monitor")
    assert monitor.returncode == OCF_ERR_GENERIC
    assert "ocf-exit-reason:in maintenance: cannot connect to dst@dst-cluster" in monitor.stderr
    start = agent("start")
    assert start.returncode == OCF_ERR_GENERIC
    assert "ocf-exit-reason:in maintenance: cannot connect to dst@dst-cluster" in start.stderr
    assert agent.holder() is None
    assert agent("stop").returncode == OCF_SUCCESS


def test_stop_stops_a_service_in_maintenance_that_has_not_gone_yet(agent: Agent) -> None:
    # zfsrepl run records the maintenance, runs on_alarm, then exits: a stop meanwhile
    # must still stop it
    assert agent("start").returncode == OCF_SUCCESS
    assert agent.holder() is not None
    StateStore(ServicePaths(agent.state, NAME)).update(
        lambda s: state.enter_maintenance(s, 1.0, "destination unreachable"))
    assert agent("monitor").returncode == OCF_ERR_GENERIC
    assert agent("stop").returncode == OCF_SUCCESS
    assert agent.holder() is None


def test_a_run_that_fails_at_once_fails_the_start_with_its_message(agent: Agent) -> None:
    env_fail = agent.env()
    env_fail["STAND_IN_FAIL"] = "1"
    out = subprocess.run(["sh", str(AGENT), "start"], env=env_fail, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == OCF_ERR_GENERIC
    assert ("ocf-exit-reason:zfsrepl run web exited: zfsrepl: error: cannot open the lock: "
            "Permission denied") in out.stderr


def test_validation(agent: Agent) -> None:
    out = agent("validate-all", service="nosuch")
    assert out.returncode == OCF_ERR_CONFIGURED
    assert "ocf-exit-reason:zfsrepl: error: no service 'nosuch'" in out.stderr
    assert agent("validate-all", service="").returncode == OCF_ERR_CONFIGURED
    out = agent("validate-all", zfsrepl="/nonexistent/zfsrepl")
    assert out.returncode == OCF_ERR_INSTALLED and "/nonexistent/zfsrepl" in out.stderr
    assert agent("validate-all", user="no-such-user-here").returncode == OCF_ERR_CONFIGURED
    # a probe where the definition is not (the pool is on another node): not running here
    probe = agent.env(service="nosuch")
    probe["OCF_RESKEY_CRM_meta_interval"] = "0"
    out = subprocess.run(["sh", str(AGENT), "monitor"], env=probe, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == OCF_NOT_RUNNING
    assert agent("promote").returncode == 3  # OCF_ERR_UNIMPLEMENTED


@pytest.mark.skipif(os.geteuid() != 0, reason="ocf-tester runs the agent as root")
def test_ocf_tester_passes(agent: Agent) -> None:
    tester = shutil.which("ocf-tester")
    if tester is None:
        pytest.skip("ocf-tester is missing (Debian package resource-agents)")
    # ocf-tester checks the meta-data as nobody: the agent must be readable by all
    os.chmod(agent.tmp, 0o755)
    argv = [tester, "-n", "zfsrepl-web"]
    for key, value in agent.params.items():
        argv += ["-o", f"{key}={value}"]
    out = subprocess.run([*argv, str(AGENT)], env={**agent.env()}, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed all tests" in out.stdout
