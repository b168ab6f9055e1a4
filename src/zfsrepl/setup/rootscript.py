"""The root steps of a setup: a script per host, and the check that it has been run.

The script creates the key folder, installs the definition (on the destination its
copy marked role = "destination", for failback), the files the service's user writes
(on the source its state folder and log file, on the destination the agent's log
file), and grants the service's user exactly the ZFS rights it needs:
`zfs allow` where the platform has it, otherwise the zfs wrapper (zfswrap: the argument
forms zfsrepl runs, on the service's filesystems) and a sudo rule for that wrapper
alone. `problems()` checks each of those effects as the user on that host, so
setup waits until the script has been run, and skips the step when it already was.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zfsrepl import zfswrap
from zfsrepl.errors import UsageError

# What a cycle does on each side, and nothing more: the source snapshots, sends,
# bookmarks the newest replicated snapshot and prunes (destroy needs mount); the
# destination creates by receiving (readonly: `receive -o readonly=on`), prunes,
# discards cut resumable receives (destroy) and rolls back. hold/release: the
# service's hold on the incremental base; userprop: the role properties; rename,
# clone, promote: doctor's repair that keeps a diverged replica aside.
SOURCE_PERMISSIONS = ("send", "snapshot", "bookmark", "destroy", "mount", "hold", "release",
                      "userprop")
DESTINATION_PERMISSIONS = ("create", "mount", "receive", "readonly", "destroy", "rollback",
                           "hold", "release", "userprop", "rename", "clone", "promote")
HEREDOC_END = "ZFSREPL_DEFINITION_END"
MODULE_END = "ZFSREPL_MODULE_END"
SUDOERS_DIR = "/etc/sudoers.d"
# Where the root script looks for the real zfs and for the system's Python (for the
# wrapper), system locations only: never a PATH a user could have changed.
ZFS_PATHS = ("/usr/sbin/zfs", "/sbin/zfs", "/usr/local/sbin/zfs", "/usr/bin/zfs")
PYTHON_PATHS = ("/usr/bin/python3", "/usr/local/bin/python3", "/opt/local/bin/python3",
                "/opt/csw/bin/python3")


def rights_of(zfs_command: str) -> tuple[str, str]:
    """("sudo" | "allow", zfs binary) for a definition's zfs_command."""
    words = shlex.split(zfs_command)
    if os.path.basename(words[0]) == "sudo":
        return "sudo", words[-1]
    return "allow", words[-1]


@dataclass(frozen=True)
class RootStep:
    side: str  # "source" or "destination"
    host: str
    user: str
    service: str
    config_dir: str
    definition_file: str  # name under <config_dir>/services
    definition_text: str
    rights: str  # "allow" or "sudo"
    zfs_path: str
    datasets: tuple[str, ...]  # where `zfs allow` grants
    permissions: tuple[str, ...]
    agent_log: str | None = None  # destination: the agent's log file
    state_folder: str | None = None  # source: the service's state (locks, last error)
    service_log: str | None = None  # source: the service's log file
    # rights "sudo": what the zfs wrapper lets the user do (zfswrap.Rule.to_json), and
    # the digest of the wrapper's modules the script installs (wrapper_digest)
    sudo_rule: str | None = None
    wrapper_digest: str | None = None

    @property
    def key_dir(self) -> str:
        return f"{self.config_dir}/keys/{self.user}"

    @property
    def definition_path(self) -> str:
        return f"{self.config_dir}/services/{self.definition_file}"

    @property
    def script_name(self) -> str:
        return f"zfsrepl-root.{self.service}.{self.side}.sh"

    @property
    def rule_file(self) -> str:
        return f"{zfswrap.RULES_DIR}/{self.user}/{self.service}.{self.side}.json"

    @property
    def sudoers_file(self) -> str:
        # sudo skips files in sudoers.d whose names hold a '.'
        return f"{SUDOERS_DIR}/zfsrepl-{self.user.replace('.', '_')}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RootStep:
        data = dict(data)
        data["datasets"] = tuple(data.get("datasets", ()))
        data["permissions"] = tuple(data.get("permissions", ()))
        try:
            return cls(**data)
        except TypeError as exc:
            raise UsageError(f"not a root step: {exc}") from None


