"""Service definitions: dataclasses, TOML load/save and validation.

A service lives in `<config-dir>/services/<name>.toml`. Loading either returns a
fully valid `Service` or raises `ConfigError` naming the file, the key and what
was expected, so nothing ever runs on a bad definition.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
import stat
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from zfsrepl.capabilities import MAX_BUFFER, MAX_BUFFER_TOTAL, MIN_BUFFER, format_buffer_size
from zfsrepl.errors import ConfigError, UsageError
from zfsrepl.naming import SnapshotNaming, valid_name_component

DEFAULT_CONFIG_DIR = "/etc/zfsrepl"
DEFAULT_STATE_DIR = "/var/lib/zfsrepl"
DEFAULT_LOG_DIR = "/var/log/zfsrepl"

ROLE_RE = re.compile(r"^(source|destination)$")
LISTING_CACHE_RE = re.compile(r"^(auto|on|off)$")
SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_.:\[\]%-]{1,253}$")
_DATASET_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_.:\- ]+$")
_SSH_OPTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*=\S.*$")
# zfs_command reaches root (the sudo rule, the agent's forced command): the zfs program
# by name, or by a full path of plain characters, alone or after exactly "sudo -n".
_ZFS_COMMAND_RE = re.compile(r"^(?:zfs|(?:sudo -n )?(?:/(?!\.\.?/)[A-Za-z0-9_.+-]+)*/zfs)$")
ZFS_COMMAND_EXPECTED = ('"zfs", the full path of the zfs program (ending in /zfs, made of '
                        "letters, digits and '_.+-/'), or that path after \"sudo -n\"")
_REFUSED_SSH_OPTIONS = {
    **dict.fromkeys(("proxycommand", "localcommand", "permitlocalcommand", "knownhostscommand",
                     "match", "xauthlocation", "forwardx11", "forwardx11trusted"),
                    "runs a command on this host"),
    **dict.fromkeys(("pkcs11provider", "securitykeyprovider"), "loads a library into ssh"),
    "remotecommand": "replaces the command on the other host (the agent's forced command "
                     "decides what runs there)",
    **dict.fromkeys(("controlpath", "controlmaster", "controlpersist"),
                    "zfsrepl manages the shared connection itself"),
    "include": "reads more ssh configuration from a file",
    "forwardagent": "lends this host's keys to the other host",
}
# ProxyJump runs no command of the definition's choosing, only ssh itself through the
# named hosts (for a destination behind a bastion): it is kept, for plain host names.
_PROXY_JUMP_RE = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*@)?[A-Za-z0-9_][A-Za-z0-9_.:-]*"
                            r"(?::\d+)?(?:,(?:[A-Za-z0-9_][A-Za-z0-9_.-]*@)?"
                            r"[A-Za-z0-9_][A-Za-z0-9_.:-]*(?::\d+)?)*$")
SSH_OPTIONS_EXPECTED = 'options that only tune the connection, like "Compression=no"'


def ssh_option_problem(option: str) -> str | None:
    """Why an ssh -o option must not be used (it would run or load code), or None."""
    key, _, value = option.partition("=")
    reason = _REFUSED_SSH_OPTIONS.get(key.lower())
    if reason:
        return f"{key} {reason}"
    if key.lower() == "proxyjump" and not _PROXY_JUMP_RE.fullmatch(value):
        return "ProxyJump takes only [user@]host[:port] names, comma-separated"
    return None


@dataclass(frozen=True)
class Endpoint:
    """One side of a service: where it is and how to reach its ZFS."""

    host: str
    user: str
    port: int | None = None
    identity: str | None = None
    ssh_options: tuple[str, ...] = ()
    # How zfs is started on that host, e.g. "sudo -n /usr/sbin/zfs" where rights
    # come from a sudo rule instead of `zfs allow`.
    zfs_command: str = "zfs"
    # Where ssh connects when `host` is a logical name (a cluster's moving address):
    # `host` still names the snapshots and is the name its host keys are listed under.
    address: str | None = None

    @property
    def zfs_argv(self) -> list[str]:
        return shlex.split(self.zfs_command)


@dataclass(frozen=True)
class FilesystemPair:
    source: str
    destination: str
    # Where `zfsrepl failover` mounts the destination (None: where it inherits).
    mountpoint: str | None = None


@dataclass(frozen=True)
class Service:
    name: str
    source: Endpoint
    destination: Endpoint
    filesystems: tuple[FilesystemPair, ...]
    interval: int = 60
    retries: int = 1
    keep_source: int = 1
    keep_destination: int = 1
    pre_snapshot: str | None = None
    post_snapshot: str | None = None
    on_alarm: str | None = None
    hook_timeout: int = 300
    retry_delay: float = 5.0
    # "destination" marks the copy setup stores on the destination host (for failback).
    role: str = "source"
    # `zfsrepl run` serves its metrics over HTTP on this port when set.
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    # Bytes per second a stream may use (None: no limit), from e.g. "20M".
    bandwidth_limit: int | None = None
    # The stream crosses the network compressed ("zstd", "lz4", "auto": the better one
    # both hosts have) and goes through an mbuffer of this many bytes on the receiving
    # side (None: none); see transfer.choose_wire.
    wire_compression: str = "none"
    buffer: int | None = None
    # How many filesystems are sent at once (each stream one ssh session over the
    # cycle's one connection, so the destination sshd's MaxSessions bounds it).
    parallel: int = 1
    # Seconds a stream may move no byte (or a command of the cycle run) before it is cut
    # as stalled; see transfer.Watchdog and cycle.command_timeout.
    stall_timeout: int = 300
    # A filesystem with nothing written since its newest snapshot, which the destination
    # holds, gets no snapshot, send or destroy (unchanged.py); where ZFS has `written`.
    skip_unchanged: bool = False
    # One stream for a subtree (recursive.py): the one [[filesystem]] is a parent,
    # replicated with everything below it by `snapshot -r`, `send -R`, one receive.
    recursive: bool = False
    # The listing cache (listing_cache.py): "auto" from 1,000 snapshots on, "on" for any
    # size, "off" never; only where ZFS has snapshots_changed.
    listing_cache: str = "auto"
    path: Path | None = field(default=None, compare=False)

    @property
    def naming(self) -> SnapshotNaming:
        return SnapshotNaming(self.source.user, self.destination.user, self.destination.host)

    @property
    def is_destination_copy(self) -> bool:
        """The copy of the definition setup stores on the destination host: `runonce`
        from it replicates back (failback)."""
        return self.role == "destination"


# ---------------------------------------------------------------------------- paths


def config_dir(cli_value: str | None) -> Path:
    return Path(cli_value or os.environ.get("ZFSREPL_CONFIG_DIR") or DEFAULT_CONFIG_DIR)


def state_dir(cli_value: str | None) -> Path:
    return Path(cli_value or os.environ.get("ZFSREPL_STATE_DIR") or DEFAULT_STATE_DIR)


def log_dir(cli_value: str | None) -> Path:
    return Path(cli_value or os.environ.get("ZFSREPL_LOG_DIR") or DEFAULT_LOG_DIR)


def service_path(confdir: Path, name: str) -> Path:
    check_service_name(name)
    return confdir / "services" / f"{name}.toml"


def check_service_name(name: str) -> None:
    if not SERVICE_NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid service name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


def list_services(confdir: Path) -> list[str]:
    """The services defined; a file that cannot be one is skipped with a warning saying
    why (hidden files, an editor's, silently)."""
    from zfsrepl.log import logger  # here: only a listing needs it

    folder = confdir / "services"
    if not folder.is_dir():
        return []
    names = []
    for p in sorted(folder.glob("*.toml")):
        if p.name.startswith("."):
            continue
        if not SERVICE_NAME_RE.fullmatch(p.stem):
            logger.warning("%s: skipped: %r is not a service name (1-64 letters, digits, '_', "
                           "'.' or '-', starting with a letter or digit); rename the file",
                           p, p.stem)
        elif not p.is_file():  # a FIFO would block whoever reads it
            logger.warning("%s: skipped: not a regular file", p)
        else:
            names.append(p.stem)
    return names


def load_service(confdir: Path, name: str) -> Service:
    path = service_path(confdir, name)
    if not path.exists():
        known = list_services(confdir)
        hint = f"; defined services: {', '.join(known)}" if known else ""
        raise UsageError(f"no service {name!r}: {path} does not exist{hint}")
    return load_service_file(path, expected_name=name)


def _toml_module() -> types.ModuleType:
    # Imported on use: the remote agent runs on a bare Python 3.9 and reads no TOML.
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ImportError:
            raise UsageError(
                f"reading service definitions on Python {sys.version_info[0]}."
                f"{sys.version_info[1]} needs the tomli module (tomllib comes with 3.11): "
                "install python3-tomli, or `pip install tomli` where zfsrepl is installed") \
                from None
    return tomllib


def load_service_file(path: Path, expected_name: str | None = None) -> Service:
    try:
        # Non-blocking: opening a FIFO put there by mistake must not hang the command.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError(f"{path}: not a regular file; a service definition is a "
                                  "TOML file")
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    tomllib = _toml_module()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_service(data, path, expected_name)


