"""Service managers: the systemd unit, enable/disable through systemctl, the SMF
manifest (validated against the service_bundle DTD) and the FreeBSD rc.d script."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zfsrepl import managers
from zfsrepl.cli import main
from zfsrepl.config import Endpoint, FilesystemPair, Service, dump_service
from zfsrepl.errors import UsageError, ZfsreplError
from zfsrepl.host import Result
from zfsrepl.managers import EXIT_MAINTENANCE, Systemd

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
COMMAND = [sys.executable, "-m", "zfsrepl"]


class FakeSystemctl:
    """Records commands; answers `is-enabled` with `enabled`."""

    def __init__(self, enabled: str = "enabled", fail: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.enabled = enabled
        self.fail = fail

    def __call__(self, argv: list[str]) -> Result:
        self.calls.append(argv)
        if self.fail and self.fail in argv:
            return Result(argv, 1, "", "Failed to enable unit: Access denied\n")
        if argv[1] == "is-enabled":
            return Result(argv, 0 if self.enabled == "enabled" else 1, self.enabled + "\n", "")
        return Result(argv, 0, "", "")


def unit_dirs(tmp_path: Path) -> tuple[Path, tuple[Path, ...]]:
    etc = tmp_path / "etc"
    return etc, (etc, tmp_path / "run", tmp_path / "lib")


# ---------------------------------------------------------------------------- systemd


def test_unit_starts_this_installation_and_stays_stopped_after_maintenance() -> None:
    unit = managers.render_unit(COMMAND)
    assert f"ExecStart={sys.executable} -m zfsrepl run %i" in unit
    assert "RestartPreventExitStatus=2 96" in unit and EXIT_MAINTENANCE == 96
    assert "Restart=on-failure" in unit
    assert unit.startswith(managers.INSTALLED_MARK)


def test_unit_quotes_a_command_with_spaces() -> None:
    unit = managers.render_unit(["/opt/my tools/zfsrepl"])
    assert 'ExecStart="/opt/my tools/zfsrepl" run %i' in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    (tmp_path / "zfsrepl@.service").write_text(managers.render_unit(COMMAND))
    # A template is verified through an instance of it.
    (tmp_path / "zfsrepl@testrepl.service").symlink_to("zfsrepl@.service")
    # Documentation=man:zfsrepl(8): the man page the package build generates
    man = tmp_path / "man" / "man8"
    subprocess.run([sys.executable, str(Path(__file__).parents[2] / "scripts" /
                                        "generate-extras"), str(man)], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(managers.__file__).parents[1])})
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "zfsrepl@testrepl.service")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MANPATH": str(tmp_path / "man")})
    # verify exits 0 on mere warnings: there must be none either.
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values of the [Service] section (a key may repeat)."""
    section = ""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("["):
            section = line
        elif "=" in line and not line.startswith("#") and section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_the_unit_is_sandboxed() -> None:
    unit = unit_settings(managers.packaged(managers.SYSTEMD_TEMPLATE))
    expected = {
        "ProtectSystem": ["strict"], "ReadWritePaths": ["-/var/lib/zfsrepl -/var/log/zfsrepl"],
        "PrivateTmp": ["yes"], "NoNewPrivileges": ["yes"], "CapabilityBoundingSet": [""],
        "SystemCallArchitectures": ["native"], "UMask": ["0077"], "ProtectHome": ["read-only"],
        "DeviceAllow": ["/dev/zfs rw"], "DevicePolicy": ["closed"],
        "SystemCallFilter": ["@system-service", "~@privileged"],
        "SyslogIdentifier": ["zfsrepl-%i"], "RestrictSUIDSGID": ["yes"],
        "RestrictNamespaces": ["yes"], "ProtectKernelTunables": ["yes"],
        "ProtectControlGroups": ["yes"], "LockPersonality": ["yes"],
        "MemoryDenyWriteExecute": ["yes"],
    }
    assert {k: unit.get(k) for k in expected} == expected
    # PrivateDevices would hide /dev/zfs; there is no User=: the drop-in of `enable` says
    assert "PrivateDevices" not in unit and "User" not in unit
    assert "StateDirectory" not in unit  # it would chown the folder shared by all services


