"""`zfsrepl setup -i`: the questions, in the manual's order, each checked as answered.

A refused answer says why and is asked again; the default is in brackets and taken
by an empty answer. The destination is checked while asking (the user's login,
whether zfsrepl is there, each destination parent), so a mistake is caught at the
question that caused it. The result is a `Service`: the response file is its TOML.
"""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar

from zfsrepl import config
from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.errors import UsageError, ZfsreplError
from zfsrepl.host import Host, LocalHost
from zfsrepl.naming import valid_name_component
from zfsrepl.setup.probe import ZfsProbe, probe
from zfsrepl.setup.remote import Destination, dataset_state

T = TypeVar("T")
MAX_FILESYSTEMS = 1000


class Console(Protocol):
    def say(self, text: str) -> None: ...

    def ask(self, prompt: str) -> str: ...


class TerminalConsole:
    def say(self, text: str) -> None:
        print(text, flush=True)

    def ask(self, prompt: str) -> str:
        try:
            return input(prompt)
        except EOFError:
            raise UsageError("setup: no answer (end of input)") from None


class Invalid(Exception):
    """An answer that is refused; the message says why."""


def ask(console: Console, question: str, default: str | None,
        convert: Callable[[str], T]) -> T:
    """Ask until `convert` accepts the answer (an empty answer takes the default)."""
    prompt = f"{question} [{default}]: " if default else f"{question}: "
    while True:
        answer = console.ask(prompt).strip()
        if not answer and default:
            answer = default
        try:
            return convert(answer)
        except Invalid as exc:
            console.say(f"Refused: {exc}. Please answer again.")


# ---------------------------------------------------------------------------- answers


def nonempty(value: str) -> str:
    if not value:
        raise Invalid("an answer is needed")
    return value


def host_name(value: str) -> str:
    nonempty(value)
    if not config._HOST_RE.match(value) or value.startswith("-"):
        raise Invalid(f"{value!r} is not a host name or address")
    return value


def destination_host(value: str, must_resolve: bool = True) -> str:
    """A destination host name; `must_resolve` False where ssh connects to a known
    address instead (the name then only labels the snapshots)."""
    host_name(value)
    if not valid_name_component(value) or "@" in value:
        raise Invalid(f"{value!r} cannot be part of a snapshot name (letters, digits, '_-.:')")
    if not must_resolve:
        return value
    try:
        socket.getaddrinfo(value, None)
    except (OSError, UnicodeError):
        raise Invalid(f"{value!r} does not resolve: add it to DNS or /etc/hosts") from None
    return value


def user_name(value: str) -> str:
    nonempty(value)
    if not config._USER_RE.match(value) or not valid_name_component(value):
        raise Invalid(f"{value!r} is not a user name (letters, digits, '_.-')")
    return value


def filesystem_name(value: str) -> str:
    nonempty(value)
    # The definition's own rule, so the wizard and the loader never disagree.
    problem = config._dataset_problem(value)
    if problem:
        raise Invalid(f"{value!r} {problem}")
    return value


def count(low: int, high: int | None = None) -> Callable[[str], int]:
    def convert(value: str) -> int:
        if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
            bound = f"a whole number from {low}" + (f" to {high}" if high else " on")
            raise Invalid(f"{value!r} is not {bound}")
        return int(value)
    return convert


def hook_path(value: str) -> str:
    nonempty(value)
    if value == "none":
        return value
    if not value.startswith("/"):
        raise Invalid(f"{value!r} is not a full path (or none); no arguments can be given")
    if not os.path.isfile(value) or not os.access(value, os.X_OK):
        raise Invalid(f"{value} is not an executable file")
    return value


def service_name(value: str) -> str:
    nonempty(value)
    if not config.SERVICE_NAME_RE.match(value):
        raise Invalid(f"{value!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a "
                      "letter or digit")
    return value


def yes_no(value: str) -> bool:
    if value.lower() in ("y", "yes"):
        return True
    if value.lower() in ("n", "no"):
        return False
    raise Invalid("answer y or n")


# ---------------------------------------------------------------------------- the wizard


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def key_path(config_dir: Path, user: str, name: str) -> str:
    return str(config_dir / "keys" / user / name)


@dataclass
class WizardResult:
    service: Service
    response_file: Path
    destination: Destination
    go: bool