# ---------------------------------------------------------------------------- validation

_TOP_KEYS = {
    "name", "interval", "retries", "keep", "keep_source", "keep_destination",
    "pre_snapshot", "post_snapshot", "on_alarm", "hook_timeout", "retry_delay",
    "source", "destination", "filesystem", "role", "metrics_port", "metrics_address",
    "bandwidth_limit", "wire_compression", "buffer", "parallel", "stall_timeout",
    "skip_unchanged", "recursive", "listing_cache",
}
_ENDPOINT_KEYS = {"host", "user", "port", "identity", "ssh_options", "zfs_command", "address"}
_FS_KEYS = {"source", "destination", "mountpoint"}


class _Reader:
    """Reads typed values out of one TOML table, raising ConfigError with context."""

    def __init__(self, path: Path | None, table: dict[str, Any], where: str, known: set[str]):
        self.path = path
        self.table = table
        self.where = where
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else \
                    f"; valid keys here: {', '.join(sorted(known))}"
                self.fail(key, f"unknown key{hint}", expected=None)

    def key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str, expected: str | None) -> NoReturn:
        prefix = f"{self.path}: " if self.path else ""
        msg = f"{prefix}{self.key(key)}: {problem}"
        if expected:
            msg += f"; expected {expected}"
        raise ConfigError(msg)

    def _get(self, key: str, required: bool, expected: str | None = None) -> Any:
        if key not in self.table:
            if required:
                self.fail(key, "missing", expected)
            return None
        return self.table[key]

    def string(self, key: str, *, required: bool = True, pattern: re.Pattern[str] | None = None,
               expected: str = "a string") -> str | None:
        value = self._get(key, required, expected)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(key, f"{value!r} is not a non-empty string", expected)
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(key, f"{value!r} is not valid", expected)
        return str(value)

    def integer(self, key: str, *, default: int | None, minimum: int,
                maximum: int | None = None) -> int:
        value = self._get(key, required=default is None, expected=f"an integer >= {minimum}")
        if value is None:
            assert default is not None
            return default
        in_range = isinstance(value, int) and not isinstance(value, bool) and value >= minimum \
            and (maximum is None or value <= maximum)
        if not in_range:
            bound = f"an integer >= {minimum}" if maximum is None else \
                f"an integer from {minimum} to {maximum}"
            self.fail(key, f"{value!r} is not valid", bound)
        return int(value)

    def number(self, key: str, *, default: float, minimum: float) -> float:
        value = self._get(key, required=False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < minimum:
            self.fail(key, f"{value!r} is not valid", f"a number >= {minimum:g}")
        return float(value)

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._get(key, required=False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, f"{value!r} is not valid", "true or false (without quotes)")
        return value

    def hook(self, key: str) -> str | None:
        value = self.string(key, required=False,
                            expected='"none" or the full path of an executable')
        if value is None or value == "none":
            return None
        if not value.startswith("/"):
            self.fail(key, f"{value!r} is not a full path",
                      '"none" or the full path of an executable (no arguments)')
        return value


MAX_PARALLEL = 16
# Below a few seconds a busy host's normal pauses would count as stalls; a day is
# beyond any pause worth waiting out.
MIN_STALL_TIMEOUT = 5
MAX_STALL_TIMEOUT = 86400

# Every duration in seconds is at most a leap year: beyond, time functions overflow.
MAX_DURATION = 366 * 86400


_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?(?:/s)?$", re.IGNORECASE)
_RATE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIN_BANDWIDTH = 1 << 10
BANDWIDTH_EXPECTED = ('bytes per second: an integer, or a number with K, M, G or T '
                      '(powers of 1024) like "20M" or "512K"; at least 1K')


def parse_bandwidth(value: object) -> int | None:
    """Bytes per second from "20M", "512K", "1.5G", "20MB/s" or an integer; None if
    `value` is not one (or is below 1 KiB/s)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        rate = value
    elif isinstance(value, str):
        m = _RATE_RE.fullmatch(value.strip())
        if not m:
            return None
        rate = int(float(m.group(1)) * _RATE_UNITS[m.group(2).upper()])
    else:
        return None
    return rate if rate >= MIN_BANDWIDTH else None


def format_bandwidth(rate: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if rate % _RATE_UNITS[unit] == 0:
            return f"{rate // _RATE_UNITS[unit]}{unit}"
    return str(rate)


WIRE_COMPRESSIONS = ("none", "zstd", "lz4", "auto")
WIRE_COMPRESSION_EXPECTED = ('"none", "zstd", "lz4" or "auto" (zstd where both hosts have it, '
                             'else lz4, else none)')
_SIZE_RE = re.compile(r"^(\d+)\s*([KMG])(?:i?B)?$", re.IGNORECASE)
BUFFER_EXPECTED = (f'"none" or a size for mbuffer -m: a whole number with K, M or G (powers '
                   f'of 1024) like "128M" or "1G", from {format_buffer_size(MIN_BUFFER)} to '
                   f'{format_buffer_size(MAX_BUFFER)}')


def parse_buffer(value: object) -> int | None:
    """Bytes from "128M", "1G", "512k", "128MiB"; None if `value` is not such a size
    within MIN_BUFFER..MAX_BUFFER. ("none" is the caller's business.)"""
    if not isinstance(value, str):
        return None
    m = _SIZE_RE.fullmatch(value.strip())
    if not m:
        return None
    size = int(m.group(1)) * _RATE_UNITS[m.group(2).upper()]
    return size if MIN_BUFFER <= size <= MAX_BUFFER else None


def _dataset_problem(name: str) -> str | None:
    """Why `name` is not a valid ZFS filesystem name, or None if it is."""
    if "@" in name or "#" in name:
        return "names a snapshot or bookmark, not a filesystem"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "has an empty path component"
    parts = name.split("/")
    if len(parts) < 2:
        return "is a whole pool; give a filesystem inside a pool (pool/name)"
    if not parts[0][:1].isalpha():
        return "pool names start with a letter"
    for part in parts:
        if part in (".", "..") or not _DATASET_COMPONENT_RE.fullmatch(part):
            return f"component {part!r} may only hold letters, digits and '_-.: '"
    if len(name) > 255:
        return "is longer than 255 characters"
    return None


def _endpoint(path: Path | None, data: dict[str, Any], where: str) -> Endpoint:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [{where}]: must be a table with host and user")
    r = _Reader(path, data, where, _ENDPOINT_KEYS)
    host = r.string("host", pattern=_HOST_RE, expected="a host name or address")
    assert host is not None
    if host.startswith("-"):
        r.fail("host", f"{host!r} starts with '-'", "a host name or address")
    user = r.string("user", pattern=_USER_RE, expected="a user name (letters, digits, '_.-')")
    assert user is not None
    port = r.integer("port", default=0, minimum=0, maximum=65535) or None
    identity = r.string("identity", required=False, expected="the full path of a private key")
    if identity is not None and not identity.startswith("/"):
        r.fail("identity", f"{identity!r} is not a full path", "the full path of a private key")
    options = data.get("ssh_options", [])
    if not isinstance(options, list) or not all(
        isinstance(o, str) and _SSH_OPTION_RE.fullmatch(o) for o in options
    ):
        r.fail("ssh_options", f"{options!r} is not valid",
               'a list of ssh -o options like ["Compression=no"]')
    for option in options:
        problem = ssh_option_problem(option)
        if problem:
            r.fail("ssh_options", f"{option!r} is refused: {problem}", SSH_OPTIONS_EXPECTED)
    zfs_command = r.string("zfs_command", required=False,
                           expected='a command such as "zfs" or "sudo -n /usr/sbin/zfs"') or "zfs"
    try:
        if not shlex.split(zfs_command):
            raise ValueError
    except ValueError:
        r.fail("zfs_command", f"{zfs_command!r} is not a command", 'e.g. "zfs"')
    if not _ZFS_COMMAND_RE.fullmatch(zfs_command):
        r.fail("zfs_command", f"{zfs_command!r} is not valid", ZFS_COMMAND_EXPECTED)
    address = r.string("address", required=False, pattern=_HOST_RE,
                       expected="the address or name ssh connects to for this host")
    if address is not None and address.startswith("-"):
        r.fail("address", f"{address!r} starts with '-'", "a host name or address")
    return Endpoint(host=host, user=user, port=port, identity=identity,
                    ssh_options=tuple(options), zfs_command=zfs_command, address=address)


def parse_service(data: dict[str, Any], path: Path | None = None,
                  expected_name: str | None = None) -> Service:
    r = _Reader(path, data, "", _TOP_KEYS)
    name = r.string("name", pattern=SERVICE_NAME_RE,
                    expected="1-64 letters, digits, '_', '.' or '-'")
    assert name is not None
    if expected_name is not None and name != expected_name:
        r.fail("name", f"{name!r} differs from the file name {expected_name!r}",
               f'name = "{expected_name}"')
    interval = r.integer("interval", default=60, minimum=1)
    retries = r.integer("retries", default=1, minimum=1)
    keep = r.integer("keep", default=1, minimum=1)
    keep_source = r.integer("keep_source", default=keep, minimum=1)
    keep_destination = r.integer("keep_destination", default=keep, minimum=1)
    hook_timeout = r.integer("hook_timeout", default=300, minimum=1)
    retry_delay = r.number("retry_delay", default=5.0, minimum=0.0)
    for key, seconds in (("interval", interval), ("hook_timeout", hook_timeout),
                         ("retry_delay", retry_delay)):
        if seconds > MAX_DURATION:
            r.fail(key, f"{data[key]!r} is too long", f"at most {MAX_DURATION} seconds (366 days)")
    parallel = r.integer("parallel", default=1, minimum=1, maximum=MAX_PARALLEL)
    stall_timeout = r.integer("stall_timeout", default=300, minimum=MIN_STALL_TIMEOUT,
                              maximum=MAX_STALL_TIMEOUT)
    skip_unchanged = r.boolean("skip_unchanged", default=False)
    recursive = r.boolean("recursive", default=False)
    listing_cache = r.string("listing_cache", required=False, pattern=LISTING_CACHE_RE,
                             expected='"auto", "on" or "off"') or "auto"
    role = r.string("role", required=False, pattern=ROLE_RE,
                    expected='"source" or "destination"') or "source"
    metrics_port = r.integer("metrics_port", default=0, minimum=0, maximum=65535) or None
    metrics_address = r.string("metrics_address", required=False, pattern=_HOST_RE,
                               expected='an address to listen on, e.g. "127.0.0.1" or "::"') \
        or "127.0.0.1"

    bandwidth_limit = None
    if "bandwidth_limit" in data:
        bandwidth_limit = parse_bandwidth(data["bandwidth_limit"])
        if bandwidth_limit is None:
            r.fail("bandwidth_limit", f"{data['bandwidth_limit']!r} is not valid",
                   BANDWIDTH_EXPECTED)

    wire_compression = r.string("wire_compression", required=False,
                                expected=WIRE_COMPRESSION_EXPECTED) or "none"
    if wire_compression not in WIRE_COMPRESSIONS:
        close = difflib.get_close_matches(wire_compression.lower(), WIRE_COMPRESSIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        r.fail("wire_compression", f"{wire_compression!r} is not valid{hint}",
               WIRE_COMPRESSION_EXPECTED)
    buffer = None
    if "buffer" in data and data["buffer"] != "none":
        buffer = parse_buffer(data["buffer"])
        if buffer is None:
            r.fail("buffer", f"{data['buffer']!r} is not valid", BUFFER_EXPECTED)

    # mbuffer takes all of -m at its start, one per stream, on the receiving host: the
    # streams of one cycle together may ask it for no more than one largest buffer.
    if buffer is not None and buffer * parallel > MAX_BUFFER_TOTAL:
        r.fail("buffer", f"{data['buffer']!r} times parallel = {parallel} is "
               f"{format_buffer_size(buffer * parallel)}",
               f"buffer x parallel of at most {format_buffer_size(MAX_BUFFER_TOTAL)} in all")

    for side in ("source", "destination"):
        if side not in data:
            r.fail(side, "missing", f"a [{side}] table with host and user")
    source = _endpoint(path, data["source"], "source")
    destination = _endpoint(path, data["destination"], "destination")
    for key, value in (("source.user", source.user), ("destination.user", destination.user),
                       ("destination.host", destination.host)):
        if not valid_name_component(value) or "@" in value:
            r.fail(key, f"{value!r} cannot be part of a snapshot name",
                   "letters, digits and '_-.:'")

    raw_fs = data.get("filesystem")
    if isinstance(raw_fs, dict):
        r.fail("filesystem", "written as a single table [filesystem]",
               "[[filesystem]], with two brackets, before each filesystem's source and "
               "destination")
    if not isinstance(raw_fs, list) or not raw_fs:
        r.fail("filesystem", "missing", "one or more [[filesystem]] tables with source and "
               "destination")
    assert isinstance(raw_fs, list)
    pairs: list[FilesystemPair] = []
    for i, item in enumerate(raw_fs, start=1):
        where = f"filesystem[{i}]"
        if not isinstance(item, dict):
            r.fail(where, "is not a table", "[[filesystem]] with source and destination")
        fr = _Reader(path, item, where, _FS_KEYS)
        values: dict[str, str] = {}
        for key in ("source", "destination"):
            dataset = fr.string(key, expected="a ZFS filesystem name like pool/path/fs")
            assert dataset is not None
            problem = _dataset_problem(dataset)
            if problem:
                fr.fail(key, f"{dataset!r} {problem}", "a ZFS filesystem name like pool/path/fs")
            values[key] = dataset
        mountpoint = fr.string("mountpoint", required=False,
                               expected="the full path where failover mounts the destination")
        if mountpoint is not None and not mountpoint.startswith("/"):
            fr.fail("mountpoint", f"{mountpoint!r} is not a full path",
                    "the full path where failover mounts the destination")
        pairs.append(FilesystemPair(values["source"], values["destination"], mountpoint))
    for attr in ("source", "destination"):
        seen: set[str] = set()
        for i, pair in enumerate(pairs, start=1):
            value = getattr(pair, attr)
            if value in seen:
                r.fail(f"filesystem[{i}].{attr}", f"{value!r} appears twice", "each once")
            seen.add(value)
    # A forced receive into a destination destroys what its sender does not have below
    # it: one destination inside another would be destroyed by the other's receive.
    for i, pair in enumerate(pairs, start=1):
        outer = next((p.destination for p in pairs
                      if pair.destination.startswith(p.destination + "/")), None)
        if outer is not None:
            r.fail(f"filesystem[{i}].destination",
                   f"{pair.destination!r} lies inside the destination {outer!r}",
                   "destinations side by side, none inside another (a forced receive "
                   "into the outer one would destroy the inner one)")

    if recursive:
        _check_recursive(r, pairs, {"parallel": parallel != 1,
                                    "skip_unchanged": skip_unchanged}, data)

    return Service(
        name=name, source=source, destination=destination, filesystems=tuple(pairs),
        interval=interval, retries=retries, keep_source=keep_source,
        keep_destination=keep_destination, pre_snapshot=r.hook("pre_snapshot"),
        post_snapshot=r.hook("post_snapshot"), on_alarm=r.hook("on_alarm"),
        hook_timeout=hook_timeout, retry_delay=retry_delay, role=role,
        metrics_port=metrics_port, metrics_address=metrics_address,
        bandwidth_limit=bandwidth_limit, wire_compression=wire_compression, buffer=buffer,
        parallel=parallel, stall_timeout=stall_timeout, skip_unchanged=skip_unchanged,
        listing_cache=listing_cache,
        recursive=recursive, path=path,
    )


# What a recursive service cannot have, and what to do instead: its cycle is one
# snapshot call, one stream and one receive for the whole subtree.
_NOT_RECURSIVE = {
    "parallel": "one stream carries every filesystem, there is nothing to send side by "
                "side; remove parallel",
    "skip_unchanged": "`zfs snapshot -r` snapshots every filesystem below the parent "
                      "together; remove skip_unchanged",
}


def _check_recursive(r: _Reader, pairs: list[FilesystemPair], used: dict[str, bool],
                     data: dict[str, Any]) -> None:
    """recursive = true: one [[filesystem]], the parent, whose children are found at
    every cycle (`zfs list -r`), none listed; no per-filesystem settings."""
    if len(pairs) != 1:
        r.fail("filesystem", f"{len(pairs)} [[filesystem]] tables with recursive = true",
               "exactly one [[filesystem]]: the parent, replicated with every filesystem "
               "below it (found at each cycle), as one stream into its destination; "
               "or recursive = false to list filesystems one by one")
    if pairs[0].mountpoint is not None:
        r.fail("filesystem[1].mountpoint", "is not used with recursive = true",
               "no mountpoint: the replicas keep the mountpoints they inherit below the "
               "destination parent")
    for key, why in _NOT_RECURSIVE.items():
        if used[key]:
            r.fail(key, f"{data[key]!r} does not apply with recursive = true: {why}", None)


# ---------------------------------------------------------------------------- writing


def _toml_str(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _endpoint_toml(ep: Endpoint) -> list[str]:
    lines = [f"host = {_toml_str(ep.host)}", f"user = {_toml_str(ep.user)}"]
    if ep.port:
        lines.append(f"port = {ep.port}")
    if ep.identity:
        lines.append(f"identity = {_toml_str(ep.identity)}")
    if ep.ssh_options:
        lines.append("ssh_options = [" + ", ".join(_toml_str(o) for o in ep.ssh_options) + "]")
    if ep.zfs_command != "zfs":
        lines.append(f"zfs_command = {_toml_str(ep.zfs_command)}")
    if ep.address:
        lines.append(f"address = {_toml_str(ep.address)}")
    return lines


def reloaded(svc: Service, path: Path | None = None) -> Service:
    """`svc` as the loader reads it back from its TOML text, through every check of
    `parse_service`: what is written from it always loads."""
    return parse_service(_toml_module().loads(dump_service(svc)), path)


def dump_service(svc: Service) -> str:
    """The TOML text of a service; `parse_service` of it gives `svc` back."""

    def hook(value: str | None) -> str:
        return _toml_str(value or "none")

    lines = [
        f"name = {_toml_str(svc.name)}",
        f"interval = {svc.interval}",
        f"retries = {svc.retries}",
    ]
    if svc.keep_source == svc.keep_destination:
        lines.append(f"keep = {svc.keep_source}")
    else:
        lines += [f"keep_source = {svc.keep_source}",
                  f"keep_destination = {svc.keep_destination}"]
    lines += [f"pre_snapshot = {hook(svc.pre_snapshot)}",
              f"post_snapshot = {hook(svc.post_snapshot)}"]
    if svc.role != "source":
        lines.append(f"role = {_toml_str(svc.role)}")
    if svc.on_alarm:
        lines.append(f"on_alarm = {hook(svc.on_alarm)}")
    if svc.hook_timeout != 300:
        lines.append(f"hook_timeout = {svc.hook_timeout}")
    if svc.retry_delay != 5.0:
        lines.append(f"retry_delay = {svc.retry_delay!r}")
    if svc.metrics_port is not None:
        lines.append(f"metrics_port = {svc.metrics_port}")
    if svc.metrics_address != "127.0.0.1":
        lines.append(f"metrics_address = {_toml_str(svc.metrics_address)}")
    if svc.bandwidth_limit is not None:
        lines.append(f"bandwidth_limit = {_toml_str(format_bandwidth(svc.bandwidth_limit))}")
    if svc.wire_compression != "none":
        lines.append(f"wire_compression = {_toml_str(svc.wire_compression)}")
    if svc.buffer is not None:
        lines.append(f"buffer = {_toml_str(format_buffer_size(svc.buffer))}")
    if svc.parallel != 1:
        lines.append(f"parallel = {svc.parallel}")
    if svc.stall_timeout != 300:
        lines.append(f"stall_timeout = {svc.stall_timeout}")
    if svc.skip_unchanged:
        lines.append("skip_unchanged = true")
    if svc.listing_cache != "auto":
        lines.append(f"listing_cache = {_toml_str(svc.listing_cache)}")
    if svc.recursive:
        lines.append("recursive = true")
    lines += ["", "[source]", *_endpoint_toml(svc.source),
              "", "[destination]", *_endpoint_toml(svc.destination)]
    for pair in svc.filesystems:
        lines += ["", "[[filesystem]]", f"source = {_toml_str(pair.source)}",
                  f"destination = {_toml_str(pair.destination)}"]
        if pair.mountpoint:
            lines.append(f"mountpoint = {_toml_str(pair.mountpoint)}")
    return "\n".join(lines) + "\n"