@pytest.mark.parametrize(("user", "rights", "settings"), [
    ("src", "allow", {"User": ["src"], "Group": ["backup"]}),
    ("src", "sudo", {"User": ["src"], "NoNewPrivileges": ["no"],
                     "SystemCallFilter": ["", "@system-service"]}),
    ("root", "allow", {"CapabilityBoundingSet": [" ".join(managers.ROOT_CAPABILITIES)]}),
])
def test_the_user_dropin(user: str, rights: str, settings: dict[str, list[str]]) -> None:
    dropin = unit_settings(managers.render_user_dropin(user, "backup", rights))
    assert {k: dropin.get(k) for k in settings} == settings
    if user == "root":
        assert "User" not in dropin
    if rights == "sudo":
        assert "CAP_SETUID" in dropin["CapabilityBoundingSet"][0]


def test_service_identity_looks_the_user_up() -> None:
    import pwd
    me = pwd.getpwuid(os.getuid()).pw_name
    assert managers.service_identity(me, "zfs").startswith("# Written by `zfsrepl enable`")
    with pytest.raises(UsageError, match="source user 'no-such-user-zr' of the definition "
                                         "does not exist on this host"):
        managers.service_identity("no-such-user-zr", "zfs")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize(("user", "rights"), [("src", "allow"), ("src", "sudo"),
                                              ("root", "allow")])
def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path, user: str,
                                                    rights: str) -> None:
    """The README's score: `systemd-analyze security` at 3.0 or lower ("OK")."""
    etc = tmp_path / "etc" / "systemd" / "system"
    (etc / "zfsrepl@web.service.d").mkdir(parents=True)
    (etc / "zfsrepl@.service").write_text(managers.packaged(managers.SYSTEMD_TEMPLATE))
    (etc / "zfsrepl@web.service.d" / managers.USER_DROPIN_NAME).write_text(
        managers.render_user_dropin(user, "src", rights))
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true",
                           f"--root={tmp_path}", "zfsrepl@web.service"],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r"Overall exposure level for zfsrepl@web.service: (\d+\.\d+)",
                      proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= 3.0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_metrics_unit_reads_every_state_file_and_nothing_else(tmp_path: Path) -> None:
    text = managers.packaged("zfsrepl-metrics.service")
    unit = unit_settings(text)
    assert unit["ExecStart"] == ["/usr/bin/zfsrepl metrics --listen ${ZFSREPL_METRICS_LISTEN}"]
    assert unit["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH"]
    assert unit["ProtectSystem"] == ["strict"] and "ReadWritePaths" not in unit
    etc = tmp_path / "etc" / "systemd" / "system"
    etc.mkdir(parents=True)
    (etc / "zfsrepl-metrics.service").write_text(text)
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true",
                           f"--root={tmp_path}", "zfsrepl-metrics.service"],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r"Overall exposure level for zfsrepl-metrics.service: (\d+\.\d+)",
                      proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= 3.0


def test_enable_writes_the_user_dropin(tmp_path: Path) -> None:
    etc, dirs = unit_dirs(tmp_path)
    identity = managers.render_user_dropin("src", "src", "allow")
    written = Systemd(FakeSystemctl(), dirs, etc).enable("web", COMMAND, {}, identity)
    path = etc / "zfsrepl@web.service.d" / managers.USER_DROPIN_NAME
    assert str(path) in written and path.read_text() == identity


