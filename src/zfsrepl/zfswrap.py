"""zfs through sudo, limited to what zfsrepl runs: the stand-in for zfs that root owns.

Where a host's ZFS has no working `zfs allow` (zfs-fuse, Solaris 10), setup's root
script installs this module (with the few it imports) in INSTALL_DIR, a launcher at
WRAPPER_PATH that runs it on the system's Python in isolated mode, and a sudo rule that
lets the service's user run that launcher, and nothing else, as root. The definition's
zfs_command is then `sudo -n WRAPPER_PATH`.

For each service the root script also writes what the user may touch into
RULES_DIR/USER/SERVICE.SIDE.json (root's, like the folders above it): the service's
filesystems on that side and the names of its snapshots. A request runs only if it is
one of the argument forms zfsrepl sends on that side, on those filesystems:

    (nothing), allow                       the capability probes: usage texts
    get / list / holds                     the listings a cycle and the agent make
    send [-w | -c -L -e] [-i|-I BASE] FS@S source: one filesystem's stream (also -nvP)
    snapshot, bookmark, destroy FS#B       source: the service's own names
    set / inherit zfsrepl:maintenance:...  source: the cluster's maintenance mark
    receive -u [-F] [-s] [-o readonly=on]  destination: the stream's first record is
      [-x PROP]... FS, receive -A FS         checked, replication streams refused, and
                                             where zfs has -x the properties that reach
                                             root excluded; -F only over the service's own
    destroy / rollback FS@S, hold, release the service's own snapshots and hold tag
    set zfsrepl:role=..., readonly=on|off  destination: the failover's marks
    mount, unmount FS

A recursive service's rule (`"recursive": true`: its one filesystem is a parent, every
filesystem below it is the service's too) adds, for that parent only:

    snapshot -r FS@S                       source: the whole subtree at once
    send -R [-i|-I FS@BASE] FS@S           source: the subtree as one replication stream
    destroy -r FS@S                        both sides: the service's own name
    receive -u FS                          destination, in place of the forms above: only
                                           a replication stream, checked as the agent does

Everything else (other properties, mountpoint among them; other datasets; options
zfsrepl never gives) is refused with one line on standard error naming what, exit
EXIT_REFUSED, before anything runs. zfs runs with a clean environment, by the absolute
path the root script found, with an argv list: never a shell.

The forms the agent accepts are checked by the agent's own grammar (agent.decide) with
the service's destination filesystems; this module adds the other side's forms and the
ones zfsrepl runs locally. Standard library only, bare Python 3.9: it runs as root from
its own copy, importing nothing but the agent, naming, capabilities, streamcheck, record
and the typed zfs errors (zfserrors, errors).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from types import FrameType
from typing import Sequence, Union

from zfsrepl import agent, record, streamcheck
from zfsrepl.naming import SnapshotNaming

INSTALL_DIR = "/usr/local/libexec/zfsrepl"
WRAPPER_PATH = f"{INSTALL_DIR}/zfs"  # named zfs: it stands in for zfs in zfs_command
LIB_DIR = f"{INSTALL_DIR}/lib"
RULES_DIR = "/etc/zfsrepl-sudo"
# What the root script copies into LIB_DIR/zfsrepl: this module and what it imports.
MODULES = ("__init__.py", "agent.py", "capabilities.py", "errors.py", "naming.py",
           "record.py", "streamcheck.py", "zfserrors.py", "zfswrap.py")
EXIT_REFUSED = agent.EXIT_REFUSED
# zfs runs with this environment and nothing the user had (sudo resets most of it; this
# resets the rest).
ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
SIDES = ("source", "destination")
# Read-only listings may name any property of an own filesystem: reading reaches nothing.
_PROPERTY_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,255}$")
_DATASET_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_.:\- ]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# The user property of the cluster's maintenance mark (cluster_state.property_name).
MAINTENANCE_PREFIX = "zfsrepl:maintenance:"
# zfsrepl:role values (diagnosis.ROLE_TAKEN_OVER, ROLE_REPLICA)
ROLES = ("source", "destination")


@dataclass(frozen=True)
class Rule:
    """What one service may do on one side, from RULES_DIR/USER/SERVICE.SIDE.json."""

    service: str
    side: str  # "source" or "destination"
    filesystems: frozenset[str]
    naming: SnapshotNaming
    recursive: bool = False

    def policy(self) -> agent.Policy:
        return agent.Policy(service=self.service, filesystems=self.filesystems,
                            naming=self.naming, zfs_argv=("zfs",), recursive=self.recursive)

    def owns(self, name: str) -> bool:
        return self.policy().owns(name)

    @property
    def maintenance_property(self) -> str:
        return MAINTENANCE_PREFIX + "".join(f":{c.lower()}" if "A" <= c <= "Z" else c
                                            for c in self.service)

    def to_json(self) -> str:
        data: dict[str, object] = {
            "service": self.service, "side": self.side, "filesystems": sorted(self.filesystems),
            "source_user": self.naming.source_user,
            "destination_user": self.naming.destination_user,
            "destination_host": self.naming.destination_host}
        if self.recursive:
            data["recursive"] = True
        return json.dumps(data, indent=1, sort_keys=True) + "\n"


@dataclass(frozen=True)
class Run:
    """Run zfs with `args`."""

    args: tuple[str, ...]
    stream: bool = False  # a receive: its stream is checked, properties excluded
    replication: bool = False  # a recursive service's receive: only a `send -R` stream
    # a receive the agent's checks must look at first (the reach of -F, an incremental
    # into an existing filesystem): agent.inspect_args / agent.judge
    check: agent.RunZfs | None = None
    rule: Rule | None = None


@dataclass(frozen=True)
class Refused:
    reason: str


Decision = Union[Run, Refused]


# ---------------------------------------------------------------------------- the rules


def dataset_problem(name: str) -> str | None:
    """Why `name` is not a filesystem name a rule may hold (None: it is one)."""
    parts = name.split("/")
    if len(parts) < 2 or len(name) > 255:
        return "must be POOL/NAME, at most 255 characters"
    for part in parts:
        if part in (".", "..") or not _DATASET_COMPONENT_RE.fullmatch(part):
            return f"component {part!r} may only hold letters, digits and '_-.: '"
    return None


def parse_rule(text: str, where: str) -> Rule | str:
    """The rule in `text` (a rules file's JSON), or why it is none."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return f"{where}: not JSON ({exc})"
    keys = {"service", "side", "filesystems", "source_user", "destination_user",
            "destination_host"}
    if not isinstance(data, dict) or set(data) - {"recursive"} != keys:
        return f"{where}: must hold exactly {', '.join(sorted(keys))} (and recursive)"
    recursive = data.pop("recursive", False)
    words = [data[k] for k in sorted(keys - {"filesystems"})]
    if not all(isinstance(w, str) and w and not _CONTROL_RE.search(w) for w in words):
        return f"{where}: service, side and the user and host names must be plain text"
    if data["side"] not in SIDES:
        return f"{where}: side must be source or destination, not {data['side']!r}"
    filesystems = data["filesystems"]
    if not isinstance(filesystems, list) or not filesystems or \
            not all(isinstance(fs, str) for fs in filesystems):
        return f"{where}: filesystems must be a list of filesystem names"
    for fs in filesystems:
        problem = dataset_problem(fs)
        if problem:
            return f"{where}: filesystem {fs!r} {problem}"
    if not isinstance(recursive, bool) or (recursive and len(filesystems) != 1):
        return f"{where}: recursive must be true or false, true only with one filesystem"
    return Rule(service=data["service"], side=data["side"],
                filesystems=frozenset(filesystems),
                naming=SnapshotNaming(data["source_user"], data["destination_user"],
                                      data["destination_host"]), recursive=recursive)


def _root_only(path: str, st: os.stat_result, owner: int, kind: int) -> str | None:
    if stat.S_IFMT(st.st_mode) != kind:
        return f"{path} is not a {'folder' if kind == stat.S_IFDIR else 'regular file'}"
    if st.st_uid != owner or st.st_mode & 0o022:
        return f"{path} must be owned by root and writable by nobody else"
    return None


def load_rules(user: str, rules_dir: str = RULES_DIR, owner: int = 0) -> list[Rule] | str:
    """The rules of `user`, or why they cannot be trusted (then nothing runs)."""
    folder = os.path.join(rules_dir, user)
    rules: list[Rule] = []
    for path, kind in ((rules_dir, stat.S_IFDIR), (folder, stat.S_IFDIR)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return f"no zfsrepl service gives {user} zfs rights here ({path} is missing)"
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror}"
        problem = _root_only(path, st, owner, kind)
        if problem:
            return problem
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror}"
        with os.fdopen(fd, "rb") as f:
            problem = _root_only(path, os.fstat(f.fileno()), owner, stat.S_IFREG)
            if problem:
                return problem
            try:
                text = f.read(1 << 20).decode("utf-8")
            except UnicodeDecodeError:
                return f"{path} is not UTF-8 text"
        rule = parse_rule(text, path)
        if isinstance(rule, str):
            return rule
        rules.append(rule)
    if not rules:
        return f"no zfsrepl service gives {user} zfs rights here ({folder} is empty)"
    return rules