def render(step: RootStep) -> str:
    """The shell script root runs on the step's host."""
    q = shlex.quote
    if any(line == HEREDOC_END for line in step.definition_text.splitlines()):
        raise UsageError(f"the definition holds a line {HEREDOC_END!r}")
    services = f"{step.config_dir}/services"
    lines = [
        "#!/bin/sh",
        f"# zfsrepl: root steps of service {step.service} on the {step.side} system "
        f"{step.host}.",
        "# Written by `zfsrepl setup`. Read it, then run it as root there: sh THIS_FILE",
        "set -eu",
        'if [ "$(id -u)" != 0 ]; then echo "run this script as root" >&2; exit 1; fi',
        *_SELF_CHECK,
        *_ROOT_FOLDER,
        f"user={q(step.user)}",
        'group=$(id -gn "$user")',
        f"echo {q(f'Creating the key folder {step.key_dir}')}",
        f"for d in {q(step.config_dir)} {q(step.config_dir + '/keys')} {q(services)}; do",
        '    [ -d "$d" ] || install -d -m 0755 "$d"',
        "done",
        f"root_folder {q(step.config_dir + '/keys')}",
        f"if [ -L {q(step.key_dir)} ]; then echo {q(f'{step.key_dir} is a symbolic link')} "
        ">&2; exit 1; fi",
        f'install -d -m 0700 -o "$user" -g "$group" {q(step.key_dir)}',
        f"echo {q(f'Installing the service definition {step.definition_path}')}",
        f"tmp=$(mktemp {q(f'{services}/.{step.service}.XXXXXX')})",
        f"cat > \"$tmp\" <<'{HEREDOC_END}'",
        *step.definition_text.rstrip("\n").split("\n"),
        HEREDOC_END,
        'chmod 0644 "$tmp"',
        f'mv -f "$tmp" {q(step.definition_path)}',
    ]
    if step.state_folder:
        folder = step.state_folder
        lines.append(f"echo {q(f'Creating the state folder {folder}')}")
        lines += _parents(os.path.dirname(folder), 2)
        lines += [f"root_folder {q(os.path.dirname(folder))}",
                  f"if [ -L {q(folder)} ]; then echo {q(f'{folder} is a symbolic link')} >&2; "
                  "exit 1; fi",
                  f'install -d -m 0750 -o "$user" -g "$group" {q(folder)}']
    for log in (step.service_log, step.agent_log):
        if log:
            lines.append(f"echo {q(f'Creating the log file {log}')}")
            lines += _parents(os.path.dirname(log), 1)
            # Only root can put an entry there (root_folder): what is checked stays so.
            not_file = f"{log} is not a regular file (a link?): remove it"
            lines += [f"root_folder {q(os.path.dirname(log))}",
                      f"if [ -L {q(log)} ] || {{ [ -e {q(log)} ] && [ ! -f {q(log)} ]; }}; "
                      f"then echo {q(not_file)} >&2; exit 1; fi",
                      f'[ -e {q(log)} ] || install -m 0640 -o "$user" -g "$group" /dev/null '
                      f"{q(log)}",
                      f'chown -h "$user:$group" {q(log)}', f"chmod 0640 {q(log)}"]
    if step.rights == "sudo":
        lines += _wrapper_lines(step)
    else:
        perms = ",".join(step.permissions)
        for ds in step.datasets:
            lines += [
                f"echo {q(f'Running zfs allow -u {step.user} {perms} {ds}')}",
                f"{q(step.zfs_path)} allow -u {q(step.user)} {q(perms)} {q(ds)}",
            ]
    lines.append(f"echo {q(f'Done: the root steps of {step.service} on {step.host}.')}")
    return "\n".join(lines) + "\n"


def wrapper_modules() -> dict[str, str]:
    """The wrapper's modules (zfswrap.MODULES) as this zfsrepl has them."""
    here = Path(zfswrap.__file__).parent
    return {name: (here / name).read_text(encoding="utf-8") for name in zfswrap.MODULES}


