"""The host's service manager: systemd, SMF (Solaris, illumos) or FreeBSD rc.d.

Each runs `zfsrepl run NAME` in the foreground and leaves it stopped when it
exits with EXIT_MAINTENANCE. What is written for them (unit, manifest, rc.d
script) is made by pure functions here; the few commands run go through a
`Runner`, so tests can see them without a service manager.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import shlex
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable

from zfsrepl import config
from zfsrepl.errors import UsageError, ZfsreplError
from zfsrepl.host import LocalHost, Result, first_line

# SMF_EXIT_ERR_CONFIG: svc.startd puts a wait-model service that exits with it in
# maintenance at once, so the same status serves systemd, rc.d and any supervisor.
EXIT_MAINTENANCE = 96

SYSTEMD_TEMPLATE = "zfsrepl@.service"
SYSTEMD_ETC = Path("/etc/systemd/system")
# Where systemd looks for units, most local first (systemd.unit(5)).
SYSTEMD_UNIT_DIRS = (SYSTEMD_ETC, Path("/run/systemd/system"),
                     Path("/usr/local/lib/systemd/system"), Path("/usr/lib/systemd/system"),
                     Path("/lib/systemd/system"))
INSTALLED_MARK = "# Installed by `zfsrepl enable`; it rewrites this file when it differs."
DROPIN_NAME = "zfsrepl-folders.conf"
USER_DROPIN_NAME = "zfsrepl-user.conf"
# The template grants no capability. Root's ZFS rights are CAP_SYS_ADMIN (and root
# reads the files of others); sudo also needs to change identity.
ROOT_CAPABILITIES = ("CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER")
SUDO_CAPABILITIES = (*ROOT_CAPABILITIES, "CAP_SETUID", "CAP_SETGID", "CAP_AUDIT_WRITE",
                     "CAP_SYS_RESOURCE")

SMF_SERVICE = "application/zfsrepl"
SMF_DTD = "/usr/share/lib/xml/dtd/service_bundle.dtd.1"
# Instance names of Solaris 10, 11.3 and illumos; 11.4 allows more, not less.
_SMF_INSTANCE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# Seconds SMF waits for a stop: a post-snapshot hook in progress is let finish.
SMF_STOP_TIMEOUT = 900

Runner = Callable[[list[str]], Result]


def run_command(argv: list[str]) -> Result:
    return LocalHost().run(argv, check=False)


def zfsrepl_command() -> list[str]:
    """How a service manager starts this installation of zfsrepl."""
    return [sys.executable, "-m", "zfsrepl"]


def packaged(name: str) -> str:
    return importlib.resources.files("zfsrepl").joinpath("data", name).read_text("utf-8")


def folder_environment(config_dir: Path, state_dir: Path, log_dir: Path) -> dict[str, str]:
    """The ZFSREPL_* variables a managed `run` needs to find what this command found."""
    env: dict[str, str] = {}
    for var, value, default in (
        ("ZFSREPL_CONFIG_DIR", config_dir, config.DEFAULT_CONFIG_DIR),
        ("ZFSREPL_STATE_DIR", state_dir, config.DEFAULT_STATE_DIR),
        ("ZFSREPL_LOG_DIR", log_dir, config.DEFAULT_LOG_DIR),
    ):
        if Path(value).absolute() != Path(default):
            env[var] = str(Path(value).absolute())
    return env


def detect() -> str | None:
    """The service manager running here: "systemd", "smf", "rc" or None."""
    if os.path.isdir("/run/systemd/system"):  # what sd_booted(3) checks
        return "systemd"
    if sys.platform.startswith("sunos") and shutil.which("svcadm"):
        return "smf"
    if sys.platform.startswith("freebsd"):
        return "rc"
    return None


def no_manager_help(name: str, manager: str | None) -> str:
    """Why enable/disable cannot act here, and how to run the service anyway."""
    q = shlex.quote(name)
    if manager == "smf":
        how = (f"on Solaris and illumos: zfsrepl smf-manifest {q} > /var/svc/manifest/site/"
               f"zfsrepl-{name}.xml; svccfg import /var/svc/manifest/site/zfsrepl-{name}.xml; "
               f"svcadm enable {smf_fmri(name)}")
    elif manager == "rc":
        how = ("on FreeBSD: zfsrepl rc-script > /usr/local/etc/rc.d/zfsrepl; chmod 555 "
               f"/usr/local/etc/rc.d/zfsrepl; sysrc zfsrepl_enable=YES zfsrepl_services+={q}; "
               f"service zfsrepl start {q}")
    else:
        how = (f"run `zfsrepl run {q}` under your supervisor (runit, s6, supervisord, ...): it "
               "stays in the foreground and logs to standard error; SIGTERM stops it (exit 0), "
               "SIGHUP makes it re-read its definition; restart it when it exits non-zero, "
               f"except on {EXIT_MAINTENANCE} (maintenance: clear it with `zfsrepl clear {q}` "
               "first) and 2 (bad definition)")
    return f"systemd is not running on this host (no /run/systemd/system); {how}"


# ---------------------------------------------------------------------------- systemd


def systemd_unit(name: str) -> str:
    return f"zfsrepl@{name}.service"


def _systemd_quote(word: str) -> str:
    # systemd splits ExecStart= like a shell: plain words stay plain.
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(command: list[str]) -> str:
    """The packaged template unit, starting `command run %i`."""
    exec_start = "ExecStart=" + " ".join(_systemd_quote(w) for w in [*command, "run", "%i"])
    lines = [exec_start if ln.startswith("ExecStart=") else ln
             for ln in packaged(SYSTEMD_TEMPLATE).splitlines()]
    return "\n".join([INSTALLED_MARK, *lines]) + "\n"


def render_dropin(env: Mapping[str, str]) -> str:
    lines = ["# Written by `zfsrepl enable`: the folders this service was enabled with.",
             "[Service]"]
    lines += [f'Environment="{k}={v}"' for k, v in sorted(env.items())]
    # The sandbox lets the service write its state and log folders only.
    writable = [env[k] for k in ("ZFSREPL_STATE_DIR", "ZFSREPL_LOG_DIR") if k in env]
    if writable:
        lines.append("ReadWritePaths=" + " ".join(_systemd_quote(f"-{w}") for w in writable))
    return "\n".join(lines) + "\n"


def render_user_dropin(user: str, group: str, rights: str) -> str:
    """Who zfsrepl@NAME runs as: the definition's source user (`rights`: "allow" where
    its ZFS rights come from `zfs allow`, "sudo" where zfs_command goes through sudo)."""
    lines = ["# Written by `zfsrepl enable`: the user of the definition, and what its ZFS",
             "# rights need from the sandbox.", "[Service]"]
    if user == "root":
        lines += ["# root: its ZFS rights are capabilities, not delegations.",
                  f"CapabilityBoundingSet={' '.join(ROOT_CAPABILITIES)}"]
        return "\n".join(lines) + "\n"
    lines += [f"User={user}", f"Group={group}"]
    if rights == "sudo":
        lines += ["# zfs_command runs sudo, which must become root: no NoNewPrivileges, the",
                  "# capabilities root's zfs needs, the system calls that change identity.",
                  "NoNewPrivileges=no",
                  f"CapabilityBoundingSet={' '.join(SUDO_CAPABILITIES)}",
                  "SystemCallFilter=", "SystemCallFilter=@system-service",
                  "ReadWritePaths=-/run/sudo -/var/lib/sudo"]
    return "\n".join(lines) + "\n"


def prepare_folders(name: str, uid: int, gid: int, state_dir: Path, log_dir: Path) -> list[str]:
    """What a service running as uid:gid must find made for it, as setup's root steps
    make it: its state folder and log file (its own), and the metrics folder where none
    is yet. Made only where missing; what exists is left as it is. Returns what was made.

    The metrics folder is shared by every service, whatever user each runs as: root's,
    writable by all and sticky like /tmp, so that each writes and replaces only its own
    file."""
    made = []
    folder = state_dir / "services" / name
    wanted = [(state_dir / "services", None, 0o755), (folder, (uid, gid), 0o750),
              (state_dir / "metrics", None, 0o1777), (log_dir, None, 0o755)]
    try:
        for path, owner, mode in wanted:
            if not path.exists():
                path.mkdir(parents=True, mode=mode)
                path.chmod(mode)
                if owner is not None:
                    os.chown(path, *owner)
                made.append(str(path))
        log = log_dir / f"{name}.log"
        if not log.exists():
            log.touch(mode=0o640)
            os.chown(log, uid, gid)
            made.append(str(log))
    except OSError as exc:
        raise ZfsreplError(f"cannot prepare {exc.filename}: {exc.strerror} (run as root)") \
            from None
    return made


def service_identity(user: str, zfs_command: str) -> str:
    """The user drop-in for a definition whose source user is `user`; UsageError if that
    user does not exist on this host."""
    import grp
    import pwd

    from zfsrepl.setup.rootscript import rights_of

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"the source user {user!r} of the definition does not exist on this "
                         "host: create it (see `zfsrepl setup`) or correct [source] user") \
            from None
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return render_user_dropin(user, group, rights_of(zfs_command)[0])


class Systemd:
    """zfsrepl@NAME.service through systemctl."""

    def __init__(self, run: Runner = run_command, unit_dirs: tuple[Path, ...] = SYSTEMD_UNIT_DIRS,
                 etc_dir: Path = SYSTEMD_ETC) -> None:
        self.run = run
        self.unit_dirs = unit_dirs
        self.etc_dir = etc_dir

    def systemctl(self, *args: str, check: bool = True) -> Result:
        result = self.run(["systemctl", *args])
        if check and result.returncode != 0:
            why = first_line(result.stderr) or f"exit status {result.returncode}"
            raise ZfsreplError(f"systemctl {' '.join(args)}: {why}")
        return result

    def _write(self, path: Path, text: str) -> bool:
        try:
            if path.exists() and path.read_text("utf-8") == text:
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
        except OSError as exc:
            raise ZfsreplError(f"cannot write {path}: {exc.strerror} (run as root)") from None
        return True

    def install(self, name: str, command: list[str], env: Mapping[str, str],
                identity: str | None = None) -> list[str]:
        """Put the template unit (and the service's folders, and `identity`: the user
        drop-in) where systemd finds them; return what was written. A unit from a
        package is used as it is."""
        written: list[str] = []
        ours = self.etc_dir / SYSTEMD_TEMPLATE
        found = next((d / SYSTEMD_TEMPLATE for d in self.unit_dirs
                      if (d / SYSTEMD_TEMPLATE).exists()), None)
        installed_by_us = found == ours and ours.read_text("utf-8").startswith(INSTALLED_MARK)
        if (found is None or installed_by_us) and self._write(ours, render_unit(command)):
            written.append(str(ours))
        if identity is not None:
            user_dropin = self.etc_dir / f"{systemd_unit(name)}.d" / USER_DROPIN_NAME
            if self._write(user_dropin, identity):
                written.append(str(user_dropin))
        dropin = self.etc_dir / f"{systemd_unit(name)}.d" / DROPIN_NAME
        if env:
            if self._write(dropin, render_dropin(env)):
                written.append(str(dropin))
        elif dropin.exists():
            try:
                dropin.unlink()
            except OSError as exc:
                raise ZfsreplError(f"cannot remove {dropin}: {exc.strerror}") from None
            written.append(f"{dropin} (removed)")
        return written

    def enable(self, name: str, command: list[str], env: Mapping[str, str],
               identity: str | None = None) -> list[str]:
        written = self.install(name, command, env, identity)
        if written:
            self.systemctl("daemon-reload")
        self.systemctl("enable", "--now", systemd_unit(name))
        return written

    def disable(self, name: str) -> None:
        self.systemctl("disable", "--now", systemd_unit(name))

    def is_enabled(self, name: str) -> bool:
        out = self.systemctl("is-enabled", systemd_unit(name), check=False).stdout.strip()
        return out in ("enabled", "enabled-runtime")

    def start_again(self, name: str) -> str:
        """After a clear: start the service if it is enabled, like `svcadm clear`."""
        unit = systemd_unit(name)
        if not self.is_enabled(name):
            return (f"{unit} is not enabled: start the service with `zfsrepl enable {name}` "
                    f"or run `zfsrepl run {name}`")
        self.systemctl("reset-failed", unit, check=False)
        result = self.systemctl("start", unit, check=False)
        if result.returncode != 0:
            why = first_line(result.stderr) or f"exit status {result.returncode}"
            hint = "" if os.geteuid() == 0 else \
                f" (starting a unit needs root: run `systemctl start {unit}` as root)"
            raise ZfsreplError(f"maintenance cleared, but systemctl start {unit} failed: "
                               f"{why}{hint}")
        return f"started {unit}"


# ---------------------------------------------------------------------------- SMF


def smf_instance(name: str) -> str:
    """The SMF instance name of service `name`: SMF wants a letter first, then letters,
    digits, '_' or '-', so a '.' becomes '_' and a name starting with a digit gets
    `svc-` before it (the start method still runs `zfsrepl run NAME`)."""
    instance = name.replace(".", "_")
    if not instance[:1].isalpha():
        instance = f"svc-{instance}"
    return instance


def smf_fmri(name: str) -> str:
    return f"svc:/{SMF_SERVICE}:{smf_instance(name)}"


def check_smf_instance_name(name: str, others: Sequence[str] = ()) -> None:
    """Refuse a name whose SMF instance name is another service's too."""
    instance = smf_instance(name)
    if not _SMF_INSTANCE_RE.match(instance):
        raise UsageError(f"service name {name!r} cannot be an SMF instance name: SMF wants a "
                         "letter first, then letters, digits, '_' or '-'; rename the service "
                         "definition")
    clash = [o for o in others if o != name and smf_instance(o) == instance]
    if clash:
        raise UsageError(f"services {name!r} and {clash[0]!r} would both be the SMF instance "
                         f"{instance!r}; rename one of the definitions")