# ---------------------------------------------------------------------------- deciding


def decide(args: Sequence[str], rules: Sequence[Rule], user: str = "this user") -> Decision:
    """Whether zfs may run with `args` for a user with `rules`: pure."""
    args = list(args)
    if sum(len(a.encode("utf-8", "surrogateescape")) + 1 for a in args) > \
            agent.MAX_COMMAND_BYTES:
        return Refused(f"the arguments are longer than {agent.MAX_COMMAND_BYTES} bytes")
    bad = next((a for a in args if _CONTROL_RE.search(a) or a == "|"), None)
    if bad is not None:
        return Refused(f"argument {bad!r} holds control characters or is a pipe")
    if not args or args == ["allow"]:
        return Run(tuple(args))  # usage texts: what this ZFS offers; change nothing
    refusals: list[tuple[Rule, Refused]] = []
    for rule in rules:
        found = _decide_for(args, rule)
        if isinstance(found, Run):
            return found
        refusals.append((rule, found))
    named = _datasets_named(args)
    for rule, refusal in refusals:
        if any(rule.owns(name) for name in named):
            return refusal  # the service the request is about says why
    if len(refusals) == 1:
        return refusals[0][1]
    services = ", ".join(sorted({r.service for r in rules})) or "none"
    return Refused(f"zfs {shlex.join(args)[:200]} is not something zfsrepl runs on the "
                   f"filesystems of {user}'s services here ({services})")