def test_the_enable_command_runs_the_service_as_its_source_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import pwd
    me = pwd.getpwuid(os.getuid()).pw_name
    if me == "root":  # a user other than root, as the unit would run
        me = next((p.pw_name for p in pwd.getpwall() if p.pw_uid >= 1), "")
    assert me
    etc, dirs = unit_dirs(tmp_path)
    fake = FakeSystemctl()
    monkeypatch.setattr(managers, "detect", lambda: "systemd")
    monkeypatch.setattr(managers, "Systemd", lambda: Systemd(fake, dirs, etc))
    confdir = tmp_path / "config"
    (confdir / "services").mkdir(parents=True)
    (confdir / "services" / "web.toml").write_text(dump_service(Service(
        "web", Endpoint("a", me), Endpoint("b", "dst"), (FilesystemPair("p/a", "p/b"),))))
    state, logs = tmp_path / "state", tmp_path / "log"
    assert main(["--config-dir", str(confdir), "--state-dir", str(state), "--log-dir",
                 str(logs), "enable", "web"]) == 0
    dropin = (etc / "zfsrepl@web.service.d" / managers.USER_DROPIN_NAME).read_text()
    assert f"User={me}\n" in dropin
    assert (state / "services" / "web").stat().st_uid == pwd.getpwnam(me).pw_uid
    out = capsys.readouterr().out
    assert f"made {logs / 'web.log'} for {me}" in out
    assert "enabled and started zfsrepl@web.service" in out


def test_the_folders_dropin_makes_other_folders_writable() -> None:
    dropin = managers.render_dropin({"ZFSREPL_STATE_DIR": "/srv/state", "ZFSREPL_LOG_DIR":
                                     "/srv/my logs", "ZFSREPL_CONFIG_DIR": "/srv/conf"})
    assert 'ReadWritePaths=-/srv/state "-/srv/my logs"\n' in dropin


def test_enable_installs_the_unit_and_the_folders_then_enables_it(tmp_path: Path) -> None:
    etc, dirs = unit_dirs(tmp_path)
    fake = FakeSystemctl()
    sd = Systemd(fake, dirs, etc)
    env = {"ZFSREPL_CONFIG_DIR": "/srv/zfsrepl"}
    written = sd.enable("web", COMMAND, env)
    assert written == [str(etc / "zfsrepl@.service"),
                       str(etc / "zfsrepl@web.service.d" / managers.DROPIN_NAME)]
    assert fake.calls == [["systemctl", "daemon-reload"],
                          ["systemctl", "enable", "--now", "zfsrepl@web.service"]]
    dropin = (etc / "zfsrepl@web.service.d" / managers.DROPIN_NAME).read_text()
    assert 'Environment="ZFSREPL_CONFIG_DIR=/srv/zfsrepl"' in dropin

    fake.calls.clear()
    assert sd.enable("web", COMMAND, env) == []  # nothing changed: no daemon-reload
    assert fake.calls == [["systemctl", "enable", "--now", "zfsrepl@web.service"]]

    assert sd.enable("web", COMMAND, {}) == [
        f"{etc / 'zfsrepl@web.service.d' / managers.DROPIN_NAME} (removed)"]


def test_a_unit_from_a_package_is_used_as_it_is(tmp_path: Path) -> None:
    etc, dirs = unit_dirs(tmp_path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "zfsrepl@.service").write_text("[Service]\nExecStart=/usr/bin/zfsrepl\n")
    fake = FakeSystemctl()
    assert Systemd(fake, dirs, etc).enable("web", COMMAND, {}) == []
    assert not (etc / "zfsrepl@.service").exists()


def test_a_unit_edited_by_the_administrator_is_left_alone(tmp_path: Path) -> None:
    etc, dirs = unit_dirs(tmp_path)
    etc.mkdir()
    (etc / "zfsrepl@.service").write_text("# mine\n[Service]\nExecStart=/x run %i\n")
    Systemd(FakeSystemctl(), dirs, etc).enable("web", COMMAND, {})
    assert (etc / "zfsrepl@.service").read_text().startswith("# mine")


def test_systemctl_failures_are_one_clear_message(tmp_path: Path) -> None:
    etc, dirs = unit_dirs(tmp_path)
    with pytest.raises(ZfsreplError, match=re.escape(
            "systemctl enable --now zfsrepl@web.service: Failed to enable unit: Access denied")):
        Systemd(FakeSystemctl(fail="enable"), dirs, etc).enable("web", COMMAND, {})