def smf_manifest(name: str, command: list[str], user: str, group: str | None,
                 env: Mapping[str, str]) -> str:
    """The SMF manifest of svc:/application/zfsrepl:NAME, a wait-model service whose start
    method is `zfsrepl run NAME`: SMF watches that process, stops it with SIGTERM,
    refreshes it with SIGHUP, and puts it in maintenance when it exits with
    EXIT_MAINTENANCE."""
    check_smf_instance_name(name)
    bundle = ET.Element("service_bundle", type="manifest", name=f"zfsrepl-{name}")
    svc = ET.SubElement(bundle, "service", name=SMF_SERVICE, type="service", version="1")
    for dep, fmri in (("network", "svc:/milestone/network:default"),
                      ("filesystem-local", "svc:/system/filesystem/local:default")):
        d = ET.SubElement(svc, "dependency", name=dep, grouping="require_all",
                          restart_on="none", type="service")
        ET.SubElement(d, "service_fmri", value=fmri)
    ET.SubElement(svc, "method_context")
    inst = ET.SubElement(svc, "instance", name=smf_instance(name), enabled="false")
    ctx = ET.SubElement(inst, "method_context", working_directory="/")
    ET.SubElement(ctx, "method_credential", user=user, group=group or ":default")
    if env:
        menv = ET.SubElement(ctx, "method_environment")
        for key, value in sorted(env.items()):
            ET.SubElement(menv, "envvar", name=key, value=value)
    start = " ".join(shlex.quote(w) for w in [*command, "run", name])
    ET.SubElement(inst, "exec_method", type="method", name="start", exec=start,
                  timeout_seconds="0")
    ET.SubElement(inst, "exec_method", type="method", name="stop", exec=":kill",
                  timeout_seconds=str(SMF_STOP_TIMEOUT))
    ET.SubElement(inst, "exec_method", type="method", name="refresh", exec=":kill -HUP",
                  timeout_seconds="60")
    pg = ET.SubElement(inst, "property_group", name="startd", type="framework")
    # child: the start method is the service itself (no daemonizing, no contract games).
    ET.SubElement(pg, "propval", name="duration", type="astring", value="child")
    tmpl = ET.SubElement(inst, "template")
    cn = ET.SubElement(tmpl, "common_name")
    ET.SubElement(cn, "loctext", {"xml:lang": "C"}).text = f"ZFS replication service {name}"
    ET.SubElement(svc, "stability", value="Unstable")
    tmpl = ET.SubElement(svc, "template")
    cn = ET.SubElement(tmpl, "common_name")
    ET.SubElement(cn, "loctext", {"xml:lang": "C"}).text = "ZFS replication (zfsrepl)"
    ET.indent(bundle, "  ")
    body = ET.tostring(bundle, encoding="unicode")
    return (f'<?xml version="1.0"?>\n<!DOCTYPE service_bundle SYSTEM "{SMF_DTD}">\n'
            f"<!-- zfsrepl smf-manifest {name}: svccfg import this file, then "
            f"svcadm enable {smf_fmri(name)} -->\n{body}\n")