def _datasets_named(args: list[str]) -> set[str]:
    return {re.split("[@#]", a, maxsplit=1)[0] for a in args
            if "/" in a and not a.startswith("-") and "=" not in a}


def _decide_for(args: list[str], rule: Rule) -> Decision:
    sub = args[0]
    own = _OWN_FORMS.get(sub)
    if own is not None:
        return own(args, rule)
    if sub == "receive" and rule.side != "destination":
        return Refused(f"zfs receive is not allowed on the source side of service "
                       f"{rule.service}: a source only sends")
    if sub == "receive":
        args = _without_exclusions(args)
    decision = agent.decide("zfs " + shlex.join(args), rule.policy())
    if isinstance(decision, agent.Refused):
        return Refused(decision.reason)
    if not isinstance(decision, agent.RunZfs):
        return Refused(f"zfs {sub} is not allowed for service {rule.service}")
    check = record.replace(decision, changes=())  # the interlock guards against
    # the other host; the local user ends takeovers and runs failbacks
    return Run(decision.args, stream=decision.stream,
               check=check if agent.inspect_args(check) else None, rule=rule,
               replication=decision.replication is not None)


def _without_exclusions(args: list[str]) -> list[str]:
    """receive with the agent's `-x PROP` pairs taken out (added back before it runs)."""
    rest = [args[0]]
    i = 1
    while args[i:i + 1] == ["-x"] and i + 1 < len(args) and \
            args[i + 1] in agent.EXCLUDED_PROPERTIES:
        i += 2
    rest += args[i:]
    return rest


def _own_fs(name: str, rule: Rule) -> Refused | None:
    if not rule.owns(name):
        return Refused(f"{name!r} is not a {rule.side} filesystem of service {rule.service}")
    return None


def _own_name(name: str, sep: str, rule: Rule, what: str) -> Refused | None:
    fs, found, snap = name.partition(sep)
    if not found:
        return Refused(f"{what} takes {'FS@SNAP' if sep == '@' else 'FS#BOOKMARK'}, "
                       f"not {name!r}")
    refused = _own_fs(fs, rule)
    if refused:
        return refused
    if not rule.naming.is_ours(snap):
        return Refused(f"{snap!r} is not a name of service {rule.service} (its snapshots "
                       f"are named {rule.naming.prefix}N)")
    return None