def test_disable_and_start_again(tmp_path: Path) -> None:
    etc, dirs = unit_dirs(tmp_path)
    fake = FakeSystemctl()
    sd = Systemd(fake, dirs, etc)
    sd.disable("web")
    assert sd.start_again("web") == "started zfsrepl@web.service"
    assert fake.calls == [["systemctl", "disable", "--now", "zfsrepl@web.service"],
                          ["systemctl", "is-enabled", "zfsrepl@web.service"],
                          ["systemctl", "reset-failed", "zfsrepl@web.service"],
                          ["systemctl", "start", "zfsrepl@web.service"]]
    off = Systemd(FakeSystemctl(enabled="disabled"), dirs, etc)
    assert "not enabled" in off.start_again("web") and not off.is_enabled("web")


def test_folder_environment_names_only_what_differs_from_the_defaults(tmp_path: Path) -> None:
    env = managers.folder_environment(Path("/etc/zfsrepl"), tmp_path, Path("/var/log/zfsrepl"))
    assert env == {"ZFSREPL_STATE_DIR": str(tmp_path)}


def test_without_systemd_enable_says_how_to_run_the_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(managers, "detect", lambda: None)
    confdir = tmp_path / "config"
    (confdir / "services").mkdir(parents=True)
    svc = Service("web", Endpoint("a", "src"), Endpoint("b", "dst"),
                  (FilesystemPair("p/a", "p/b"),))
    (confdir / "services" / "web.toml").write_text(dump_service(svc))
    for command in ("enable", "disable"):
        assert main(["--config-dir", str(confdir), command, "web"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err  # one line, no traceback
        assert "systemd is not running" in err and "`zfsrepl run web`" in err
        assert f"except on {EXIT_MAINTENANCE}" in err


@pytest.mark.parametrize("manager,expected", [
    ("smf", "zfsrepl smf-manifest web"), ("rc", "zfsrepl rc-script"), (None, "supervisor")])
def test_no_manager_help_fits_the_platform(manager: str | None, expected: str) -> None:
    assert expected in managers.no_manager_help("web", manager)


# ---------------------------------------------------------------------------- SMF


def smf(name: str = "testrepl", env: dict[str, str] | None = None) -> str:
    return managers.smf_manifest(name, ["/opt/zfsrepl/bin/zfsrepl"], "src", None, env or {})


@pytest.mark.skipif(shutil.which("xmllint") is None, reason="no xmllint (libxml2-utils)")
@pytest.mark.parametrize("env", [{}, {"ZFSREPL_CONFIG_DIR": "/srv/a&b <c>"}])
def test_smf_manifest_validates_against_the_dtd(tmp_path: Path, env: dict[str, str]) -> None:
    manifest = tmp_path / "zfsrepl-testrepl.xml"
    manifest.write_text(smf(env=env))
    dtd = FIXTURES / "service_bundle.dtd.1"
    # The DOCTYPE names the DTD where Solaris keeps it: a catalog points that at the copy.
    catalog = tmp_path / "catalog.xml"
    catalog.write_text(
        '<?xml version="1.0"?>\n<catalog xmlns="urn:oasis:names:tc:entity:xmlns:xml:catalog">'
        f'<system systemId="{managers.SMF_DTD}" uri="{dtd.as_uri()}"/></catalog>\n')
    for how in (["--valid"], ["--dtdvalid", str(dtd)]):
        proc = subprocess.run(["xmllint", "--noout", "--nonet", *how, str(manifest)],
                              capture_output=True, text=True, timeout=60,
                              env={"XML_CATALOG_FILES": str(catalog), "PATH": "/usr/bin:/bin"})
        assert (proc.returncode, proc.stderr) == (0, "")


def test_smf_manifest_is_a_wait_model_service_run_by_zfsrepl_run() -> None:
    text = smf()
    assert 'exec="/opt/zfsrepl/bin/zfsrepl run testrepl"' in text
    assert '<propval name="duration" type="astring" value="child" />' in text
    assert 'exec=":kill -HUP"' in text and 'exec=":kill"' in text
    assert '<method_credential user="src" group=":default" />' in text
    assert 'name="testrepl"' in text and 'name="application/zfsrepl"' in text


def test_smf_takes_every_name_a_definition_takes() -> None:
    text = smf("1st.backup")
    assert '<instance name="svc-1st_backup" enabled="false">' in text
    assert 'exec="/opt/zfsrepl/bin/zfsrepl run 1st.backup"' in text
    assert managers.smf_fmri("a.b") == "svc:/application/zfsrepl:a_b"
    assert managers.smf_fmri("web") == "svc:/application/zfsrepl:web"


def test_smf_refuses_two_services_that_would_be_one_instance() -> None:
    clash = "'a.b' and 'a_b' would both be the SMF instance 'a_b'"
    with pytest.raises(UsageError, match=re.escape(clash)):
        managers.check_smf_instance_name("a.b", ["a.b", "a_b", "web"])
    managers.check_smf_instance_name("a.b", ["a.b", "web"])


# ---------------------------------------------------------------------------- FreeBSD


def test_rc_script_runs_this_installation_and_is_valid_shell(tmp_path: Path) -> None:
    text = managers.rc_script(["/usr/local/bin/python3.11", "-m", "zfsrepl"])
    assert ': ${zfsrepl_command:="/usr/local/bin/python3.11 -m zfsrepl"}' in text
    assert "# PROVIDE: zfsrepl" in text and "run_rc_command" in text
    script = tmp_path / "zfsrepl"
    script.write_text(text)
    assert subprocess.run(["sh", "-n", str(script)], timeout=30).returncode == 0


def test_commands_print_manifest_and_script(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    confdir = tmp_path / "config"
    (confdir / "services").mkdir(parents=True)
    svc = Service("web", Endpoint("a", "backup"), Endpoint("b", "dst"),
                  (FilesystemPair("p/a", "p/b"),))
    (confdir / "services" / "web.toml").write_text(dump_service(svc))
    assert main(["--config-dir", str(confdir), "smf-manifest", "web"]) == 0
    assert '<method_credential user="backup"' in capsys.readouterr().out
    out = tmp_path / "m.xml"
    assert main(["--config-dir", str(confdir), "smf-manifest", "web", "--user", "root",
                 "--command", "/opt/z/bin/zfsrepl", "-o", str(out)]) == 0
    assert 'exec="/opt/z/bin/zfsrepl run web"' in out.read_text()
    assert "svccfg import" in capsys.readouterr().out
    assert main(["rc-script", "--command", "relative/zfsrepl"]) == 2
    assert "full path" in capsys.readouterr().err
    assert main(["rc-script"]) == 0
    assert "run_rc_command" in capsys.readouterr().out


def test_rc_script_starts_each_listed_service_through_daemon(tmp_path: Path) -> None:
    # rc.subr stands in for FreeBSD's: it shows what run_rc_command would act on.
    subr = tmp_path / "rc.subr"
    subr.write_text('load_rc_config() { :; }\nrun_rc_command() { echo "rc $1 $command_args"; }\n')
    script = tmp_path / "zfsrepl"
    script.write_text(managers.rc_script(["/usr/local/bin/zfsrepl"])
                      .replace(". /etc/rc.subr", f". {subr}"))
    script.chmod(0o755)

    def rc(*args: str, services: str = "web db") -> str:
        env = {"PATH": "/usr/bin:/bin", "zfsrepl_services": services}
        return subprocess.run([str(script), *args], env=env, capture_output=True, text=True,
                              timeout=30, check=True).stdout

    both = rc("start")
    assert both.splitlines()[0] == "===> zfsrepl service web"
    assert "rc start -f -P /var/run/zfsrepl/web.pid" in both
    assert "/usr/local/bin/zfsrepl  run web" in both and "run db" in both
    one = rc("stop", "db")
    assert one.startswith("rc stop ") and "run db" in one and "web" not in one
    assert rc("rcvar").startswith("rc rcvar")
    assert "no services" in rc("start", services="")


def test_enable_prepares_the_folders_of_a_service_user(tmp_path: Path) -> None:
    state, logs = tmp_path / "state", tmp_path / "log"
    uid, gid = os.getuid(), os.getgid()
    made = managers.prepare_folders("web", uid, gid, state, logs)
    assert made == [str(state / "services"), str(state / "services" / "web"),
                    str(state / "metrics"), str(logs), str(logs / "web.log")]
    assert (state / "services" / "web").stat().st_mode & 0o777 == 0o750
    # every service's user writes its own file there, none can replace another's
    assert (state / "metrics").stat().st_mode & 0o7777 == 0o1777
    assert (state / "metrics").stat().st_uid == os.geteuid()
    assert (logs / "web.log").stat().st_mode & 0o777 == 0o640
    assert (logs / "web.log").stat().st_uid == uid
    (logs / "web.log").write_text("kept\n")
    assert managers.prepare_folders("web", uid, gid, state, logs) == []  # only what is missing
    assert (logs / "web.log").read_text() == "kept\n"


# ---------------------------------------------------------------------------- clear as root


def test_root_acts_as_the_owner_of_another_users_state_folder() -> None:
    assert managers.acting_uid(0, 1000) == 1000
    assert managers.acting_uid(0, 0) is None
    assert managers.acting_uid(0, None) is None  # no state yet
    assert managers.acting_uid(1000, 1000) is None
    assert managers.acting_uid(1000, 2000) is None  # not root: the folder check says why


def test_a_start_refused_after_clear_says_the_state_is_cleared(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc, dirs = unit_dirs(tmp_path)
    sd = Systemd(FakeSystemctl(fail="start"), dirs, etc)
    monkeypatch.setattr(managers.os, "geteuid", lambda: 1000)  # the service's user
    with pytest.raises(ZfsreplError, match=re.escape(
            "maintenance cleared, but systemctl start zfsrepl@web.service failed: Failed to "
            "enable unit: Access denied (starting a unit needs root: run `systemctl start "
            "zfsrepl@web.service` as root)")):
        sd.start_again("web")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can become the service's user")
def test_clear_as_root_changes_the_state_as_the_services_user(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a service manager the service runs as its definition's user and owns its
    state folder, into which root refuses to write: root's `clear` (the one that can
    start the unit again) changes it as that user."""
    import json
    import pwd
    import tempfile

    from zfsrepl.state import ServicePaths, StateStore

    monkeypatch.setattr(managers, "detect", lambda: None)
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="zfsrepl-clear-"))
    try:
        base.chmod(0o755)  # the user must reach its folders below
        confdir, state_dir, log_dir = base / "config", base / "state", base / "log"
        (confdir / "services").mkdir(parents=True)
        svc = Service("web", Endpoint("srchost", "nobody", zfs_command="/nonexistent/zfs"),
                      Endpoint("desthost", "dst"), (FilesystemPair("tank/web", "backup/web"),))
        (confdir / "services" / "web.toml").write_text(dump_service(svc))
        managers.prepare_folders("web", nobody.pw_uid, nobody.pw_gid, state_dir, log_dir)
        paths = ServicePaths(state_dir, "web")
        paths.state_file.write_text(json.dumps({"maintenance_since": 1.0,
                                                "maintenance_reason": "it broke"}))
        os.chown(paths.state_file, nobody.pw_uid, nobody.pw_gid)

        assert main(["--config-dir", str(confdir), "--state-dir", str(state_dir),
                     "--log-dir", str(log_dir), "clear", "web"]) == 0
        assert not StateStore(paths).load().in_maintenance
        assert paths.state_file.stat().st_uid == nobody.pw_uid
        assert {p.stat().st_uid for p in paths.folder.iterdir()} == {nobody.pw_uid}
        assert "maintenance of web cleared (it was: it broke)" in \
            (log_dir / "web.log").read_text()
    finally:
        shutil.rmtree(base)
