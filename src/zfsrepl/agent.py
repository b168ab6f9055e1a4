"""The remote agent: the forced command of a service's key on the destination.

sshd runs `zfsrepl agent --service NAME ...` for every connection made with the
service's key and puts what the client asked for in SSH_ORIGINAL_COMMAND. The
agent allows only the zfs commands a replication cycle of that service sends, on
that service's own destination filesystems, and runs them as configured in the
forced command (never as the client says), with an argv list: never a shell.
Everything else is refused with one line on standard error, a log line and a
non-zero exit, before anything runs.

What the service may touch comes from the forced command's own arguments: sshd
shows them with the key, they need no file the destination user could widen,
and no TOML parser (this module runs on a bare Python 3.9 with the standard
library only; it must not import more of zfsrepl than `zfswrap.MODULES` copies).
It starts for every command a cycle sends, a receive for each filesystem: its
modules leave out `typing` and `dataclasses` (see `record`), whose imports were a
third of that start.

Accepted requests, after an optional zfs prefix (see `ZfsPrefix`):

    (nothing)                                             zfs's usage: the capability probe
    get -Hp -r -d 1 -o name,property,value PROPS FS...   PROPS from LISTING_PROPERTIES
                                                          and LISTING_OPTIONAL
    get -Hp -o name,property,value snapshots_changed,zfsrepl:role[,OPT]... FS...
                                                          the listing cache's look; OPT
                                                          from LISTING_OPTIONAL
    list -H -o name NAME...                               NAME: an own FS or its parent
    receive -u [-s] [-o readonly=on] FS                   full stream (or a resumed one)
    receive -u -F [-s] FS                                 incremental, FS must exist
    receive -A FS                                         discard a cut resumable receive
    hold TAG FS@SNAP... / release TAG FS@SNAP...          TAG: zfsrepl-SERVICE, own SNAPs
    holds -H FS@SNAP...                                   the holds of an own FS's snapshots
    destroy FS@SNAP                                       SNAP made by this service
    destroy FS@SNAP FS@SNAP...                            several (any own FS): the
                                                          agent's own form, one zfs
                                                          destroy each, or one
                                                          libzfs_core request (run_each)
    rollback FS@SNAP                                      SNAP made by this service
    rename FS FS.diverged-YYYYmmdd-HHMMSS                 a diverged replica set aside
    clone [-o readonly=on] FS.diverged-STAMP@SNAP FS      ... its SNAP (this service's)
                                                          back under the old name
    promote FS                                            ... owning its snapshots again
    hello                                                 version, ZFS capabilities and
                                                          which of zstd, lz4, mbuffer it has

For a recursive service (`--recursive`: its one filesystem is a parent, and every
filesystem below it is the service's too), the receive forms above are replaced by
one, and two are added:

    receive -u FS                                         FS: the parent; only a
                                                          replication stream (send -R)
    get -Hp -r -o name,property,value PROPS FS            the whole subtree's listing
    destroy -r FS@SNAP                                    SNAP made by this service

and a receive of the forms above behind the helpers of wire compression and
buffering, in this order, each optional but one of them there (see `Pipeline`):

    zstd -dc | mbuffer -q -m SIZE | zfs receive ...       zstd or lz4; SIZE like 16M, 1G
                                                          (K, M, G; 1M to 1G)

The agent runs such a pipeline itself, each program with an argv list joined by
OS pipes (never a shell), the helpers as found on its PATH.

It trusts nothing the sending side decides. Before it runs a request it checks on
this host (README, "What the agent enforces"):

    the takeover interlock   a request that changes a filesystem (receive, receive -A,
                             destroy, rollback, hold, release, rename, promote) is
                             refused while the filesystem carries zfsrepl:role=source
    the stream               a receive reads the stream's first record (streamcheck) and
                             refuses replication streams and anything else that is not
                             one filesystem's send stream; where zfs runs as root and has
                             receive -x, dangerous properties are excluded. A recursive
                             service's receive takes only a replication stream; its list
                             of filesystems is read first: an incremental one only into
                             an existing parent, and one that sets a property reaching
                             root (streamcheck.ROOT_PROPERTIES) only where -x excludes it
    the reach of -F          a forced receive (and a rename) is refused over descendants
                             that are not the service's; nested destinations are
                             refused altogether
    what a listing shows     get -r -d 1 output is cut to the service's own datasets
    resources                mbuffer at most MAX_AGENT_BUFFER; its own looks time out
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from zfsrepl import __version__, capabilities, streamcheck, zfserrors
from zfsrepl.naming import SnapshotNaming
from zfsrepl.record import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see record)
if TYPE_CHECKING:
    from types import FrameType
    from typing import IO, Callable, NoReturn, Sequence, Union

# The properties the cycle lists (zfs.py `_LIST_PROPS`; a unit test keeps them equal),
# and those it adds where the host has the feature (zfs.py `OPTIONAL_LIST_PROPS`).
LISTING_PROPERTIES = ("guid", "createtxg", "creation", "userrefs", "zfsrepl:role")
LISTING_OPTIONAL = ("receive_resume_token", "encryption")
# The listing cache's look at the filesystems alone (zfs.py `Zfs.changed`): when their
# snapshots last changed, with the filesystem properties the listing gives.
CHANGED_HEAD = ["get", "-Hp", "-o", "name,property,value"]
CHANGED_PROPERTIES = ("snapshots_changed", "zfsrepl:role")
# Far above any real request (a listing of many filesystems), far below what could
# hurt: refused before it is even split.
MAX_COMMAND_BYTES = 64 * 1024
# What this agent takes beyond the forms every version does, named in its `hello`
# so that a client asks an older agent only what it understands.
AGENT_REQUESTS = ("destroy-many",)
EXIT_REFUSED = 126
EXIT_CANNOT_RUN = 127
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_PROBE_TIMEOUT = 30
# A check the agent makes before it runs a request (what the filesystems are, which
# options this zfs has): far above what it takes on a loaded host, so that a hung zfs
# ends the request instead of holding the connection forever.
_CHECK_TIMEOUT = 120
# The most memory one stream's mbuffer may take here: a key holder chooses the size
# and may open streams in parallel, so each is bounded; definitions are held to it.
MAX_AGENT_BUFFER = capabilities.MAX_BUFFER
# Where the interlock lives (zfs.py ROLE_PROPERTY) and the value that means "taken
# over" (diagnosis.ROLE_TAKEN_OVER); a unit test keeps them equal.
ROLE_PROPERTY = "zfsrepl:role"
ROLE_TAKEN_OVER = "source"
# The name a diverged replica is renamed to by `doctor --fix` (repair.py ASIDE_INFIX and
# STAMP_FORMAT; a unit test keeps them equal): the filesystem's name and this suffix.
ASIDE_SUFFIX_RE = re.compile(r"\.diverged-[0-9]{8}-[0-9]{6}")
# Properties a receive leaves as they are here, where this zfs has `receive -x` and
# runs as root: a stream with any of them could mount the replica over a system
# folder, share it or make its set-uid programs and devices count. (Under `zfs allow`
# ZFS itself refuses a received property the user has no right to, and setup grants
# none of these; there -x would itself need those rights.)
EXCLUDED_PROPERTIES = ("mountpoint", "canmount", "sharenfs", "sharesmb", "setuid", "exec",
                       "devices")


@record
class Policy:
    """What one service may do on its destination, from the forced command."""

    service: str
    filesystems: frozenset[str]
    naming: SnapshotNaming
    zfs_argv: tuple[str, ...]  # how the agent runs zfs, e.g. ("sudo", "-n", "/usr/sbin/zfs")
    # The one filesystem is a parent replicated with all below it (config `recursive`).
    recursive: bool = False

    def owns(self, name: str) -> bool:
        """Whether the dataset `name` is one of the service's filesystems."""
        return name in self.filesystems or (
            self.recursive and any(name.startswith(fs + "/") for fs in self.filesystems))

    @property
    def hold_tag(self) -> str:
        """The service's own hold tag (cycle.py `hold_tag`)."""
        return f"zfsrepl-{self.service}"

    @property
    def parents(self) -> frozenset[str]:
        return frozenset(fs.rsplit("/", 1)[0] for fs in self.filesystems if "/" in fs)

    def client_prefixes(self) -> list[tuple[str, ...]]:
        """What the client may put before the zfs arguments: the definition's
        zfs_command (which setup wrote into the forced command), its last word (the
        zfs binary), or plain `zfs`. All of them mean "the agent's zfs"."""
        found: list[tuple[str, ...]] = [self.zfs_argv, (self.zfs_argv[-1],), ("zfs",)]
        # longest first, so "sudo -n /usr/sbin/zfs" is not read as "sudo" + arguments
        return sorted(set(found), key=len, reverse=True)