def _snapshot(args: list[str], rule: Rule) -> Decision:
    if rule.recursive and args[1:2] == ["-r"] and len(args) == 3:
        # the whole subtree at once: only from the parent
        return _parent_snapshot(args[2], rule, "snapshot -r") or \
            _own_name(args[2], "@", rule, "snapshot") or Run(tuple(args))
    if rule.side != "source" or len(args) < 2:
        return Refused("zfs snapshot is allowed only on the source, as: snapshot FS@SNAP...")
    for name in args[1:]:
        refused = _own_name(name, "@", rule, "snapshot")
        if refused:
            return refused
    return Run(tuple(args))


def _bookmark(args: list[str], rule: Rule) -> Decision:
    usage = "zfs bookmark is allowed only on the source, as: bookmark FS@SNAP FS#SNAP"
    if rule.side != "source" or len(args) != 3:
        return Refused(usage)
    refused = _own_name(args[1], "@", rule, "bookmark") or \
        _own_name(args[2], "#", rule, "bookmark")
    if refused:
        return refused
    if args[1].replace("@", "#", 1) != args[2]:
        return Refused(usage)
    return Run(tuple(args))


def _destroy(args: list[str], rule: Rule) -> Decision:
    # bookmarks here (the source's); snapshots through the agent's grammar
    if len(args) == 2 and "#" in args[1] and not args[1].startswith("-"):
        if rule.side != "source":
            return Refused("zfs destroy FS#BOOKMARK is allowed only on the source")
        return _own_name(args[1], "#", rule, "destroy") or Run(tuple(args))
    decision = agent.decide("zfs " + shlex.join(args), rule.policy())
    if isinstance(decision, agent.RunZfs):
        return Run(decision.args)
    return Refused(decision.reason if isinstance(decision, agent.Refused)
                   else "zfs destroy is allowed only as: destroy FS@SNAP")


def _snapshot_of_own(name: str, rule: Rule, sep: str = "@") -> Refused | None:
    fs, found, snap = name.partition(sep)
    if not found or not snap or _DATASET_COMPONENT_RE.fullmatch(snap) is None:
        return Refused(f"{name!r} is not a snapshot (FS{sep}NAME)")
    return _own_fs(fs, rule)


def _parent_snapshot(name: str, rule: Rule, what: str) -> Refused | None:
    if rule.side != "source" or name.partition("@")[0] not in rule.filesystems:
        return Refused(f"zfs {what} is allowed only on the source, of the parent "
                       f"{' or '.join(sorted(rule.filesystems))} of service {rule.service}")
    return None


def _send_subtree(args: list[str], rule: Rule) -> Decision:
    """send -R [-i|-I PARENT@BASE] PARENT@SNAP: the subtree of a recursive service."""
    rest = args[2:]
    if len(rest) == 3 and rest[0] in ("-i", "-I"):
        if rest[1].partition("@")[0] != rest[2].partition("@")[0]:
            return Refused(f"an incremental send's base {rest[1]!r} must be of the same "
                           f"filesystem as {rest[2]!r}")
        refused = _parent_snapshot(rest[1], rule, "send -R") or \
            _snapshot_of_own(rest[1], rule)
        if refused:
            return refused
        rest = rest[2:]
    if len(rest) != 1:
        return Refused("zfs send -R is allowed only as: send -R [-i|-I FS@BASE] FS@SNAP")
    return _parent_snapshot(rest[0], rule, "send -R") or _snapshot_of_own(rest[0], rule) \
        or Run(tuple(args))


def _send(args: list[str], rule: Rule) -> Decision:
    if rule.recursive and args[1:2] == ["-R"]:
        return _send_subtree(args, rule)
    usage = ("zfs send is allowed only on the source, as: send [-nvP] [-w | -c -L -e] "
             "[-i FS@BASE | -I FS@BASE | -i FS#BASE] FS@SNAP")
    if rule.side != "source":
        return Refused(usage)
    rest = args[1:]
    if rest[:1] == ["-t"]:
        # A token names the dataset inside an encoded list this cannot check: refused,
        # and the cycle (which reads "resume token" as a token that is no good) sends
        # the stream again from its start.
        return Refused("zfs send -t (a resume token) is not allowed through sudo: its "
                       "dataset cannot be checked; the transfer starts again instead")
    if rest[:1] == ["-nvP"]:
        rest = rest[1:]
    if rest[:1] == ["-w"]:
        rest = rest[1:]
    elif rest[:3] == ["-c", "-L", "-e"]:
        rest = rest[3:]
    if len(rest) == 3 and rest[0] in ("-i", "-I"):
        sep = "#" if "#" in rest[1] and rest[0] == "-i" else "@"
        refused = _snapshot_of_own(rest[1], rule, sep)
        if refused:
            return refused
        if rest[1].partition(sep)[0] != rest[2].partition("@")[0]:
            return Refused(f"an incremental send's base {rest[1]!r} must be of the same "
                           f"filesystem as {rest[2]!r}")
        rest = rest[2:]
    if len(rest) != 1:
        return Refused(usage)
    return _snapshot_of_own(rest[0], rule) or Run(tuple(args))


