"""Typed wrappers over the `zfs` command line of one host.

Only forms that work on every ZFS from the Solaris 10 era (pool v23, zfs-fuse)
to current OpenZFS are used here; richer features are probed, never assumed.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from zfsrepl import capabilities, lzc, unchanged, zfserrors
from zfsrepl.capabilities import Capabilities, is_system_zfs
from zfsrepl.errors import CommandError
from zfsrepl.host import Host, LocalHost, Result, Tools, find_tools, first_line, pipeline_command
from zfsrepl.log import logger
from zfsrepl.plan import Send
from zfsrepl.snapshots import Snapshot

# zfsrepl:role is read on the filesystems' lines (the interlock, see failover.py);
# ZFS prints "-" for it where it is not set.
ROLE_PROPERTY = "zfsrepl:role"
_LIST_PROPS = ("guid", "createtxg", "creation", "userrefs", ROLE_PROPERTY)
# Read on the filesystems' lines where the host has the feature: the token of a cut
# resumable receive (destination), and whether a filesystem is encrypted (source).
RESUME_TOKEN = "receive_resume_token"
ENCRYPTION = "encryption"
OPTIONAL_LIST_PROPS = (RESUME_TOKEN, ENCRYPTION)
# Bytes written since the newest snapshot (skip_unchanged); not on pool version 23.
WRITTEN = "written"
# When a snapshot of the filesystem was last created, destroyed or renamed (seconds;
# OpenZFS 2.2 and later): the listing cache (listing_cache.py) lists again only the
# filesystems where it moved. Read with the filesystems' own properties of the listing,
# which are never cached (a failover sets zfsrepl:role without touching a snapshot).
SNAPSHOTS_CHANGED = "snapshots_changed"
FS_LIST_PROPS = (ROLE_PROPERTY, RESUME_TOKEN, ENCRYPTION)
# The exit status of a request the zfsrepl agent or zfs wrapper refuses (agent.py).
_EXIT_REFUSED = 126
# What the cache needs of a snapshot this cycle took, read after it was taken.
_NEW_SNAPSHOT_PROPS = ("guid", "createtxg", "creation", "userrefs")
_BUSY_RETRIES = 20
# The arguments of one batched hold or release, in bytes: each call stays well under
# the agent's limit on a request (agent.MAX_COMMAND_BYTES, 64 KiB, quoting included).
_MAX_BATCH_BYTES = 32 * 1024
# What a host turned out to lack, in CapabilityCache.lacks: libzfs_core (see lzc.py).
LIBZFS_CORE = "libzfs_core"
# lzc.py's requests: what each does, for the log and the listing cache's journal.
_LZC_DONE = {"destroy-snapshots": ("snapshots destroyed", "destroy"),
             "destroy-bookmarks": ("bookmarks destroyed", "destroy"),
             "bookmark": ("bookmarks made", "bookmark"),
             "hold": ("snapshots held", "hold"),
             "release": ("holds released", "release")}


@dataclass
class FsState:
    """One filesystem as one listing call saw it."""

    snapshots: list[Snapshot] = field(default_factory=list)
    bookmarks: list[Snapshot] = field(default_factory=list)  # name: after the '#'
    role: str | None = None
    resume_token: str | None = None  # a cut resumable receive left this
    encryption: str | None = None  # None or "off": not encrypted (or not known)

    @property
    def encrypted(self) -> bool:
        return self.encryption not in (None, "off")


CacheKey = tuple[str, object, tuple[str, ...]]


class CapabilityCache:
    """Probed capabilities kept beyond one `Zfs` object: by host and user (the host's
    label, and its port where it has one) and zfs command. `zfsrepl run` keeps one for
    its whole life, so a host is probed once, not once per cycle and side;
    `clear()` (after a failed attempt) has every host probed again. The wire tools a
    host has (compressors, mbuffer) are kept the same way."""

    def __init__(self) -> None:
        self._found: dict[CacheKey, Capabilities] = {}
        self._tools: dict[CacheKey, Tools] = {}
        # (host, property) this host's ZFS turned out not to have (`written` on pool v23)
        self._lacking: set[tuple[CacheKey, str]] = set()

    def get(self, key: CacheKey) -> Capabilities | None:
        return self._found.get(key)

    def put(self, key: CacheKey, caps: Capabilities) -> None:
        self._found[key] = caps

    def forget(self, key: CacheKey) -> None:
        self._found.pop(key, None)
        self._tools.pop(key, None)
        self._lacking = {k for k in self._lacking if k[0] != key}

    def lacks(self, key: CacheKey, prop: str) -> bool:
        return (key, prop) in self._lacking

    def put_lacking(self, key: CacheKey, prop: str) -> None:
        self._lacking.add((key, prop))

    def get_tools(self, key: CacheKey) -> Tools | None:
        return self._tools.get(key)

    def put_tools(self, key: CacheKey, tools: Tools) -> None:
        self._tools[key] = tools

    def clear(self) -> None:
        self._found.clear()
        self._tools.clear()
        self._lacking.clear()

    def __len__(self) -> int:
        return len(self._found)


class Zfs:
    """The zfs command of one host, run as `zfs_argv` (e.g. ["sudo", "-n", "zfs"])."""

    def __init__(self, host: Host, zfs_argv: list[str],
                 cache: CapabilityCache | None = None) -> None:
        self.host = host
        self.zfs_argv = list(zfs_argv)
        self._props: tuple[str, ...] = _LIST_PROPS
        self._caps: Capabilities | None = None
        self._tools: Tools | None = None
        self._cache = cache
        self._no_written = False
        self._no_changed = False
        self._no_lzc = False
        # Where a list, each change this object made that went through is added to it
        # as (what, FS@SNAP or FS#BOOKMARK): the listing cache predicts from it what the
        # next listing would show (see listing_cache.py).
        self.journal: list[tuple[str, str]] | None = None

    def _cache_key(self) -> CacheKey:
        port = getattr(getattr(self.host, "endpoint", None), "port", None)
        return (self.host.label, port, tuple(self.zfs_argv))

    def identity(self) -> list[object]:
        """Which host, user and zfs command this is, as JSON can keep it: a listing kept
        for another one is never used for this one."""
        label, port, argv = self._cache_key()
        return [label, port, list(argv)]

    def _note(self, what: str, *names: str) -> None:
        if self.journal is not None:
            self.journal.extend((what, name) for name in names)

    def capabilities(self) -> Capabilities:
        """What this host's ZFS offers, probed once (one call: its usage text); once
        for the life of the cache where there is one."""
        if self._caps is None and self._cache is not None:
            self._caps = self._cache.get(self._cache_key())
        if self._caps is None:
            result = self.host.run(self.argv(), check=False)
            self._caps = capabilities.from_usage(result.stdout + "\n" + result.stderr)
            logger.debug("%s: zfs offers %s", self.label,
                         ", ".join(self._caps.names()) or "only the basic commands")
            if self._cache is not None:
                self._cache.put(self._cache_key(), self._caps)
        return self._caps

    def tools(self) -> Tools:
        """Which wire tools (compressors, mbuffer) this host has, looked up once (one or
        two calls, see host.find_tools); once for the life of the cache where there is
        one."""
        if self._tools is None and self._cache is not None:
            self._tools = self._cache.get_tools(self._cache_key())
        if self._tools is None:
            self._tools = find_tools(self.host)
            logger.debug("%s: wire tools found: %s%s", self.label,
                         ", ".join(sorted(self._tools.found)) or "none",
                         " (through the zfsrepl agent)" if self._tools.agent else "")
            if self._cache is not None:
                self._cache.put_tools(self._cache_key(), self._tools)
        return self._tools

    def forget_capabilities(self) -> None:
        """Probe again at the next `capabilities()` and `tools()` (and drop the cached
        probes), and whether it has `written`."""
        self._caps = None
        self._tools = None
        self._no_written = False
        self._no_changed = False
        self._no_lzc = False
        if self._cache is not None:
            self._cache.forget(self._cache_key())

    @property
    def label(self) -> str:
        return self.host.label

    def argv(self, *args: str) -> list[str]:
        return [*self.zfs_argv, *args]

    def run(self, *args: str, check: bool = True) -> str:
        """zfs's output; a failure raises the zfserrors class its text names."""
        try:
            return self.host.run(self.argv(*args), check=check).stdout
        except CommandError as exc:
            raise zfserrors.typed(exc) from None

    def _failed(self, result: Result) -> CommandError:
        return zfserrors.failed(f"{self.label}: {first_line(result.stderr) or 'zfs failed'}",
                                argv=result.argv, stderr=result.stderr,
                                returncode=result.returncode)

    # -- reading ------------------------------------------------------------------

    def snapshots(self, filesystems: list[str]) -> dict[str, list[Snapshot] | None]:
        """Each filesystem's snapshots (None: the filesystem does not exist), in one call."""
        return self.listing(filesystems)[0]

    def listing(self, filesystems: list[str]) -> tuple[dict[str, list[Snapshot] | None],
                                                       dict[str, str]]:
        """`snapshots()`, and the zfsrepl:role of the filesystems where it is set, from
        the same call."""
        states = self.states(filesystems)
        roles = {fs: st.role for fs, st in states.items() if st is not None and st.role}
        return {fs: (st.snapshots if st else None) for fs, st in states.items()}, roles

    def states(self, filesystems: list[str], extra: tuple[str, ...] = ()
               ) -> dict[str, FsState | None]:
        """Snapshots, bookmarks, role and the `extra` properties (OPTIONAL_LIST_PROPS)
        of each filesystem (None: it does not exist), in one call."""
        if not filesystems:
            return {}
        props = (*self._props, *(p for p in extra if p in OPTIONAL_LIST_PROPS))
        result = self.host.run(
            self.argv("get", "-Hp", "-r", "-d", "1", "-o", "name,property,value",
                      ",".join(props), *filesystems), check=False)
        if result.returncode != 0 and "userrefs" in self._props \
                and isinstance(self._failed(result), zfserrors.UnknownProperty):
            # ZFS before pool version 18 has no holds (nor userrefs): list without them.
            self._props = tuple(p for p in self._props if p != "userrefs")
            return self.states(filesystems, extra)
        self._raise_unless_only_missing(result.returncode, result.stderr, result.argv)

        wanted = set(filesystems)
        out: dict[str, FsState | None] = {fs: None for fs in filesystems}
        snap_props: dict[str, dict[str, str]] = {}
        mark_props: dict[str, dict[str, str]] = {}
        for line in result.stdout.splitlines():
            parts = line.rsplit("\t", 2)
            if len(parts) != 3:
                continue
            name, prop, value = parts
            if "@" in name:
                if name.split("@", 1)[0] in wanted:
                    snap_props.setdefault(name, {})[prop] = value
            elif "#" in name:
                if name.split("#", 1)[0] in wanted:
                    mark_props.setdefault(name, {})[prop] = value
            elif name in wanted:
                st = out[name]
                if st is None:
                    st = out[name] = FsState()
                _put_property(st, prop, value)
        for records, sep in ((snap_props, "@"), (mark_props, "#")):
            for full, values in records.items():
                fs, name = full.split(sep, 1)
                found = out[fs]
                if found is None:
                    continue
                target = found.snapshots if sep == "@" else found.bookmarks
                target.append(Snapshot(
                    filesystem=fs, name=name, guid=_int(values.get("guid")),
                    createtxg=_int(values.get("createtxg")) or 0,
                    creation=_int(values.get("creation")) or 0,
                    userrefs=_int(values.get("userrefs")) or 0,
                ))
        for st in out.values():
            if st is not None:
                st.snapshots.sort(key=lambda s: (s.createtxg, s.creation))
                st.bookmarks.sort(key=lambda s: (s.createtxg, s.creation))
        return out

    def _lacks_written(self) -> bool:
        """Whether this host's ZFS is known to have no `written` property (found out by
        an earlier `written()`, in this object or the cache), without asking it."""
        if self._no_written:
            return True
        return self._cache is not None and self._cache.lacks(self._cache_key(), WRITTEN)

    def written(self, filesystems: list[str]) -> dict[str, int | None] | None:
        """Bytes written to each filesystem since its newest snapshot, in one call (None
        for a filesystem it gives no number for); None where this ZFS has no `written`
        property at all (pool version 23, zfs-fuse)."""
        if self._lacks_written():
            return None
        if not filesystems:
            return {}
        result = self.host.run(self.argv("get", "-H", "-p", "-o", "name,value", WRITTEN,
                                         *filesystems), check=False)
        if result.returncode != 0 \
                and isinstance(self._failed(result), zfserrors.UnknownProperty):
            self._no_written = True
            if self._cache is not None:
                self._cache.put_lacking(self._cache_key(), WRITTEN)
            return None
        self._raise_unless_only_missing(result.returncode, result.stderr, result.argv)
        return unchanged.parse_written(result.stdout, filesystems)

    def lacks_snapshots_changed(self) -> bool:
        """Whether this host's ZFS is known to have no `snapshots_changed` (found out by
        an earlier `changed()`), without asking it."""
        if self._no_changed:
            return True
        return self._cache is not None and self._cache.lacks(self._cache_key(),
                                                             SNAPSHOTS_CHANGED)

    def changed(self, filesystems: list[str], extra: tuple[str, ...] = ()
                ) -> dict[str, tuple[int | None, FsState]] | None:
        """Each existing filesystem's `snapshots_changed` (None where ZFS gives no
        number) and its FsState without snapshots (role, and the `extra` of
        FS_LIST_PROPS), in one call without -r; None where this ZFS has no
        `snapshots_changed` (before OpenZFS 2.2, zfs-fuse), which is then not asked
        again."""
        if self.lacks_snapshots_changed():
            return None
        if not filesystems:
            return {}
        props = (SNAPSHOTS_CHANGED, ROLE_PROPERTY,
                 *(p for p in FS_LIST_PROPS if p in extra and p != ROLE_PROPERTY))
        result = self.host.run(self.argv("get", "-Hp", "-o", "name,property,value",
                                         ",".join(props), *filesystems), check=False)
        refused = result.returncode == _EXIT_REFUSED \
            and zfserrors.says(result.stderr, zfserrors.RefusedByRule)
        if refused or (result.returncode != 0
                       and isinstance(self._failed(result), zfserrors.UnknownProperty)):
            if refused:
                # an agent or zfs wrapper of a zfsrepl older than this look
                logger.info("%s: %s; every cycle lists in full (update zfsrepl there to "
                            "use the listing cache)", self.label,
                            first_line(result.stderr))
            self._no_changed = True
            if self._cache is not None:
                self._cache.put_lacking(self._cache_key(), SNAPSHOTS_CHANGED)
            return None
        self._raise_unless_only_missing(result.returncode, result.stderr, result.argv)
        return parse_changed(result.stdout, filesystems)

    def changed_after(self, filesystems: list[str], snapshots: list[str]
                      ) -> tuple[dict[str, int | None], dict[str, Snapshot]]:
        """After a cycle (source side): each filesystem's `snapshots_changed`, and the
        snapshots (FS@SNAP) this cycle took, in one call."""
        props = (SNAPSHOTS_CHANGED, *_NEW_SNAPSHOT_PROPS)
        result = self.host.run(self.argv("get", "-Hp", "-o", "name,property,value",
                                         ",".join(props), *filesystems, *snapshots),
                               check=False)
        if result.returncode == _EXIT_REFUSED \
            and zfserrors.says(result.stderr, zfserrors.RefusedByRule):
            # a zfs wrapper (sudo) has no such form: not asked again by this process
            self._no_changed = True
            if self._cache is not None:
                self._cache.put_lacking(self._cache_key(), SNAPSHOTS_CHANGED)
        self._raise_unless_only_missing(result.returncode, result.stderr, result.argv)
        values = {fs: v for fs, (v, _) in parse_changed(result.stdout, filesystems).items()}
        records: dict[str, dict[str, str]] = {}
        for line in result.stdout.splitlines():
            parts = line.rsplit("\t", 2)
            if len(parts) == 3 and parts[0] in snapshots:
                records.setdefault(parts[0], {})[parts[1]] = parts[2]
        found: dict[str, Snapshot] = {}
        for full, values_of in records.items():
            fs, name = full.split("@", 1)
            guid, txg = _int(values_of.get("guid")), _int(values_of.get("createtxg"))
            if guid is not None and txg is not None:
                found[full] = Snapshot(fs, name, guid, txg,
                                       _int(values_of.get("creation")) or 0,
                                       _int(values_of.get("userrefs")) or 0)
        return values, found

    def existing(self, names: list[str]) -> set[str]:
        """Which of `names` exist, in one call."""
        if not names:
            return set()
        result = self.host.run(self.argv("list", "-H", "-o", "name", *names), check=False)
        self._raise_unless_only_missing(result.returncode, result.stderr, result.argv)
        return {line for line in result.stdout.splitlines() if line in names}

    def _raise_unless_only_missing(self, returncode: int, stderr: str, argv: list[str]) -> None:
        if returncode == 0 or zfserrors.every_line(stderr, zfserrors.DatasetMissing):
            return
        raise self._failed(Result(argv, returncode, "", stderr))

    # -- changing -----------------------------------------------------------------

    def snapshot(self, filesystem: str, name: str) -> None:
        self.run("snapshot", f"{filesystem}@{name}")
        self._note("snapshot", f"{filesystem}@{name}")

    def snapshot_all(self, filesystems: Sequence[str], name: str) -> None:
        """The snapshot `name` of every one of `filesystems`, in one call (only where
        capabilities() says multi_snapshot). OpenZFS takes them atomically: one point
        in time across the filesystems, and none at all if one cannot be taken."""
        self.run("snapshot", *(f"{fs}@{name}" for fs in filesystems))
        self._note("snapshot", *(f"{fs}@{name}" for fs in filesystems))

    def destroy_snapshot(self, filesystem: str, name: str) -> None:
        """Destroy one snapshot, riding out the short 'dataset is busy' of FUSE mounts."""
        self._busy_retried("destroy", f"{filesystem}@{name}")
        self._note("destroy", f"{filesystem}@{name}")

    def destroy_snapshots(self, names: Sequence[str]) -> list[CommandError | None]:
        """Destroy each of `names` (FS@SNAP, any filesystems), going on past one that
        fails: what became of each, in order (None: destroyed). Through an agent that
        takes `destroy-many` (its hello, asked here where not yet), one request for
        them all instead of a session each; a busy one is tried again alone, as
        `destroy_snapshot` does. Where libzfs_core runs here (see `_in_one_group`), one
        transaction group for each pool's snapshots instead of one each."""
        if len(names) >= 2 and self._lzc_usable():
            done = self._in_one_group("destroy-snapshots", {"names": list(names)}, names,
                                      self._destroyed)
            if done is not None:
                return done
        if not self.takes_many_destroys(len(names)):
            return [self._destroyed(name) for name in names]
        outcomes: list[CommandError | None] = []
        for batch in _batches(names, _MAX_BATCH_BYTES):
            outcomes += self._destroy_many(batch)
        return outcomes

    def takes_many_destroys(self, count: int) -> bool:
        """Whether `destroy_snapshots` destroys `count` snapshots in one request (for
        2 the agent's hello, where not asked yet, costs what the one request saves)."""
        return count >= 2 and (self._lzc_usable() or "destroy-many" in self.tools().requests)

    def takes_many_bookmarks(self, count: int) -> bool:
        """Whether `bookmarks` and `destroy_bookmarks` take `count` in one request."""
        return count >= 2 and self._lzc_usable()

    def _destroyed(self, name: str) -> CommandError | None:
        fs, _, snap = name.partition("@")
        try:
            self.destroy_snapshot(fs, snap)
        except CommandError as exc:
            return exc
        return None

    def _destroy_many(self, names: list[str]) -> list[CommandError | None]:
        # each destroy may take what one command may (a request of many is no stall)
        each = getattr(self.host, "command_timeout", None)
        result = self.host.run(self.argv("destroy", *names), check=False,
                               timeout=None if each is None else each * len(names))
        reports: dict[str, tuple[int, str]] = {}
        for line in result.stdout.splitlines():
            report = _json_object(line)
            rc = report.get("returncode") if report is not None else None
            if report is not None and isinstance(rc, int):
                reports[str(report.get("name"))] = (rc, str(report.get("stderr", "")))
        if not reports:
            if result.returncode == _EXIT_REFUSED \
                    and zfserrors.says(result.stderr, zfserrors.RefusedByRule):
                # nothing ran: one filesystem refused (taken over) keeps no other's
                # retention from going on, so each is asked alone
                return [self._destroyed(name) for name in names]
            # cut before its first answer: each may or may not be gone
            self._note("other", *names)
            error = self._failed(result)
            return [error for _ in names]
        outcomes: list[CommandError | None] = []
        for name in names:
            if name not in reports:  # cut before its answer: gone or not, unknown
                self._note("other", name)
            rc, stderr = reports.get(name, (None, result.stderr or "the request ended first"))
            if rc == 0:
                self._note("destroy", name)
                outcomes.append(None)
                continue
            error = zfserrors.failed(f"{self.label}: {first_line(stderr) or 'zfs failed'}",
                                     argv=self.argv("destroy", name), stderr=stderr,
                                     returncode=rc)
            # the short "dataset is busy" of FUSE mounts: ridden out alone
            outcomes.append(self._destroyed(name) if isinstance(error, zfserrors.DatasetBusy)
                            else error)
        return outcomes

    def rename(self, filesystem: str, new_name: str) -> None:
        """Rename a filesystem (no options: never its snapshots alone, never -p),
        riding out a short 'dataset is busy'; zfs-fuse refuses it while it is mounted."""
        self._busy_retried("rename", filesystem, new_name)

    def _busy_retried(self, *args: str) -> None:
        for attempt in range(_BUSY_RETRIES):
            result = self.host.run(self.argv(*args), check=False)
            if result.returncode == 0:
                return
            error = self._failed(result)
            if not isinstance(error, zfserrors.DatasetBusy) or attempt == _BUSY_RETRIES - 1:
                raise error
            time.sleep(0.1 * (attempt + 1))

    def clone(self, snapshot: str, filesystem: str, *, readonly: bool = False) -> None:
        """A new filesystem from `snapshot` (FS@SNAP). Where the user may not mount
        (Linux under `zfs allow`), zfs creates it and only the mount fails: that is done,
        as a replica is never mounted by a receive either."""
        args = ["clone", *(["-o", "readonly=on"] if readonly else []), snapshot, filesystem]
        try:
            self.run(*args)
        except zfserrors.CreatedNotMounted:
            logger.debug("%s: %s created from %s, not mounted", self.label, filesystem,
                         snapshot)

    def promote(self, filesystem: str) -> None:
        """Make the clone `filesystem` own the snapshots up to its origin."""
        self.run("promote", filesystem)

    def rollback(self, filesystem: str, name: str) -> None:
        """Roll back to `name`, which must be the newest snapshot (no -r: nothing else
        is destroyed)."""
        self._note("other", f"{filesystem}@{name}")  # before: a failure may have done it
        self.run("rollback", f"{filesystem}@{name}")

    def set_property(self, filesystem: str, prop: str, value: str) -> None:
        self.run("set", f"{prop}={value}", filesystem)

    def get_properties(self, filesystem: str, props: list[str]) -> dict[str, str]:
        """Values (-p) of `props` of one dataset."""
        out = self.run("get", "-Hp", "-o", "property,value", ",".join(props), filesystem)
        values: dict[str, str] = {}
        for line in out.splitlines():
            prop, _, value = line.partition("\t")
            values[prop] = value
        return values

    def mount(self, filesystem: str) -> None:
        self.run("mount", filesystem)

    def unmount(self, filesystem: str) -> None:
        self.run("unmount", filesystem)

    # -- holds and bookmarks (only where capabilities() says the host has them) -------

    def hold(self, tag: str, snapshots: Sequence[str]) -> None:
        """Hold each of `snapshots` (FS@SNAP) with `tag`, in one call (more only for a
        very long list); a hold with that tag already there is fine."""
        self._hold_or_release("hold", tag, snapshots, zfserrors.HoldExists)

    def release(self, tag: str, snapshots: Sequence[str]) -> None:
        """Release the hold `tag` of each of `snapshots` (FS@SNAP), in one call (more
        only for a very long list); no such hold is fine."""
        self._hold_or_release("release", tag, snapshots, zfserrors.NoSuchHold)

    def _hold_or_release(self, sub: str, tag: str, snapshots: Sequence[str],
                         harmless: type[zfserrors.ZfsError]) -> None:
        if len(snapshots) >= 2 and self._lzc_usable():
            # zfs hold and release wait for a transaction group per snapshot

            def one(name: str) -> CommandError | None:
                try:
                    self._hold_or_release(sub, tag, [name], harmless)
                except CommandError as exc:
                    return exc
                return None

            done = self._in_one_group(sub, {"holds": {s: tag for s in snapshots}},
                                      snapshots, one)
            if done is not None:
                failed = [outcome for outcome in done if outcome is not None]
                if failed:
                    raise failed[0]
                return
        # zfs goes on after a snapshot it cannot hold or release, prints one line for
        # it and fails at the end: the call went well if every line is `harmless`.
        for batch in _batches(snapshots, _MAX_BATCH_BYTES):
            result = self.host.run(self.argv(sub, tag, *batch), check=False)
            if result.returncode != 0 and not zfserrors.every_line(result.stderr, harmless):
                raise self._failed(result)
            self._note(sub, *batch)

    def holds(self, snapshots: list[Snapshot]) -> dict[str, set[str]]:
        """The hold tags of each snapshot (by full name FS@SNAP), in one call."""
        if not snapshots:
            return {}
        out = self.run("holds", "-H", *(s.full_name for s in snapshots))
        found: dict[str, set[str]] = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and "@" in parts[0]:
                found.setdefault(parts[0], set()).add(parts[1])
        return found

    def bookmark(self, filesystem: str, name: str) -> None:
        """Bookmark FS@NAME as FS#NAME (an existing bookmark of that name is fine)."""
        result = self.host.run(self.argv("bookmark", f"{filesystem}@{name}",
                                         f"{filesystem}#{name}"), check=False)
        if result.returncode != 0:
            error = self._failed(result)
            if not isinstance(error, zfserrors.DatasetExists):
                raise error
        self._note("bookmark", f"{filesystem}#{name}")

    def destroy_bookmark(self, filesystem: str, name: str) -> None:
        self.run("destroy", f"{filesystem}#{name}")
        self._note("destroy", f"{filesystem}#{name}")

    def bookmarks(self, bases: Sequence[tuple[str, str]]) -> list[CommandError | None]:
        """`bookmark(fs, name)` for each of `bases`, going on past one that fails: what
        became of each, in order (None: made). In one request where `takes_many_bookmarks`."""
        names = [f"{fs}#{name}" for fs, name in bases]
        of = dict(zip(names, bases))

        def one(bookmark: str) -> CommandError | None:
            try:
                self.bookmark(*of[bookmark])
            except CommandError as exc:
                return exc
            return None

        if self.takes_many_bookmarks(len(names)):
            request = {"bookmarks": {n: f"{fs}@{name}" for n, (fs, name) in of.items()}}
            done = self._in_one_group("bookmark", request, names, one)
            if done is not None:
                return done
        return [one(name) for name in names]

    def destroy_bookmarks(self, names: Sequence[str]) -> list[CommandError | None]:
        """Destroy each of `names` (FS#BOOKMARK), going on past one that fails, as
        `bookmarks` does."""
        def one(bookmark: str) -> CommandError | None:
            try:
                self.destroy_bookmark(*bookmark.split("#", 1))
            except CommandError as exc:
                return exc
            return None

        if self.takes_many_bookmarks(len(names)):
            done = self._in_one_group("destroy-bookmarks", {"names": list(names)}, names, one)
            if done is not None:
                return done
        return [one(name) for name in names]

    # -- many in one transaction group: libzfs_core, run by lzc.py ------------------

    def _lzc_usable(self) -> bool:
        """Whether lzc.py's requests may be tried: zfs runs on this machine as this
        user, as `zfs` or the system's zfs by its path (any other zfs_command, e.g.
        through sudo or a wrapper, is always what runs), and libzfs_core has not turned
        out to be missing here."""
        return (isinstance(self.host, LocalHost) and is_system_zfs(self.zfs_argv)
                and bool(sys.executable)  # the Python that runs lzc.py
                and not self._no_lzc
                and not (self._cache is not None
                         and self._cache.lacks(self._cache_key(), LIBZFS_CORE)))

    def _in_one_group(self, op: str, request: Mapping[str, object], names: Sequence[str],
                      one: Callable[[str], CommandError | None]
                      ) -> list[CommandError | None] | None:
        """`request` (lzc.py's `op` on `names`) in one libzfs_core request per pool:
        what became of each name, in order. A pool whose request failed (all or
        nothing: none of its names was done) has each name done alone by `one`, through
        zfs, which says what is wrong. None where lzc.py gave no answer: nothing was
        done, the caller goes on with zfs. A request that did not finish in time leaves
        each name unknown to the listing cache and fails each."""
        each = getattr(self.host, "command_timeout", None)
        try:
            result = self.host.run([sys.executable, "-I", lzc.__file__], check=False,
                                   input=json.dumps({"op": op, **request}).encode(),
                                   timeout=None if each is None else each * len(names))
        except CommandError as exc:
            self._note("other", *names)
            return [exc for _ in names]
        if result.returncode == lzc.EXIT_UNAVAILABLE:
            logger.debug("%s: %s: one zfs call each", self.label, first_line(result.stderr))
            self._no_lzc = True
            if self._cache is not None:
                self._cache.put_lacking(self._cache_key(), LIBZFS_CORE)
            return None
        answer = _json_object(result.stdout) if result.returncode == 0 else None
        pools = answer.get("pools") if answer is not None else None
        if not isinstance(pools, dict):
            logger.warning("%s: %s in one request failed (%s): one zfs call each",
                           self.label, op, first_line(result.stderr) or result.returncode)
            return None
        errnos = {pool: got.get("errno") if isinstance(got, dict) else None
                  for pool, got in pools.items()}
        # skipped in a request that went through (a hold's snapshot that is gone)
        skipped = {name for got in pools.values() if isinstance(got, dict)
                   and isinstance(got.get("failed"), dict) for name in got["failed"]}
        what, journal = _LZC_DONE[op]
        outcomes: list[CommandError | None] = []
        for name in names:
            if errnos.get(lzc.pool_of(name)) == 0 and name not in skipped:
                self._note(journal, name)
                outcomes.append(None)
            else:  # all or nothing: zfs names what is wrong with this one
                outcomes.append(one(name))
        for pool, errno in errnos.items():
            if errno == 0:
                count = sum(1 for n in names if lzc.pool_of(n) == pool and n not in skipped)
                logger.info("%s: %d %s in one transaction group (pool %s)", self.label,
                            count, what, pool)
            else:
                logger.debug("%s: %s in pool %s refused (errno %s): one zfs call each",
                             self.label, op, pool, errno)
        return outcomes

    def abort_resumable(self, filesystem: str) -> None:
        """Discard the partial state of a cut resumable receive (receive -A)."""
        self._note("other", filesystem)
        self.run("receive", "-A", filesystem)

    # -- streams ------------------------------------------------------------------

    def send_args(self, filesystem: str, send: Send, *, raw: bool = False,
                  compressed: bool = False) -> list[str]:
        """The zfs arguments of one send (without the zfs command)."""
        if send.token is not None:
            return ["send", "-t", send.token]
        args = ["send"]
        if raw:
            args.append("-w")  # encrypted blocks as they are: the receiver needs no key
        elif compressed:
            args += ["-c", "-L", "-e"]
        if send.base is not None:
            if send.bookmark:
                args += ["-i", f"{filesystem}#{send.base}"]
            else:
                args += ["-I" if send.intermediates else "-i", f"{filesystem}@{send.base}"]
        args.append(f"{filesystem}@{send.target}")
        return args

    def send_argv(self, filesystem: str, send: Send, *, raw: bool = False,
                  compressed: bool = False) -> list[str]:
        return self.host.command(self.argv(*self.send_args(filesystem, send, raw=raw,
                                                           compressed=compressed)))

    def estimate(self, filesystem: str, send: Send, *, raw: bool = False,
                 compressed: bool = False) -> int | None:
        """The stream size `send -nvP` predicts (None where it cannot tell)."""
        args = self.send_args(filesystem, send, raw=raw, compressed=compressed)
        result = self.host.run(self.argv("send", "-nvP", *args[1:]), check=False)
        if result.returncode != 0:
            return None
        found = re.findall(r"^size\s+(\d+)\s*$", result.stdout + "\n" + result.stderr, re.M)
        return int(found[-1]) if found else None

    def receive_args(self, filesystem: str, *, incremental: bool, resumable: bool = False,
                     readonly: bool = False) -> list[str]:
        """The zfs arguments of one receive (without the zfs command)."""
        # -u: a replica is never mounted by a receive. -F (incremental only): roll the
        # replica back to its newest snapshot first, discarding changes made there.
        # -s: a cut stream leaves a resume token. -o readonly=on (a full receive): the
        # replica is read-only until a failover makes it writable.
        args = ["receive", "-u"]
        if incremental:
            args.append("-F")
        if resumable:
            args.append("-s")
        if readonly and not incremental:
            args += ["-o", "readonly=on"]
        args.append(filesystem)
        return args

    def receive_argv(self, filesystem: str, *, incremental: bool, resumable: bool = False,
                     readonly: bool = False) -> list[str]:
        return self.host.command(self.argv(*self.receive_args(
            filesystem, incremental=incremental, resumable=resumable, readonly=readonly)))

    def receive_pipeline_argv(self, filesystem: str, helpers: list[list[str]], *, agent: bool,
                              incremental: bool, resumable: bool = False,
                              readonly: bool = False) -> list[str]:
        """A receive behind `helpers` (a decompressor, mbuffer) on this host:
        `helper | ... | zfs receive ...`. `agent`: the host runs requests through the
        zfsrepl agent, which gets the stages bare (see host.pipeline_text)."""
        receive = self.argv(*self.receive_args(filesystem, incremental=incremental,
                                               resumable=resumable, readonly=readonly))
        return pipeline_command(self.host, [*helpers, receive], quiet_helpers=not agent)