@record
class Hello:
    pass


@record
class RunZfs:
    args: tuple[str, ...]  # after the zfs command
    must_exist: str | None = None  # dataset that must exist before the command runs
    # The filesystems the command changes (it, its snapshots, their holds): refused
    # while any of them is taken over (the takeover interlock, read before it runs).
    changes: tuple[str, ...] = ()
    # A forced receive (-F) into this filesystem: refused while it has descendants that
    # are not the service's (a forced receive may destroy them).
    forced: str | None = None
    # A rename of this filesystem: refused, like a forced receive, while it has
    # descendants that are not the service's (they would move with it).
    moves: str | None = None
    stream: bool = False  # reads a send stream: its first record is checked first
    # A recursive service's receive into this parent: only a replication stream, whose
    # list of filesystems is checked first (see `read_stream`).
    replication: str | None = None
    listing: bool = False  # its output is cut to the service's own datasets
    # `SUB NAME NAME...`: one `zfs SUB NAME` for each NAME, in order (see run_each)
    each: bool = False


@record
class Pipeline:
    """A receive behind a decompressor and/or mbuffer: `helpers` (each exactly as
    capabilities.decompress_argv / buffer_argv make it), then `receive`."""

    helpers: tuple[tuple[str, ...], ...]
    receive: RunZfs


@record
class Refused:
    reason: str


if TYPE_CHECKING:
    Decision = Union[Hello, RunZfs, Pipeline, Refused]

_DECOMPRESSORS = {tuple(capabilities.decompress_argv(t)) for t in capabilities.COMPRESSORS}
_PIPELINE_USAGE = ("a pipeline is allowed only as: [zstd -dc | or lz4 -dc |] "
                   "[mbuffer -q -m SIZE |] zfs receive ..., with at least one of them")


# ---------------------------------------------------------------------------- deciding