def _set(args: list[str], rule: Rule) -> Decision:
    usage = (f"zfs set is allowed only for {rule.maintenance_property} (source), "
             "zfsrepl:role and readonly (destination), as: set PROP=VALUE FS; no other "
             "property: some (mountpoint, sharenfs, setuid ...) reach root")
    if len(args) != 3:
        return Refused(usage)
    prop, sep, value = args[1].partition("=")
    if not sep:
        return Refused(usage)
    if rule.side == "source":
        allowed = prop == rule.maintenance_property
    else:
        allowed = (prop == agent.ROLE_PROPERTY and value in ROLES) or \
            (prop == "readonly" and value in ("on", "off"))
    if not allowed:
        return Refused(f"zfs set {args[1][:100]!r} is not allowed on the {rule.side} of "
                       f"service {rule.service}; {usage}")
    return _own_fs(args[2], rule) or Run(tuple(args))


def _inherit(args: list[str], rule: Rule) -> Decision:
    if rule.side != "source" or len(args) != 3 or args[1] != rule.maintenance_property:
        return Refused(f"zfs inherit is allowed only on the source, as: inherit "
                       f"{rule.maintenance_property} FS")
    return _own_fs(args[2], rule) or Run(tuple(args))


def _get(args: list[str], rule: Rule) -> Decision:
    # reads of the service's own filesystems' properties: the capability probes, the
    # failover's look at local properties, skip_unchanged's `written`
    heads = (["get", "-Hp", "-o", "property,value"],
             ["get", "-H", "-s", "local", "-o", "name,value"],
             ["get", "-H", "-p", "-o", "name,value"])
    for head in heads:
        if args[:len(head)] == head and len(args) > len(head) + 1:
            props = args[len(head)].split(",")
            if not all(_PROPERTY_RE.fullmatch(p) for p in props):
                return Refused(f"zfs get: {args[len(head)]!r} is not a list of properties")
            for fs in args[len(head) + 1:]:
                refused = _own_fs(fs, rule)
                if refused:
                    return refused
            return Run(tuple(args))
    decision = agent.decide("zfs " + shlex.join(args), rule.policy())  # the listing
    if isinstance(decision, agent.RunZfs):
        return Run(decision.args)
    return Refused(decision.reason if isinstance(decision, agent.Refused)
                   else "zfs get is not allowed so")


def _list(args: list[str], rule: Rule) -> Decision:
    # the agent's look before a change: `list -H -o name,zfsrepl:role [-r -t ...] FS...`
    head = ["list", "-H", "-o", f"name,{agent.ROLE_PROPERTY}"]
    if args[:len(head)] == head:
        names = args[len(head):]
        if names[:3] == ["-r", "-t", "filesystem,volume"]:
            names = names[3:]
        if not names:
            return Refused(f"zfs list: {' '.join(head)} needs filesystems")
        for fs in names:
            refused = _own_fs(fs, rule)
            if refused:
                return refused
        return Run(tuple(args))
    decision = agent.decide("zfs " + shlex.join(args), rule.policy())
    if isinstance(decision, agent.RunZfs):
        return Run(decision.args)
    return Refused(decision.reason if isinstance(decision, agent.Refused)
                   else "zfs list is not allowed so")


def _mount(args: list[str], rule: Rule) -> Decision:
    if len(args) != 2:
        return Refused(f"zfs {args[0]} is allowed only as: {args[0]} FS (no options)")
    return _own_fs(args[1], rule) or Run(tuple(args))