class Smf:
    """svc:/application/zfsrepl:NAME through svcs and svcadm."""

    def __init__(self, run: Runner = run_command) -> None:
        self.run = run

    def state(self, name: str) -> str | None:
        result = self.run(["svcs", "-H", "-o", "state", smf_fmri(name)])
        return (result.stdout.strip() or None) if result.returncode == 0 else None

    def is_enabled(self, name: str) -> bool:
        return self.state(name) not in (None, "disabled")

    def start_again(self, name: str) -> str:
        fmri = smf_fmri(name)
        if self.state(name) != "maintenance":
            return f"{fmri} is not in maintenance in SMF: nothing to clear there"
        result = self.run(["svcadm", "clear", fmri])
        if result.returncode != 0:
            raise ZfsreplError(f"svcadm clear {fmri}: {first_line(result.stderr)}")
        return f"cleared {fmri} in SMF"


# ---------------------------------------------------------------------------- FreeBSD


def rc_script(command: list[str]) -> str:
    """The packaged rc.d script, set to start this installation of zfsrepl."""
    line = f': ${{zfsrepl_command:="{shlex.join(command)}"}}'
    return "\n".join(line if ln.startswith(": ${zfsrepl_command:=") else ln
                     for ln in packaged("zfsrepl.rc").splitlines()) + "\n"