def decode_command(raw: bytes | None) -> str | Refused:
    """The request as text, or why it cannot be one."""
    if raw is None:
        return Refused("no command given: this key only runs zfsrepl's replication commands")
    if len(raw) > MAX_COMMAND_BYTES:
        return Refused(f"command too long ({len(raw)} bytes, at most {MAX_COMMAND_BYTES})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Refused("command is not UTF-8 text")
    if _CONTROL_RE.search(text):
        return Refused("command holds control characters (newline, tab, NUL ...)")
    return text


def decide(command: str, policy: Policy) -> Decision:
    """What to do for one request: pure, so every case is tested without ZFS."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return Refused(f"command cannot be split into words: {exc}")
    if not words:
        return Refused("empty command")
    nested = nested_destinations(policy.filesystems)
    if nested:
        inner, outer = nested
        return Refused(f"the destination filesystems of service {policy.service} nest: "
                       f"{inner!r} is inside {outer!r}, where a forced receive into "
                       f"{outer!r} could destroy it; give each filesystem a destination "
                       "of its own outside the others and run setup again")
    if "|" in words:
        return _pipeline(words, policy)
    if words == ["hello"]:
        return Hello()
    args = _strip_prefix(words, policy)
    if args is None:
        return Refused(f"{words[0]!r} is not allowed: this key runs only zfs commands and "
                       "'hello'")
    if not args:
        return RunZfs(())  # zfs's usage text: what this ZFS offers; changes nothing
    sub = args[0]
    handler = _SUBCOMMANDS.get(sub)
    if handler is None:
        return Refused(f"zfs {sub} is not allowed for service {policy.service}: only "
                       f"{', '.join(sorted(_SUBCOMMANDS))} of its own datasets")
    return handler(args, policy)


def nested_destinations(filesystems: frozenset[str]) -> tuple[str, str] | None:
    """Two of `filesystems` (inner, outer) where one lies below the other, or None."""
    for inner in sorted(filesystems):
        for outer in filesystems:
            if inner.startswith(outer + "/"):
                return inner, outer
    return None


def _pipeline(words: list[str], policy: Policy) -> Decision:
    """`helper | ... | zfs receive ...` (the words split at each bare or quoted `|`:
    no shell ever reads them, so both mean the same here)."""
    stages: list[list[str]] = [[]]
    for word in words:
        if word == "|":
            stages.append([])
        else:
            stages[-1].append(word)
    if any(not stage for stage in stages):
        return Refused(f"a pipeline stage is empty; {_PIPELINE_USAGE}")
    *helpers, last = stages
    rest = list(helpers)
    if rest and tuple(rest[0]) in _DECOMPRESSORS:
        rest.pop(0)
    if rest and rest[0][:1] == [capabilities.BUFFER_TOOL]:
        form = rest[0]
        if form[1:3] != ["-q", "-m"] or len(form) != 4:
            return Refused(f"mbuffer is allowed only as: mbuffer -q -m SIZE, not "
                           f"{shlex.join(form)!r}")
        size = capabilities.parse_buffer_size(form[3])
        if size is None:
            # the upper bound is the most this host gives one stream: a key may open
            # many streams at once
            return Refused(f"mbuffer's size must be a whole number with K, M or G, from "
                           f"{capabilities.format_buffer_size(capabilities.MIN_BUFFER)} to "
                           f"{capabilities.format_buffer_size(MAX_AGENT_BUFFER)} "
                           f"(like 16M), not {form[3]!r}; set `buffer` in the definition "
                           "within that")
        rest.pop(0)
    if rest:
        return Refused(f"{shlex.join(rest[0])!r} is not allowed in a pipeline; "
                       f"{_PIPELINE_USAGE}")
    args = _strip_prefix(last, policy)
    if args is None or args[:1] != ["receive"] or args[1:2] == ["-A"]:
        return Refused(f"the last command of a pipeline must be a zfs receive of a stream; "
                       f"{_PIPELINE_USAGE}")
    receive = _receive(args, policy)
    if not isinstance(receive, RunZfs):
        return receive
    return Pipeline(tuple(tuple(h) for h in helpers), receive)


def _strip_prefix(words: list[str], policy: Policy) -> list[str] | None:
    for prefix in policy.client_prefixes():
        if tuple(words[:len(prefix)]) == prefix:
            return words[len(prefix):]
    return None


def _own_fs(name: str, policy: Policy) -> Refused | None:
    if not policy.owns(name):
        return Refused(f"{name!r} is not a destination filesystem of service {policy.service}")
    return None


def _own_snapshot(name: str, policy: Policy, what: str) -> Refused | None:
    fs, sep, snap = name.partition("@")
    if not sep:
        return Refused(f"{what} takes a snapshot (FS@SNAP) of service {policy.service}, "
                       f"not {name!r}")
    refused = _own_fs(fs, policy)
    if refused:
        return refused
    if not policy.naming.is_ours(snap):
        return Refused(f"snapshot {snap!r} was not made by service {policy.service} "
                       f"(its snapshots are named {policy.naming.prefix}N)")
    return None


def _get(args: list[str], policy: Policy) -> Decision:
    if policy.recursive and args[:3] == ["get", "-Hp", "-r"] and args[3:4] != ["-d"]:
        return _get_subtree(args, policy)
    head = ["get", "-Hp", "-r", "-d", "1", "-o", "name,property,value"]
    if args[:len(CHANGED_HEAD)] == CHANGED_HEAD:
        return _get_changed(args, policy)
    if args[:len(head)] != head or len(args) < len(head) + 2:
        return Refused("zfs get is allowed only as: get -Hp -r -d 1 -o name,property,value "
                       f"{','.join(LISTING_PROPERTIES)} FS...")
    props = args[len(head)].split(",")
    allowed = (*LISTING_PROPERTIES, *LISTING_OPTIONAL)
    if len(set(props)) != len(props) or not set(props) <= set(allowed):
        return Refused(f"zfs get may read only {','.join(allowed)}, "
                       f"not {args[len(head)]!r}")
    for fs in args[len(head) + 1:]:
        refused = _own_fs(fs, policy)
        if refused:
            return refused
    # -r -d 1 also lists the filesystems right below: another service's among them
    return RunZfs(tuple(args), listing=True)


def _get_changed(args: list[str], policy: Policy) -> Decision:
    """The listing cache's look: snapshots_changed and the filesystem properties of the
    listing, of the service's own filesystems only (no -r: nothing below them)."""
    n = len(CHANGED_HEAD)
    props = args[n].split(",") if len(args) > n + 1 else []
    if props[:2] != list(CHANGED_PROPERTIES) or len(set(props)) != len(props) \
            or not set(props[2:]) <= set(LISTING_OPTIONAL):
        return Refused(f"zfs get is allowed so only as: {' '.join(CHANGED_HEAD)} "
                       f"{','.join(CHANGED_PROPERTIES)}[,{'][,'.join(LISTING_OPTIONAL)}] "
                       "FS...")
    for fs in args[n + 1:]:
        refused = _own_fs(fs, policy)
        if refused:
            return refused
    return RunZfs(tuple(args))


def _get_subtree(args: list[str], policy: Policy) -> Decision:
    """A recursive service's listing: its whole subtree in one call."""
    head = ["get", "-Hp", "-r", "-o", "name,property,value"]
    allowed = (*LISTING_PROPERTIES, *LISTING_OPTIONAL)
    if args[:len(head)] != head or len(args) != len(head) + 2 \
            or args[-1] not in policy.filesystems:
        return Refused("zfs get of a recursive service is allowed only as: get -Hp -r -o "
                       f"name,property,value {','.join(LISTING_PROPERTIES)} "
                       f"{' or '.join(sorted(policy.filesystems))}")
    props = args[len(head)].split(",")
    if len(set(props)) != len(props) or not set(props) <= set(allowed):
        return Refused(f"zfs get may read only {','.join(allowed)}, "
                       f"not {args[len(head)]!r}")
    return RunZfs(tuple(args), listing=True)


def _list(args: list[str], policy: Policy) -> Decision:
    head = ["list", "-H", "-o", "name"]
    if args[:len(head)] != head or len(args) == len(head):
        return Refused("zfs list is allowed only as: list -H -o name DATASET...")
    for name in args[len(head):]:
        if not policy.owns(name) and name not in policy.parents:
            return Refused(f"{name!r} is neither a destination filesystem of service "
                           f"{policy.service} nor the parent of one")
    return RunZfs(tuple(args))


def _receive(args: list[str], policy: Policy) -> Decision:
    if policy.recursive:
        return _receive_subtree(args, policy)
    usage = ("zfs receive is allowed only as: receive -u [-F] [-s] [-o readonly=on] FS, "
             "or receive -A FS")
    if len(args) == 3 and args[1] == "-A":
        return _own_fs(args[2], policy) or RunZfs(tuple(args), changes=(args[2],))
    if len(args) < 3 or args[1] != "-u":
        return Refused(usage)
    flags = args[2:-1]
    incremental = flags[:1] == ["-F"]
    if incremental:
        flags = flags[1:]
    if flags[:1] == ["-s"]:
        flags = flags[1:]
    # readonly=on only with a full stream: an incremental keeps what failover set
    if not incremental and flags == ["-o", "readonly=on"]:
        flags = []
    if flags:
        return Refused(usage)
    refused = _own_fs(args[-1], policy)
    if refused:
        return refused
    # zfs-fuse receives an incremental stream aimed at a missing name into any dataset
    # holding the base snapshot: -F (the incremental form) only into an existing one.
    fs = args[-1]
    return RunZfs(tuple(args), must_exist=fs if incremental else None, changes=(fs,),
                  forced=fs if incremental else None, stream=True)


def _receive_subtree(args: list[str], policy: Policy) -> Decision:
    """A recursive service's one receive: a replication stream into its parent, without
    -F (which would destroy what the stream lacks below it, snapshots others made
    included); the stream itself is checked when it comes (streamcheck)."""
    if len(args) != 3 or args[1] != "-u" or args[2] not in policy.filesystems:
        return Refused(f"service {policy.service} is recursive: zfs receive is allowed "
                       f"only as: receive -u {' or '.join(sorted(policy.filesystems))} "
                       "(one zfs send -R stream, no -F)")
    return RunZfs(tuple(args), changes=(args[2],), stream=True, replication=args[2])


def _hold_or_release(args: list[str], policy: Policy) -> Decision:
    # No -r: that would reach other services' filesystems below. Several snapshots in
    # one request (a cycle moves every filesystem's base at once): each one checked.
    if len(args) < 3 or args[1] != policy.hold_tag:
        return Refused(f"zfs {args[0]} is allowed only as: {args[0]} {policy.hold_tag} "
                       "FS@SNAP...")
    for name in args[2:]:
        refused = _own_snapshot(name, policy, args[0])
        if refused:
            return refused
    return RunZfs(tuple(args), changes=_filesystems_of(args[2:]))


def _holds(args: list[str], policy: Policy) -> Decision:
    if len(args) < 3 or args[1] != "-H":
        return Refused("zfs holds is allowed only as: holds -H FS@SNAP...")
    for name in args[2:]:
        fs, sep, snap = name.partition("@")
        if not sep or not snap:
            return Refused(f"zfs holds takes snapshots (FS@SNAP), not {name!r}")
        refused = _own_fs(fs, policy)
        if refused:
            return refused
    return RunZfs(tuple(args))


def _destroy(args: list[str], policy: Policy) -> Decision:
    if policy.recursive and len(args) == 3 and args[1] == "-r":
        # the snapshot of that name of every filesystem below: all the service's
        return (_own_snapshot(args[2], policy, "destroy")
                or RunZfs(tuple(args), changes=_filesystems_of(args[2:])))
    if len(args) < 2 or any(a.startswith("-") for a in args[1:]):
        return Refused("zfs destroy is allowed only as: destroy FS@SNAP... (no options)")
    for name in args[1:]:
        refused = _own_snapshot(name, policy, "destroy")
        if refused:
            return refused
    # several: one zfs destroy each (zfs takes one filesystem's snapshots per call)
    return RunZfs(tuple(args), changes=_filesystems_of(args[1:]), each=len(args) > 2)


def _rollback(args: list[str], policy: Policy) -> Decision:
    # No -r/-R: those would destroy newer snapshots, other services' included.
    if len(args) != 2 or args[1].startswith("-"):
        return Refused("zfs rollback is allowed only as: rollback FS@SNAP (no options)")
    return (_own_snapshot(args[1], policy, "rollback")
            or RunZfs(tuple(args), changes=_filesystems_of(args[1:])))


def _rename(args: list[str], policy: Policy) -> Decision:
    # Only an own filesystem, only to its diverged-aside name: no -r/-p/-f, no snapshot.
    usage = "zfs rename is allowed only as: rename FS FS.diverged-YYYYmmdd-HHMMSS"
    if len(args) != 3 or any(a.startswith("-") for a in args[1:]):
        return Refused(usage)
    fs, new = args[1], args[2]
    refused = _own_fs(fs, policy)
    if refused:
        return refused
    if not _aside_of(new, fs):
        return Refused(f"{new!r} is not a name {fs!r} may be set aside as; {usage}")
    return RunZfs(tuple(args), must_exist=fs, changes=(fs,), moves=fs)


def _clone(args: list[str], policy: Policy) -> Decision:
    # Only from an own snapshot of a set-aside replica, back under the replica's name.
    usage = ("zfs clone is allowed only as: clone [-o readonly=on] "
             "FS.diverged-YYYYmmdd-HHMMSS@SNAP FS")
    rest = args[1:]
    if rest[:2] == ["-o", "readonly=on"]:
        rest = rest[2:]
    if len(rest) != 2 or any(a.startswith("-") for a in rest):
        return Refused(usage)
    origin, fs = rest
    refused = _own_fs(fs, policy)
    if refused:
        return refused
    aside, sep, snap = origin.partition("@")
    if not sep or not _aside_of(aside, fs):
        return Refused(f"{origin!r} is not a snapshot of {fs!r} set aside; {usage}")
    if not policy.naming.is_ours(snap):
        return Refused(f"snapshot {snap!r} was not made by service {policy.service} "
                       f"(its snapshots are named {policy.naming.prefix}N)")
    return RunZfs(tuple(args))


def _promote(args: list[str], policy: Policy) -> Decision:
    # Takes the origin's snapshots up to the clone's; the agent makes an own filesystem
    # a clone only of its own set-aside replica (`_clone`), so nothing else's move.
    if len(args) != 2 or args[1].startswith("-"):
        return Refused("zfs promote is allowed only as: promote FS")
    return _own_fs(args[1], policy) or RunZfs(tuple(args), must_exist=args[1],
                                              changes=(args[1],))


def _aside_of(name: str, fs: str) -> bool:
    return name.startswith(fs) and ASIDE_SUFFIX_RE.fullmatch(name[len(fs):]) is not None


def _filesystems_of(snapshots: list[str]) -> tuple[str, ...]:
    return tuple(sorted({name.partition("@")[0] for name in snapshots}))


_SUBCOMMANDS = {
    "get": _get, "list": _list, "receive": _receive, "destroy": _destroy,
    "rollback": _rollback, "hold": _hold_or_release, "release": _hold_or_release,
    "holds": _holds, "rename": _rename, "clone": _clone, "promote": _promote,
}


# ---------------------------------------------------------------------------- what is there


def inspect_args(run: RunZfs) -> list[str] | None:
    """The one zfs listing a request needs before it runs (which of its filesystems
    exist, their interlock, and for a forced receive what lies below), or None."""
    names = set(run.changes)
    names.update(n for n in (run.must_exist, run.forced, run.moves, run.replication) if n)
    if not names:
        return None
    args = ["list", "-H", "-o", f"name,{ROLE_PROPERTY}"]
    if run.forced or run.moves:
        args += ["-r", "-t", "filesystem,volume"]
    return args + sorted(names)


def parse_roles(listing: str) -> dict[str, str]:
    """`zfs list -H -o name,zfsrepl:role` as {dataset: role} ("-" where none is set)."""
    roles = {}
    for line in listing.splitlines():
        name, sep, role = line.partition("\t")
        if sep:
            roles[name] = role
    return roles


def judge(run: RunZfs, roles: dict[str, str], policy: Policy) -> Refused | None:
    """Whether `run` may run, given what `inspect_args` found (`roles`): pure."""
    if run.must_exist and run.must_exist not in roles:
        return Refused(f"{run.must_exist!r} does not exist: an incremental stream is "
                       "received only into an existing filesystem")
    taken = [fs for fs in run.changes if roles.get(fs) == ROLE_TAKEN_OVER]
    if taken:
        # the takeover interlock: held here, whatever the sending side believes
        return Refused(f"{', '.join(map(repr, taken))} has been taken over on this host "
                       f"({ROLE_PROPERTY}={ROLE_TAKEN_OVER}, set by `zfsrepl lockoutkey` or "
                       f"`zfsrepl failover --takeover`): service {policy.service} may not "
                       "change it from the source. On this host, `zfsrepl runonce "
                       f"{policy.service}` replicates it back (failback) and `zfsrepl "
                       f"failover --end {policy.service}` ends the takeover")
    top = run.forced or run.moves
    if top:
        below = sorted(n for n in roles
                       if n.startswith(top + "/") and not policy.owns(n))
        if below:
            harm = ("a forced receive (-F) could destroy it" if run.forced else
                    "renaming the filesystem would move it too")
            return Refused(f"{top!r} has {', '.join(map(repr, below[:5]))}"
                           f"{' ...' if len(below) > 5 else ''} below it, not service "
                           f"{policy.service}'s: {harm}; "
                           "move it out of the service's destination")
    return None


def own_listing(output: bytes, filesystems: frozenset[str], recursive: bool = False) -> bytes:
    """The lines of a `zfs get -H` listing about `filesystems` and their snapshots:
    `-r -d 1` also lists the filesystems right below, which may be anyone's
    (`recursive`: all below are the service's too)."""
    own = {fs.encode("utf-8") for fs in filesystems}
    below = tuple(fs + b"/" for fs in own) if recursive else ()
    return b"".join(ln for ln in output.splitlines(keepends=True)
                    if (name := ln.split(b"\t", 1)[0].split(b"@", 1)[0]) in own
                    or name.startswith(below))


def excludes_properties(usage: str) -> bool:
    """Whether this zfs has `receive -x PROPERTY` (from its usage text)."""
    return "x" in capabilities.flags(capabilities._usage_of(usage.splitlines(), "receive"))


def privileged(zfs_argv: Sequence[str], euid: int) -> bool:
    """Whether zfs runs with root's rights: the agent is root, or runs zfs through a
    program that grants them (sudo, doas, pfexec)."""
    return euid == 0 or os.path.basename(zfs_argv[0]) in ("sudo", "doas", "pfexec")


def with_exclusions(args: Sequence[str]) -> tuple[str, ...]:
    """`receive ...` with the dangerous properties excluded."""
    excluded = [w for p in EXCLUDED_PROPERTIES for w in ("-x", p)]
    return (args[0], *excluded, *args[1:])


# ---------------------------------------------------------------------------- capabilities


def capabilities_from_usage(usage: str, allow_output: str) -> dict[str, bool]:
    """What this ZFS offers, read from its usage text and from `zfs allow`."""
    allow_broken = ("pyzfs" in allow_output or "unrecognized command" in allow_output
                    or "failed to initialize" in allow_output)
    has_allow = any(ln.strip().startswith("allow ") for ln in usage.splitlines())
    return {"allow": has_allow and not allow_broken,
            **capabilities.from_usage(usage).to_json()}


def _output(zfs_argv: Sequence[str], args: list[str]) -> str:
    try:
        proc = subprocess.run([*zfs_argv, *args], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=_PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout + proc.stderr).decode("utf-8", "replace")


def probe(zfs_argv: Sequence[str]) -> dict[str, bool]:
    # `zfs` alone prints the usage of every subcommand and changes nothing.
    return capabilities_from_usage(_output(zfs_argv, []), _output(zfs_argv, ["allow"]))


def probe_exclusions(zfs_argv: Sequence[str]) -> bool:
    return excludes_properties(_output(zfs_argv, []))


def wire_tools() -> list[str]:
    """Which of the wire tools (compressors, mbuffer) are on this agent's PATH."""
    return [t for t in capabilities.WIRE_TOOLS if shutil.which(t)]


# ---------------------------------------------------------------------------- running


class AgentLog:
    """One line per request: syslog (auth) where there is one, and the --log file."""

    def __init__(self, service: str, path: str | None) -> None:
        self.service = service
        self.path = path

    def write(self, level: str, message: str) -> None:
        text = f"agent[{self.service}] {message}"
        try:
            import syslog  # not on every platform

            syslog.openlog("zfsrepl-agent", 0, syslog.LOG_AUTH)
            syslog.syslog(syslog.LOG_WARNING if level != "INFO" else syslog.LOG_INFO, text)
        except (ImportError, OSError):
            pass
        if self.path:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(f"{stamp} {level} {text}\n")
            except OSError:
                pass  # a full disk must not let a request through or block one


def _shown(command: str) -> str:
    return command if len(command) <= 300 else command[:300] + "..."


def inspect(zfs_argv: Sequence[str], args: list[str]) -> dict[str, str] | Refused:
    """Run the listing `inspect_args` made: {dataset: role}, or why it cannot be read
    (then nothing runs: a check that cannot be made is a refusal)."""
    what = "what the request would change"
    try:
        proc = subprocess.run([*zfs_argv, *args], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=_CHECK_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return Refused(f"zfs did not answer within {_CHECK_TIMEOUT} s when asked {what}; "
                       "try again when this host is less busy")
    except OSError as exc:
        return Refused(f"cannot run {zfs_argv[0]} to read {what}: {exc.strerror}")
    if proc.returncode != 0:
        # a missing filesystem is an answer (a full receive creates it); anything else
        # is a check that could not be made
        problems = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines()
                    if ln.strip() and zfserrors.kind_of_line(ln) is not zfserrors.DatasetMissing]
        if problems or proc.returncode < 0:
            return Refused(f"cannot read {what}: "
                           f"{problems[0] if problems else f'zfs exit {proc.returncode}'}")
    return parse_roles(proc.stdout.decode("utf-8", "replace"))


def refuse(log: AgentLog, reason: str, command: str) -> int:
    print(f"zfsrepl agent: refused: {reason}", file=sys.stderr)
    log.write("WARNING", f"refused: {reason}: {_shown(command)!r}")
    return EXIT_REFUSED


def serve(raw: bytes | None, policy: Policy, log: AgentLog) -> int:
    """Handle one request; returns the exit code (exec replaces the process on success)."""
    text = decode_command(raw)
    if isinstance(text, Refused):
        shown = raw.decode("utf-8", "backslashreplace") if raw is not None else ""
        return refuse(log, text.reason, shown)
    decision = decide(text, policy)
    if isinstance(decision, Refused):
        return refuse(log, decision.reason, text)
    if isinstance(decision, Hello):
        log.write("INFO", "hello")
        print(json.dumps({"agent": "zfsrepl", "version": __version__,
                          "service": policy.service,
                          "filesystems": sorted(policy.filesystems),
                          "zfs": probe(policy.zfs_argv), "tools": wire_tools(),
                          "requests": list(AGENT_REQUESTS)},
                         sort_keys=True))
        return 0
    receive = decision.receive if isinstance(decision, Pipeline) else decision
    args = inspect_args(receive)
    existing: frozenset[str] = frozenset()
    if args:
        roles = inspect(policy.zfs_argv, args)
        refused = roles if isinstance(roles, Refused) else judge(receive, roles, policy)
        if refused:
            return refuse(log, refused.reason, text)
        assert not isinstance(roles, Refused)
        existing = frozenset(roles)
    if receive.listing:
        return run_listing(receive, policy, log)
    if receive.each:
        return run_each(receive, policy, log)
    if receive.stream:
        pipeline = decision if isinstance(decision, Pipeline) else Pipeline((), decision)
        return run_pipeline(pipeline, policy, log, text, existing)
    if receive.args[:1] in (("hold",), ("release",)):
        sub, tag, *snapshots = receive.args
        if _together(sub, dict.fromkeys(snapshots, tag), policy, log) == set(snapshots):
            return 0
        # else zfs does them all: holding or releasing again what went through is
        # harmless (the client takes zfs's "already exists" and "no such tag" lines)
    argv = [*policy.zfs_argv, *receive.args]
    log.write("INFO", f"running: {shlex.join(argv)}")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"zfsrepl agent: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        log.write("WARNING", f"cannot run {shlex.join(argv)}: {exc.strerror}")
        return EXIT_CANNOT_RUN
    raise AssertionError("unreachable")  # pragma: no cover


class _Stopped(Exception):
    """A signal asked this agent to stop while it runs a pipeline."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _exit_code(rc: int) -> int:
    return rc if rc >= 0 else 128 - rc  # killed by signal N: 128 + N, as a shell says


def _copy_to_stderr(file: IO[bytes]) -> None:
    file.seek(0)
    data = file.read()
    if data:
        try:
            sys.stderr.buffer.write(data)
            sys.stderr.flush()
        except OSError:
            pass  # the client is gone: nobody to tell


def run_listing(run: RunZfs, policy: Policy, log: AgentLog) -> int:
    """Run a `zfs get` listing and pass on only the lines about the service's own
    filesystems and their snapshots."""
    argv = [*policy.zfs_argv, *run.args]
    log.write("INFO", f"running: {shlex.join(argv)}")
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              check=False)
    except OSError as exc:
        print(f"zfsrepl agent: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        log.write("WARNING", f"cannot run {shlex.join(argv)}: {exc.strerror}")
        return EXIT_CANNOT_RUN
    sys.stdout.buffer.write(own_listing(proc.stdout, policy.filesystems, policy.recursive))
    sys.stdout.flush()
    sys.stderr.buffer.write(proc.stderr)
    sys.stderr.flush()
    return _exit_code(proc.returncode)


def run_each(run: RunZfs, policy: Policy, log: AgentLog) -> int:
    """`SUB NAME...`: `zfs SUB NAME` for each NAME in turn, going on past one that fails,
    so that one request does the work of many (a session and an agent each saved);
    destroys, where libzfs_core takes them, in one transaction group per pool.
    Standard output: one JSON object a line for each, {"name", "returncode", "stderr"},
    written as it ends. Exit 0 when every one succeeded, else 1."""
    sub, *names = run.args
    log.write("INFO", f"{sub}: {len(names)} in one request")
    failed = False
    done = (_together("destroy-snapshots", dict.fromkeys(names), policy, log)
            if sub == "destroy" else set())
    for name in names:
        if name in done:
            print(json.dumps({"name": name, "returncode": 0, "stderr": ""}), flush=True)
            continue
        argv = [*policy.zfs_argv, sub, name]
        log.write("INFO", f"running: {shlex.join(argv)}")
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  check=False)
            rc, err = proc.returncode, proc.stderr.decode("utf-8", "replace")
        except OSError as exc:
            rc, err = EXIT_CANNOT_RUN, f"zfsrepl agent: cannot run {argv[0]}: {exc.strerror}\n"
            log.write("WARNING", f"cannot run {shlex.join(argv)}: {exc.strerror}")
        failed = failed or rc != 0
        print(json.dumps({"name": name, "returncode": rc, "stderr": err}), flush=True)
    return 1 if failed else 0


def _together(op: str, items: dict[str, str | None], policy: Policy,
              log: AgentLog) -> set[str]:
    """Those of `items` (snapshots, each checked) on which lzc.py's `op` was done in
    one libzfs_core request per pool (one transaction group, not one each), where the
    agent runs the system's zfs itself, as its user, under the same `zfs allow` checks.
    The rest (a pool whose request failed: all or nothing; everything where this host
    has no libzfs_core) are left to zfs."""
    word = "destroy" if op == "destroy-snapshots" else op
    if len(items) < 2 or not capabilities.is_system_zfs(policy.zfs_argv):
        return set()
    try:
        from zfsrepl import lzc  # not everywhere the agent was copied to
    except ImportError:
        return set()
    try:
        pools = lzc.request(op, items)
    except lzc.Unavailable as exc:
        log.write("INFO", f"{word}: {exc}: zfs {word} does it")
        return set()
    done = {name for name in items if pools[lzc.pool_of(name)]["errno"] == 0
            and name not in pools[lzc.pool_of(name)]["failed"]}
    for pool, answer in pools.items():
        count = sum(1 for name in done if lzc.pool_of(name) == pool)
        log.write("INFO", f"{word}: {count} in one transaction group (pool {pool})"
                  if answer["errno"] == 0 else
                  f"{word}: pool {pool} refused them together (errno {answer['errno']}): "
                  f"zfs {word} does it")
    return done


def run_pipeline(decision: Pipeline, policy: Policy, log: AgentLog, command: str = "",
                 existing: frozenset[str] = frozenset()) -> int:
    """Run `[helper | ...] zfs receive` with OS pipes between the programs, after a look
    at the stream's first record (see streamcheck): the stream goes from sshd through
    the helpers into zfs without passing through Python; the agent reads the first
    bytes of the stream, hands them to zfs and moves the rest in the kernel (splice).

    Standard error: zfs's own lines first, and only those when it fails (the helpers'
    broken pipes that follow would hide its message); else those of a failing helper.
    A stopped agent (SIGTERM, SIGHUP, SIGINT) stops every program it started; a cut
    connection ends them one after the other, by the end of their input."""
    argvs: list[list[str]] = []
    for helper in decision.helpers:
        found = shutil.which(helper[0])
        if found is None:
            print(f"zfsrepl agent: cannot run {helper[0]}: not found on PATH", file=sys.stderr)
            log.write("WARNING", f"cannot run {helper[0]}: not found on PATH")
            return EXIT_CANNOT_RUN
        argvs.append([found, *helper[1:]])
    receive = decision.receive.args
    excluded = privileged(policy.zfs_argv, os.geteuid()) and probe_exclusions(policy.zfs_argv)
    if excluded:
        receive = with_exclusions(receive)
    argvs.append([*policy.zfs_argv, *receive])
    log.write("INFO", "running: " + " | ".join(shlex.join(a) for a in argvs))
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        errors: list[IO[bytes]] = [stack.enter_context(tempfile.TemporaryFile())
                                   for _ in argvs]
        try:
            for signum in _STOP_SIGNALS:
                signal.signal(signum, _stop)
            started = _start(argvs[:-1], errors[:-1], procs)
            if isinstance(started, str):
                print(f"zfsrepl agent: {started}", file=sys.stderr)
                log.write("WARNING", started)
                return EXIT_CANNOT_RUN
            stream = started
            if stream is not None:
                stack.callback(stream.close)
            upstream = sys.stdin.fileno() if stream is None else stream.fileno()
            header = _read_up_to(upstream, streamcheck.HEADER_BYTES)
            checked = read_stream(header, upstream, decision.receive, existing, excluded)
            if isinstance(checked, Refused):
                if stream is not None:
                    stream.close()  # a helper still writing gets a broken pipe
                if len(header) < streamcheck.HEADER_BYTES:
                    # the stream ended: a helper that failed says why better
                    codes = [_exit_code(proc.wait()) for proc in procs]
                    failed = _helper_failure(codes, argvs, errors, log)
                    if failed:
                        return failed
                return refuse(log, checked.reason, command)
            problem = _start_receive(argvs[-1], errors[-1], procs, checked, upstream)
            if stream is not None:
                stream.close()  # zfs stopped early: the helpers must not wait for a reader
            if problem:
                print(f"zfsrepl agent: {problem}", file=sys.stderr)
                log.write("WARNING", problem)
                return EXIT_CANNOT_RUN
            codes = [_exit_code(proc.wait()) for proc in procs]
        except _Stopped as exc:
            log.write("WARNING", f"stopped by signal {exc.args[0]} in: "
                                 + " | ".join(shlex.join(a) for a in argvs))
            return 128 + int(exc.args[0])
        finally:
            for signum in _STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)  # the clean-up is not cut short
            _end(procs)
            for signum in _STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
        return _report(codes, argvs, errors, log)


def read_stream(header: bytes, upstream: int, run: RunZfs, existing: frozenset[str],
                excluded: bool) -> bytes | Refused:
    """The first bytes of the stream for `run`, checked before zfs sees any: `header`
    (HEADER_BYTES of it, read), and for a replication stream the rest of its BEGIN
    record and its list of filesystems, read from `upstream`; or why it is refused.
    `existing`: the datasets the look before the request found; `excluded`: zfs runs
    with the dangerous properties excluded (-x)."""
    checked = streamcheck.check_begin(header, replication=run.replication is not None)
    if isinstance(checked, streamcheck.BadStream):
        return Refused(checked.reason)
    if run.replication is None:
        return header
    prefix = header + _read_up_to(
        upstream, streamcheck.RECORD_BYTES - len(header) + checked.payload)
    return judge_replication(streamcheck.check_replication(prefix), run.replication,
                             existing, excluded) or prefix


def judge_replication(found: streamcheck.Replication | streamcheck.BadStream, target: str,
                      existing: frozenset[str], excluded: bool) -> Refused | None:
    """Whether a replication stream that brings `found` may be received into `target`."""
    if isinstance(found, streamcheck.BadStream):
        return Refused(found.reason)
    if found.incremental and target not in existing:
        # zfs would look for the base snapshot elsewhere in the pool (zfs-fuse does)
        return Refused(f"{target!r} does not exist: an incremental replication stream is "
                       "received only into an existing filesystem")
    if found.harmful and not excluded:
        more = f" and {len(found.harmful) - 3} more" if len(found.harmful) > 3 else ""
        return Refused(f"the stream would set {'; '.join(found.harmful[:3])}{more}: "
                       "properties that reach root here, and this zfs cannot leave them "
                       "out (no receive -x, or it does not run as root); on the source, "
                       "`zfs inherit` them below the service's parent (or set them off)")
    return None


def _start(argvs: list[list[str]], errors: list[IO[bytes]],
           procs: list[subprocess.Popen[bytes]]) -> IO[bytes] | str | None:
    """Start each helper reading the one before (the first: this process's standard
    input, the stream from sshd) into `procs`; the last one's output (None without
    helpers: the stream is standard input), or why one cannot be started."""
    upstream: int | IO[bytes] = sys.stdin.fileno()
    for argv, err in zip(argvs, errors):
        try:
            proc = subprocess.Popen(argv, stdin=upstream, stdout=subprocess.PIPE, stderr=err)
        except OSError as exc:
            return f"cannot run {shlex.join(argv)}: {exc.strerror}"
        finally:
            if not isinstance(upstream, int):
                upstream.close()  # the program just started holds the read end now
        procs.append(proc)
        assert proc.stdout is not None
        upstream = proc.stdout
    return None if isinstance(upstream, int) else upstream


def _read_up_to(fd: int, size: int) -> bytes:
    """The first `size` bytes from `fd`, fewer if the stream ends before."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _start_receive(argv: list[str], err: IO[bytes], procs: list[subprocess.Popen[bytes]],
             header: bytes, upstream: int) -> str | None:
    """Start zfs receive (into `procs`) and give it `header`, then the rest of the stream
    from `upstream`; why it cannot be started, or None."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=err)
    except OSError as exc:
        return f"cannot run {shlex.join(argv)}: {exc.strerror}"
    procs.append(proc)
    assert proc.stdin is not None
    with proc.stdin:
        try:
            view = memoryview(header)
            while view:
                view = view[os.write(proc.stdin.fileno(), view):]
            _pass_on(upstream, proc.stdin.fileno())
        except BrokenPipeError:
            pass  # zfs stopped reading: its exit status and message tell why
    return None


_CHUNK = 1 << 20


def _pass_on(src: int, dst: int) -> None:
    """Everything from `src` into the pipe `dst`, moved by the kernel: splice where there
    is one (Linux), else `cat`; the stream's bytes never pass through Python."""
    splice = _splicer()
    if splice is not None:
        try:
            while splice(src, dst, _CHUNK) > 0:
                pass
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this kind of input cannot be spliced
                raise
    subprocess.run(["cat"], stdin=src, stdout=dst, check=False)