_OWN_FORMS = {"snapshot": _snapshot, "bookmark": _bookmark, "destroy": _destroy,
              "send": _send, "set": _set, "inherit": _inherit, "get": _get, "list": _list,
              "mount": _mount, "unmount": _mount}


# ---------------------------------------------------------------------------- running


def refuse(reason: str) -> int:
    print(f"zfsrepl zfs wrapper: refused: {reason}", file=sys.stderr)
    return EXIT_REFUSED


def invoking_user() -> str | None:
    """Who ran sudo: its SUDO_UID (which sudo sets itself), None for root itself."""
    if os.geteuid() != 0:
        return ""  # not through sudo: no rights to give
    uid = os.environ.get("SUDO_UID", "0" if os.getuid() == 0 else "")
    if not (uid.isascii() and uid.isdigit()):
        return ""  # sudo always sets it: something else started this
    if int(uid) == 0:
        return None
    try:
        return pwd.getpwuid(int(uid)).pw_name
    except KeyError:
        return f"#{uid}"


class _Stopped(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def receive(argv: list[str], decision: Run | None = None,
            existing: frozenset[str] = frozenset(), excluded: bool = False) -> int:
    """Run a receive after a look at the stream's first record (as the agent does);
    a recursive service's, after a look at its list of filesystems too."""
    run = decision.check if decision is not None and decision.check is not None \
        else agent.RunZfs(tuple(argv[1:]))
    header = agent._read_up_to(0, streamcheck.HEADER_BYTES)
    checked = agent.read_stream(header, 0, run, existing, excluded)
    if isinstance(checked, agent.Refused):
        return refuse(checked.reason)
    header = checked
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, _stop)
        problem = agent._start_receive(argv, sys.stderr.buffer, procs, header, 0)
        if problem:
            print(f"zfsrepl zfs wrapper: {problem}", file=sys.stderr)
            return agent.EXIT_CANNOT_RUN
        return agent._exit_code(procs[0].wait())
    except _Stopped as exc:
        return 128 + int(exc.args[0])
    finally:
        agent._end(procs)


def main(argv: Sequence[str], zfs: str, rules_dir: str = RULES_DIR) -> int:
    """The wrapper: `argv` as given to zfs; `zfs` the real program (the launcher's)."""
    user = invoking_user()
    os.environ.clear()
    os.environ.update(ENVIRONMENT)
    args = list(argv)
    if user is None:  # root may run zfs anyway: no rules to apply
        os.execve(zfs, [zfs, *args], ENVIRONMENT)
    if not user:
        return refuse("run this through sudo (sudo -n " + WRAPPER_PATH + " ...): it gives "
                      "zfs rights only to the users of zfsrepl services")
    rules = load_rules(user, rules_dir)
    if isinstance(rules, str):
        return refuse(rules)
    decision = decide(args, rules, user)
    if isinstance(decision, Refused):
        return refuse(decision.reason)
    run_args: tuple[str, ...] = decision.args
    existing: frozenset[str] = frozenset()
    if decision.check is not None and decision.rule is not None:
        look = agent.inspect_args(decision.check)
        if look:
            roles = agent.inspect([zfs], look)
            refused = roles if isinstance(roles, agent.Refused) else \
                agent.judge(decision.check, roles, decision.rule.policy())
            if refused:
                return refuse(refused.reason)
            existing = frozenset(roles) if isinstance(roles, dict) else frozenset()
    if decision.stream:
        excluded = agent.probe_exclusions([zfs])
        if excluded:
            run_args = agent.with_exclusions(run_args)
        return receive([zfs, *run_args], decision, existing, excluded)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(zfs, [zfs, *run_args], ENVIRONMENT)
    raise AssertionError("unreachable")  # pragma: no cover


def launcher(python: str, zfs: str) -> str:
    """The program at WRAPPER_PATH: isolated Python (no environment, no user site, not
    the script's folder), the copy in LIB_DIR, the real zfs found by the root script."""
    return "\n".join([
        f"#!{python} -I",
        "# zfsrepl: zfs through sudo, limited to what zfsrepl's services run (written by",
        "# the root script of `zfsrepl setup`; see zfsrepl/zfswrap.py below it).",
        "import sys",
        f"sys.path.insert(0, {LIB_DIR!r})",
        "from zfsrepl import zfswrap",
        f"sys.exit(zfswrap.main(sys.argv[1:], {zfs!r}))",
    ]) + "\n"