def wrapper_digest(modules: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(modules):
        digest.update(f"{name}\0{len(modules[name])}\0".encode())
        digest.update(modules[name].encode("utf-8"))
    return digest.hexdigest()


def _wrapper_lines(step: RootStep) -> list[str]:
    """Install the zfs wrapper, the service's rule for it, and the sudo rule that lets
    the user run the wrapper (and only it) as root."""
    q = shlex.quote
    if step.zfs_path != zfswrap.WRAPPER_PATH or step.sudo_rule is None:
        raise UsageError(f"zfs_command runs {step.zfs_path} through sudo, which would give "
                         f"{step.user} root's power over every dataset; set it to "
                         f'"sudo -n {zfswrap.WRAPPER_PATH}" (the wrapper this setup installs)')
    modules = wrapper_modules()
    if any(line == MODULE_END for text in modules.values() for line in text.splitlines()):
        raise UsageError(f"a module of the wrapper holds a line {MODULE_END!r}")
    lib = f"{zfswrap.LIB_DIR}/zfsrepl"
    rules = f"{zfswrap.RULES_DIR}/{step.user}"
    says = (f"Installing the zfs wrapper {zfswrap.WRAPPER_PATH}: no zfs allow here, so "
            f"{step.user} runs zfs through sudo and this wrapper, on the service's "
            "filesystems only")
    lines = [
        f"echo {q(says)}",
        "zfs=",
        f"for z in {' '.join(map(q, ZFS_PATHS))}; do",
        '    if [ -x "$z" ]; then zfs=$z; break; fi',
        "done",
        f'[ -n "$zfs" ] || {{ echo "no zfs in {" ".join(ZFS_PATHS)}" >&2; exit 1; }}',
        "python=",
        f"for p in {' '.join(map(q, PYTHON_PATHS))}; do",
        '    if [ -x "$p" ]; then python=$p; break; fi',
        "done",
        f'[ -n "$python" ] || {{ echo "no python3 in {" ".join(PYTHON_PATHS)} for the '
        'zfs wrapper" >&2; exit 1; }',
    ]
    # Each folder on the way only root can change: nobody can swap what sudo runs.
    chain = [zfswrap.INSTALL_DIR, zfswrap.LIB_DIR, lib]
    parents: list[str] = []
    folder = os.path.dirname(zfswrap.INSTALL_DIR)
    while folder not in ("/", ""):
        parents.insert(0, folder)
        folder = os.path.dirname(folder)
    rule_chain = [zfswrap.RULES_DIR, rules]
    for d in [*parents, *chain, *rule_chain]:
        lines += [f"[ -d {q(d)} ] || install -d -m 0755 {q(d)}", f"root_folder {q(d)}"]
    for name in sorted(modules):
        lines += [f"tmp=$(mktemp {q(f'{lib}/.{name}.XXXXXX')})",
                  f"cat > \"$tmp\" <<'{MODULE_END}'",
                  *modules[name].rstrip("\n").split("\n"),
                  MODULE_END,
                  'chmod 0644 "$tmp"',
                  f'mv -f "$tmp" {q(f"{lib}/{name}")}']
    if step.side == "destination":
        # The user may receive any one filesystem's stream into its replicas, and root
        # mounts them (at boot; through the wrapper): set-uid programs and device nodes
        # in them must not count. The replicas inherit this (streams carry no properties).
        for ds in step.datasets:
            lines.append(f"echo {q(f'Setting setuid=off and devices=off on {ds}')}")
            lines += [f'"$zfs" set {prop}=off {q(ds)}' for prop in ("setuid", "devices")]
    launcher_py = ("import sys; sys.path.insert(0, sys.argv[1]); from zfsrepl import zfswrap; "
                   "sys.stdout.write(zfswrap.launcher(sys.argv[2], sys.argv[3]))")
    rule = f"{step.user} ALL=(root) NOPASSWD: {zfswrap.WRAPPER_PATH}"
    lines += [
        f"tmp=$(mktemp {q(zfswrap.INSTALL_DIR + '/.zfs.XXXXXX')})",
        f'"$python" -I -c {q(launcher_py)} {q(zfswrap.LIB_DIR)} "$python" "$zfs" > "$tmp"',
        'chmod 0755 "$tmp"',
        f'mv -f "$tmp" {q(zfswrap.WRAPPER_PATH)}',
        f"echo {q(f'Writing what {step.user} may do through it: {step.rule_file}')}",
        f"tmp=$(mktemp {q(f'{rules}/.{step.service}.XXXXXX')})",
        f"cat > \"$tmp\" <<'{HEREDOC_END}'",
        *step.sudo_rule.rstrip("\n").split("\n"),
        HEREDOC_END,
        'chmod 0644 "$tmp"',
        f'mv -f "$tmp" {q(step.rule_file)}',
        f"echo {q(f'Allowing {step.user} to run {zfswrap.WRAPPER_PATH} through sudo')}",
        f"tmp=$(mktemp {q(SUDOERS_DIR + '/.zfsrepl.XXXXXX')})",
        f"printf '%s\\n' {q(rule)} > \"$tmp\"",
        'chmod 0440 "$tmp"',
        'if ! visudo -cqf "$tmp"; then rm -f "$tmp"; '
        'echo "visudo rejects the sudo rule" >&2; exit 1; fi',
        f'mv -f "$tmp" {q(step.sudoers_file)}',
    ]
    return lines


# Root runs this script: one that a user could change between root reading and running
# it, or that lies in such a folder, is refused. `find -user 0 ! -perm` is POSIX.
_SELF_CHECK = [
    'here=$(dirname -- "$0")',
    'for p in "$0" "$here"; do',
    '    if [ -L "$p" ] || [ -z "$(find "$p" -prune -user 0 ! -perm -020 ! -perm -002)" ]; then',
    '        echo "refusing to run: someone other than root can change $p. As root, copy this'
    ' script into a folder only root can write (e.g. install -m 0700 $0 /root/), check its'
    ' SHA-256 against the one setup printed, and run that copy" >&2',
    "        exit 1",
    "    fi",
    "done",
]
# Files root creates and hands to the user go only into folders nobody but root can
# change: there a checked name cannot turn into a link before it is used.
_ROOT_FOLDER = [
    "root_folder() {",
    '    if [ -L "$1" ] || [ -z "$(find "$1" -prune -type d -user 0 ! -perm -020 ! -perm -002)" ]'
    "; then",
    '        echo "refusing: $1 must be a folder owned by root that nobody else can write" >&2',
    "        exit 1",
    "    fi",
    "}",
]


def _parents(folder: str, depth: int) -> list[str]:
    """Create `folder` and up to depth-1 of its parents if missing (mode 0755, root's)."""
    chain = [folder]
    for _ in range(depth - 1):
        chain.insert(0, os.path.dirname(chain[0]))
    q = shlex.quote
    return [f"[ -d {q(d)} ] || install -d -m 0755 {q(d)}" for d in chain]


# ---------------------------------------------------------------------------- checking


def _folder_problem(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return f"key folder {path} is missing"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a folder"
    if st.st_uid != os.getuid():
        return f"key folder {path} is not owned by this user"
    if stat.S_IMODE(st.st_mode) & 0o077:
        return f"key folder {path} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return None


# A check that hangs (a zfs stuck on its pool, sudo waiting on something) must not hold
# setup forever: it counts as not done yet, saying why.
CHECK_TIMEOUT = 30.0


def _check(argv: list[str]) -> subprocess.CompletedProcess[bytes] | str:
    """The finished command, or why it could not be asked."""
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              check=False, timeout=CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"{shlex.join(argv)} did not answer within {CHECK_TIMEOUT:g}s"
    except OSError as exc:
        return f"cannot run {argv[0]}: {exc.strerror}"


def _allowed(zfs_path: str, dataset: str, user: str) -> set[str] | str:
    proc = _check([zfs_path, "allow", dataset])
    if isinstance(proc, str):
        return proc
    found: set[str] = set()
    pattern = re.compile(rf"^\s*user\s+{re.escape(user)}\s+(\S+)")
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        m = pattern.match(line)
        if m:
            found.update(m.group(1).split(","))
    return found


def _wrapper_problems(step: RootStep) -> list[str]:
    """What is missing of the wrapper's installation and of the service's rule for it."""
    found = []
    try:
        rule = Path(step.rule_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        rule = None
    if step.sudo_rule is not None and rule != step.sudo_rule:
        found.append(f"the zfs wrapper's rule {step.rule_file} is missing or differs")
    lib = Path(zfswrap.LIB_DIR) / "zfsrepl"
    try:
        installed = {name: (lib / name).read_text(encoding="utf-8")
                     for name in zfswrap.MODULES}
    except (OSError, UnicodeDecodeError):
        installed = {}
    if step.wrapper_digest is not None and (
            not installed or wrapper_digest(installed) != step.wrapper_digest):
        found.append(f"the zfs wrapper in {lib} is missing or not this setup's version")
    return found


def problems(step: RootStep) -> list[str]:
    """What the root script has not done (yet), checked as the user; empty when done."""
    found = []
    folder = _folder_problem(step.key_dir)
    if folder:
        found.append(folder)
    try:
        current = Path(step.definition_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        found.append(f"definition {step.definition_path} is missing")
    else:
        if current != step.definition_text:
            found.append(f"definition {step.definition_path} differs from this setup's")
    for what, path in (("agent log", step.agent_log), ("log file", step.service_log),
                       ("state folder", step.state_folder)):
        if path and not os.access(path, os.W_OK):
            found.append(f"{what} {path} is missing or not writable by {step.user}")
    if step.rights == "sudo":
        proc = _check(["sudo", "-n", "-l", step.zfs_path])
        if isinstance(proc, str):
            found.append(proc)
        elif proc.returncode != 0:
            found.append(f"{step.user} may not run {step.zfs_path} through sudo without a "
                         "password")
        found += _wrapper_problems(step)
    else:
        for ds in step.datasets:
            allowed = _allowed(step.zfs_path, ds, step.user)
            if isinstance(allowed, str):
                found.append(allowed)
                continue
            missing = set(step.permissions) - allowed
            if missing:
                found.append(f"zfs allow on {ds} lacks {','.join(sorted(missing))} for "
                             f"{step.user}")
    return found