def parse_changed(output: str, filesystems: list[str]
                  ) -> dict[str, tuple[int | None, FsState]]:
    """`zfs get -Hp -o name,property,value snapshots_changed,...` output: each listed
    filesystem's value (None: no number, "-" where it was never set) and its FsState
    without snapshots; a filesystem not in the output does not exist."""
    wanted = set(filesystems)
    out: dict[str, tuple[int | None, FsState]] = {}
    for line in output.splitlines():
        parts = line.rsplit("\t", 2)
        if len(parts) != 3 or parts[0] not in wanted:
            continue
        name, prop, value = parts
        changed, st = out.get(name, (None, FsState()))
        if prop == SNAPSHOTS_CHANGED:
            changed = _int(value)
        else:
            _put_property(st, prop, value)
        out[name] = (changed, st)
    return out


def _batches(words: Sequence[str], limit: int) -> Iterator[list[str]]:
    """`words` in order, cut into lists whose words (and a separator each) fit `limit`."""
    batch: list[str] = []
    size = 0
    for word in words:
        cost = len(word.encode()) + 3  # a space and the quotes the remote shell may need
        if batch and size + cost > limit:
            yield batch
            batch, size = [], 0
        batch.append(word)
        size += cost
    if batch:
        yield batch


def _json_object(line: str) -> dict[str, object] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _int(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)


def _put_property(st: FsState, prop: str, value: str) -> None:
    """A filesystem's own property of the listing into `st` ("-" or "": not set)."""
    if value in ("-", ""):
        return
    if prop == ROLE_PROPERTY:
        st.role = value
    elif prop == RESUME_TOKEN:
        st.resume_token = value
    elif prop == ENCRYPTION:
        st.encryption = value