# ---------------------------------------------------------------------------- the service's user


def acting_uid(euid: int, folder_uid: int | None) -> int | None:
    """Whom root must become to change a service's state (`zfsrepl clear`): the owner of
    its state folder, where that is another user (the service runs as its definition's
    user), because root refuses to write into a folder someone else owns (fileio).
    None: act as who runs the command."""
    if euid != 0 or folder_uid is None or folder_uid == 0:
        return None
    return folder_uid


def folder_owner(folder: Path) -> tuple[int, int] | None:
    """The (uid, gid) owning `folder`, or None where it does not exist."""
    try:
        st = folder.stat()
    except OSError:
        return None
    return st.st_uid, st.st_gid


def as_user(uid: int, gid: int, action: Callable[[], int]) -> int:
    """Run `action` in a child process that is user `uid` and nothing more: its primary
    group and other groups (`gid` for a uid without a name); `action`'s result is the
    exit status returned. The child reports its own errors, as the command line does,
    in one line."""
    import pwd

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - measured in the parent, which sees its status
        code = 1
        try:
            try:
                entry = pwd.getpwuid(uid)
                gid = entry.pw_gid
                os.initgroups(entry.pw_name, gid)
            except KeyError:
                os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            code = action()
        except ZfsreplError as exc:
            print(f"zfsrepl: error: {exc}", file=sys.stderr)
            code = exc.exit_code
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            print(f"zfsrepl: error: {exc.strerror or exc}{where}", file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# ---------------------------------------------------------------------------- any


def is_enabled(name: str, manager: str | None, run: Runner = run_command) -> bool | None:
    """Whether the service manager starts the service; None where that cannot be asked."""
    try:
        if manager == "systemd":
            return Systemd(run).is_enabled(name)
        if manager == "smf":
            return Smf(run).is_enabled(name)
    except ZfsreplError:
        return None
    return None


def start_again(name: str, manager: str | None, run: Runner = run_command) -> str:
    """What `zfsrepl clear` does after clearing maintenance, as one line for the operator."""
    if manager == "systemd":
        return Systemd(run).start_again(name)
    if manager == "smf":
        return Smf(run).start_again(name)
    if manager == "rc":
        return f"start it again with: service zfsrepl start {shlex.quote(name)}"
    return (f"no service manager here: start `zfsrepl run {shlex.quote(name)}` again under "
            "your supervisor")