@dataclass
class Wizard:
    console: Console
    config_dir: Path
    connect: Callable[[Endpoint], Destination]
    source_host: Host = field(default_factory=LocalHost)
    probe_source: Callable[[], ZfsProbe] = probe
    _destination: Destination | None = None

    def run(self) -> WizardResult:
        c = self.console
        response = ask(c, "Enter the file name of the response file you want to create",
                       None, self.response_file)
        old = self._previous(response)
        src_probe = self.probe_source()
        src_zfs = src_probe.zfs_command
        source_host = ask(c, "Enter the source system name (logical alias name for a "
                             "cluster) which will send the snapshots",
                          old.source.host if old else socket.gethostname(), host_name)
        dest, endpoint, dst_zfs = self._destination_login(old)
        n = ask(c, "How many filesystems do you want to replicate with this service",
                str(len(old.filesystems)) if old else "1", count(1, MAX_FILESYSTEMS))
        pairs: list[FilesystemPair] = []
        for i in range(1, n + 1):
            prev = old.filesystems[i - 1] if old and i <= len(old.filesystems) else None
            src = ask(c, f"Enter source zfs filesystem[{i}] you want to replicate",
                      prev.source if prev else None,
                      self._source_fs(src_zfs, pairs))
            dst = ask(c, f"Enter destination zfs filesystem[{i}]",
                      prev.destination if prev else None,
                      self._destination_fs(dest, dst_zfs, pairs))
            pairs.append(FilesystemPair(src, dst))
        interval = ask(c, "Enter the replication interval in seconds",
                       str(old.interval) if old else "60", count(1))
        retries = ask(c, "Enter the number of retries before failing the cycle or the service",
                      str(old.retries) if old else "1", count(1))
        keep = ask(c, "Enter the number of snapshots to keep before deleting them",
                   str(old.keep_source) if old else "1", count(1))
        pre = ask(c, "Enter the full path to the script to run before the snapshot is taken "
                     "(none if no script should be run)",
                  (old.pre_snapshot or "none") if old else "none", hook_path)
        post = ask(c, "Enter the full path to the script to run after the snapshot is taken "
                      "(none if no script should be run)",
                   (old.post_snapshot or "none") if old else "none", hook_path)
        name = ask(c, "Enter the service name which should be created",
                   old.name if old else None, service_name)
        me = current_user()
        svc = Service(
            name=name,
            source=Endpoint(host=source_host, user=me, zfs_command=src_zfs),
            destination=replace(endpoint, identity=key_path(self.config_dir, me, name),
                                zfs_command=dst_zfs),
            filesystems=tuple(pairs), interval=interval, retries=retries,
            keep_source=keep, keep_destination=keep,
            pre_snapshot=None if pre == "none" else pre,
            post_snapshot=None if post == "none" else post,
        )
        if old is not None:
            svc = carried_over(old, svc)
        # The loader's full validation, so the response file always loads back.
        svc = config.reloaded(svc, response)
        for line in summary(svc, response):
            c.say(line)
        go = ask(c, "Do you want to make changes now (y/n)?", "n", yes_no)
        return WizardResult(svc, response, dest, go)

    # -- single questions --------------------------------------------------------------

    def response_file(self, value: str) -> Path:
        nonempty(value)
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        if path.is_dir():
            raise Invalid(f"{path} is a folder")
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise Invalid(f"cannot write into {path.parent}")
        if path.exists():
            try:
                config.load_service_file(path)
            except ZfsreplError as exc:
                raise Invalid(f"{path} exists and is not a service definition ({exc}); "
                              "choose another name") from None
        return path

    def _previous(self, response: Path) -> Service | None:
        if not response.exists():
            return None
        old = config.load_service_file(response)
        self.console.say(f"{response} exists: its answers are the defaults.")
        return old

    def _destination_login(self, old: Service | None) -> tuple[Destination, Endpoint, str]:
        """Ask host and user until a login there works and zfsrepl is installed."""
        c = self.console
        host_default = old.destination.host if old else None
        user_default = old.destination.user if old else None
        # the kept host name logs in through its kept address (carried_endpoint)
        by_address = old.destination.host if old and old.destination.address else None
        while True:
            host = ask(c, "Enter the destination system name (logical alias name for a "
                          "cluster) which will receive the snapshots", host_default,
                       lambda v: destination_host(v, must_resolve=v != by_address))
            user = ask(c, "Enter the user name on the destination system which will receive "
                          "the snapshots", user_default, user_name)
            c.say("The user id on the destination system will be checked now.")
            c.say("Please enter the password of the destination user if asked...")
            endpoint = Endpoint(host=host, user=user)
            if old is not None:
                endpoint = carried_endpoint(old.destination, endpoint)
            dest: Destination | None = None
            try:
                dest = self.connect(endpoint)
                dst_probe = dest.probe()
                dest.zfsrepl  # noqa: B018 - raises if zfsrepl is not installed there
            except ZfsreplError as exc:
                if dest is not None:
                    dest.close()
                c.say(f"Refused: {exc}. Please answer again.")
                host_default, user_default = host, user
                continue
            self._destination = dest
            return dest, endpoint, dst_probe.zfs_command

    def _source_fs(self, zfs: str, pairs: list[FilesystemPair]) -> Callable[[str], str]:
        def convert(value: str) -> str:
            filesystem_name(value)
            if any(p.source == value for p in pairs):
                raise Invalid(f"{value} is replicated by this service already")
            state = dataset_state(self.source_host, Endpoint("localhost", "x",
                                                             zfs_command=zfs).zfs_argv, value)
            if state == "missing":
                raise Invalid(f"{value} does not exist on this system")
            if state is not None:
                self.console.say(f"Note: cannot check {value} yet ({state}); the final check "
                                 "will.")
            return value
        return convert

    def _destination_fs(self, dest: Destination, zfs: str,
                        pairs: list[FilesystemPair]) -> Callable[[str], str]:
        def convert(value: str) -> str:
            filesystem_name(value)
            if any(p.destination == value for p in pairs):
                raise Invalid(f"{value} is the destination of another filesystem already")
            parent = value.rsplit("/", 1)[0]
            self.console.say(f"Going to check if the parent filesystem {parent} of the "
                             f"destination filesystem {value} exists.")
            state = dest.parent_state(Endpoint("x", "x", zfs_command=zfs).zfs_argv, parent)
            if state == "missing":
                raise Invalid(f"{parent} does not exist on {dest.label}: create it there "
                              f"first (zfs create -p {parent})")
            if state is not None:
                self.console.say(f"Note: cannot check {parent} yet ({state}); the final "
                                 "check will.")
            return value
        return convert