def _splicer() -> Callable[[int, int, int], int] | None:
    """splice(2) as a function (src, dst, count) -> bytes moved: os.splice (Python 3.10
    and later), else libc's through ctypes on Linux; None elsewhere."""
    if hasattr(os, "splice"):
        return os.splice  # type: ignore[no-any-return,unused-ignore]
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # here: only Python 3.9 needs it, and the agent starts on every command

    try:
        libc_splice = ctypes.CDLL(None, use_errno=True).splice
    except (OSError, AttributeError):
        return None
    libc_splice.restype = ctypes.c_ssize_t
    libc_splice.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                            ctypes.c_size_t, ctypes.c_uint]

    def splice(src: int, dst: int, count: int) -> int:
        while True:
            moved = int(libc_splice(src, None, dst, None, count, 0))
            if moved >= 0:
                return moved
            code = ctypes.get_errno()
            if code != errno.EINTR:  # a signal's handler runs (and may raise) here
                raise OSError(code, os.strerror(code))

    return splice


def _end(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop those of `procs` still running (after a signal, or a start that failed)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _report(codes: list[int], argvs: list[list[str]], errors: list[IO[bytes]],
            log: AgentLog) -> int:
    """Pass on what went wrong; the pipeline's exit code: zfs's, else that of the first
    helper that failed (a helper's failure is the stream's failure)."""
    *helper_codes, zfs_code = codes
    _copy_to_stderr(errors[-1])  # zfs's own lines (a failure, or warnings) first
    if zfs_code != 0:
        log.write("WARNING", f"zfs receive failed (exit {zfs_code})")
        return zfs_code
    return _helper_failure(helper_codes, argvs, errors, log)


def _helper_failure(codes: list[int], argvs: list[list[str]], errors: list[IO[bytes]],
                    log: AgentLog) -> int:
    """The exit code of the first helper that failed, its lines passed on; 0 if none."""
    for argv, code, err in zip(argvs, codes, errors):
        if code != 0:
            _copy_to_stderr(err)
            log.write("WARNING", f"{os.path.basename(argv[0])} failed (exit {code})")
            return code
    return 0


# ---------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # A broken forced command: one line, no usage dump, nothing run.
        print(f"zfsrepl agent: bad forced command in authorized_keys: {message}",
              file=sys.stderr)
        sys.exit(EXIT_REFUSED)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="zfsrepl agent",
                description="Forced command of a service's key on the destination: runs "
                            "the request in SSH_ORIGINAL_COMMAND if the service may.")
    p.add_argument("--service", required=True)
    p.add_argument("--filesystem", action="append", required=True, metavar="FS",
                   help="a destination filesystem of the service (repeat for each)")
    p.add_argument("--source-user", required=True)
    p.add_argument("--destination-user", required=True)
    p.add_argument("--destination-host", required=True)
    p.add_argument("--zfs-command", default="zfs",
                   help="how the agent runs zfs (the definition's destination zfs_command)")
    p.add_argument("--log", metavar="FILE", help="also append log lines to FILE")
    p.add_argument("--recursive", action="store_true",
                   help="the one --filesystem is a parent: all below it are the service's, "
                        "received as one replication stream (the definition's recursive)")
    return p


def policy_from_args(args: argparse.Namespace) -> Policy:
    try:
        zfs_argv = tuple(shlex.split(args.zfs_command))
    except ValueError:
        zfs_argv = ()
    if not zfs_argv:
        build_parser().error(f"--zfs-command {args.zfs_command!r} is not a command")
    return Policy(service=args.service, filesystems=frozenset(args.filesystem),
                  naming=SnapshotNaming(args.source_user, args.destination_user,
                                        args.destination_host),
                  zfs_argv=zfs_argv, recursive=args.recursive)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    policy = policy_from_args(args)
    raw = os.environb.get(b"SSH_ORIGINAL_COMMAND")
    return serve(raw, policy, AgentLog(policy.service, args.log))


if __name__ == "__main__":  # pragma: no cover - `python -m zfsrepl.agent`
    sys.exit(main())