def carried_endpoint(old: Endpoint, new: Endpoint) -> Endpoint:
    """`new` with the ssh settings the wizard does not ask kept from `old`: the port and
    the ssh options, and the address ssh connects to only while the host name is the same
    (a cluster's logical name and its floating address go together)."""
    return replace(new, port=old.port, ssh_options=old.ssh_options,
                   identity=new.identity or old.identity,
                   address=old.address if new.host == old.host else None)


def carried_over(old: Service, new: Service) -> Service:
    """The wizard's answers (`new`) with everything it does not ask kept from the
    response file it started from: a run that changes one answer loses no setting.

    The tuning and hook keys, the ssh settings of both sides (carried_endpoint), the
    failover mountpoint of a filesystem pair that stays, and a destination `keep` of its
    own as long as the answer to keep is the one the file had."""
    mounts = {(p.source, p.destination): p.mountpoint for p in old.filesystems}
    pairs = tuple(replace(p, mountpoint=mounts.get((p.source, p.destination)))
                  for p in new.filesystems)
    same_keep = new.keep_source == old.keep_source
    return replace(
        old, name=new.name, source=carried_endpoint(old.source, new.source),
        destination=carried_endpoint(old.destination, new.destination), filesystems=pairs,
        interval=new.interval, retries=new.retries, keep_source=new.keep_source,
        keep_destination=old.keep_destination if same_keep else new.keep_destination,
        pre_snapshot=new.pre_snapshot, post_snapshot=new.post_snapshot, role=new.role,
        path=None)


def summary(svc: Service, response: Path) -> list[str]:
    lines = [
        "",
        f"Summary of the replication service {svc.name}:",
        f"  source:        {svc.source.user}@{svc.source.host} (zfs runs as: "
        f"{svc.source.zfs_command})",
        f"  destination:   {svc.destination.user}@{svc.destination.host} (zfs runs as: "
        f"{svc.destination.zfs_command})",
    ]
    lines += [f"  filesystem:    {p.source} -> {p.destination}" for p in svc.filesystems]
    lines += [
        f"  interval:      {svc.interval} s, retries: {svc.retries}, snapshots kept: "
        f"{svc.keep_source}",
        f"  pre-snapshot:  {svc.pre_snapshot or 'none'}",
        f"  post-snapshot: {svc.post_snapshot or 'none'}",
        f"  key:           {svc.destination.identity}",
        f"  response file: {response}",
        "",
    ]
    return lines
