"""Many snapshots destroyed, held or released, or bookmarks made or destroyed, in one
transaction group.

On OpenZFS each `zfs destroy`, `zfs bookmark`, and each snapshot of a `zfs hold` or
`zfs release`, waits for a transaction group to be written out: a cycle of 100
filesystems waits for hundreds of them, one after another. libzfs_core takes any number
of one pool's snapshots or bookmarks in one request and one transaction group
(lzc_destroy_snaps, lzc_hold, lzc_release, lzc_bookmark, lzc_destroy_bookmarks, its
stable interface), checked against the caller's `zfs allow` rights exactly as the zfs
command's are (the command is built on it).

This file is run as its own process (`python3 -s lzc.py`, a JSON request on standard
input, a JSON answer on standard output), never imported by the daemon for the calls:
the process runs under the same bound as any zfs command, so a request that hangs in
the kernel is killed like one, and a crash in the C library ends this process alone.
Standard library only (ctypes), bare Python 3.9.

Each request is all or nothing per pool (libzfs_core's own rule): where one item
fails, none of its pool's items is done, and the caller does them one at a time with
the zfs command, which names what went wrong.

    request: {"op": "destroy-snapshots" | "destroy-bookmarks", "names": [FS@S | FS#B...]}
             {"op": "bookmark", "bookmarks": {FS#B: FS@S, ...}}
             {"op": "hold" | "release", "holds": {FS@S: TAG, ...}}
    answer:  {"pools": {POOL: {"errno": N, "failed": {NAME: ERRNO, ...}}, ...}}
             (errno 0: all of that pool's items done but those in "failed")
    exit:    0 answered (see each pool), EXIT_UNAVAILABLE no libzfs_core here (zfs-fuse,
             no /dev/zfs, an older library): use the zfs command, 2 a bad request
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import sys
from typing import Any, Dict, List

EXIT_UNAVAILABLE = 3
OPS = ("destroy-snapshots", "destroy-bookmarks", "bookmark", "hold", "release")

_NV_UNIQUE_NAME = 0x1
# Tried after what ldconfig knows: Linux (OpenZFS 2.x, 0.8), illumos and FreeBSD.
_CORE_NAMES = ("libzfs_core.so.3", "libzfs_core.so.1", "libzfs_core.so")
_NVPAIR_NAMES = ("libnvpair.so.3", "libnvpair.so.1", "libnvpair.so")


class Unavailable(Exception):
    """No usable libzfs_core on this host."""


def _load(short: str, names: tuple[str, ...]) -> ctypes.CDLL:
    found = ctypes.util.find_library(short)
    for name in ([found] if found else []) + list(names):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise Unavailable(f"no lib{short} on this host")


class _Libraries:
    def __init__(self) -> None:
        nv = _load("nvpair", _NVPAIR_NAMES)
        core = _load("zfs_core", _CORE_NAMES)
        p, pp, s, i = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, \
            ctypes.c_int
        signatures: list[tuple[Any, list[Any], Any]] = []
        try:
            signatures += [
                (nv.nvlist_alloc, [pp, ctypes.c_uint, i], i),
                (nv.nvlist_add_boolean, [p, s], i),
                (nv.nvlist_add_string, [p, s, s], i),
                (nv.nvlist_add_nvlist, [p, s, p], i),
                (nv.nvlist_free, [p], None),
                (nv.nvlist_next_nvpair, [p, p], p),
                (nv.nvpair_name, [p], s),
                (nv.nvpair_value_int32, [p, ctypes.POINTER(ctypes.c_int32)], i),
                (core.libzfs_core_init, [], i),
                (core.lzc_destroy_snaps, [p, i, pp], i),
                (core.lzc_bookmark, [p, pp], i),
                (core.lzc_hold, [p, i, pp], i),
                (core.lzc_release, [p, pp], i),
                (core.lzc_destroy_bookmarks, [p, pp], i)]
        except AttributeError as exc:  # a library without one of them
            raise Unavailable(str(exc)) from None
        for fn, args, res in signatures:
            fn.argtypes, fn.restype = args, res
        if core.libzfs_core_init() != 0:  # no /dev/zfs (zfs-fuse has none)
            raise Unavailable("libzfs_core cannot open /dev/zfs")
        self.nv, self.core = nv, core

    def nvlist(self, items: Dict[str, str | None], *, nested: bool = False
               ) -> ctypes.c_void_p:
        """An nvlist of `items`: a string value where one is given, else a boolean;
        `nested`: each value the name of a boolean in an nvlist of its own
        (lzc_release's {FS@S: {TAG: true}})."""
        nvl = ctypes.c_void_p()
        if self.nv.nvlist_alloc(ctypes.byref(nvl), _NV_UNIQUE_NAME, 0) != 0:
            raise MemoryError("nvlist_alloc")
        for key, value in items.items():
            if nested and value is not None:
                inner = self.nvlist({value: None})
                rc = self.nv.nvlist_add_nvlist(nvl, key.encode(), inner)  # copies it
                self.nv.nvlist_free(inner)
            elif value is None:
                rc = self.nv.nvlist_add_boolean(nvl, key.encode())
            else:
                rc = self.nv.nvlist_add_string(nvl, key.encode(), value.encode())
            if rc != 0:
                self.nv.nvlist_free(nvl)
                raise MemoryError("nvlist_add")
        return nvl

    def failures(self, errlist: ctypes.c_void_p) -> Dict[str, int]:
        """The NAME: errno entries of an error list (entries of another type: -1)."""
        found: Dict[str, int] = {}
        pair = self.nv.nvlist_next_nvpair(errlist, None)
        while pair:
            value = ctypes.c_int32()
            rc = self.nv.nvpair_value_int32(pair, ctypes.byref(value))
            found[self.nv.nvpair_name(pair).decode("utf-8", "replace")] = \
                value.value if rc == 0 else -1
            pair = self.nv.nvlist_next_nvpair(errlist, pair)
        return found

    def call(self, op: str, items: Dict[str, str | None]) -> tuple[int, Dict[str, int]]:
        """One libzfs_core request for one pool's `items`: its errno and what failed."""
        request = self.nvlist(items, nested=op == "release")
        errlist = ctypes.c_void_p()
        try:
            if op == "destroy-snapshots":
                rc = self.core.lzc_destroy_snaps(request, 0, ctypes.byref(errlist))
            elif op == "bookmark":
                rc = self.core.lzc_bookmark(request, ctypes.byref(errlist))
            elif op == "hold":
                # no cleanup descriptor (-1): the hold lasts until released
                rc = self.core.lzc_hold(request, -1, ctypes.byref(errlist))
            elif op == "release":
                rc = self.core.lzc_release(request, ctypes.byref(errlist))
            else:
                rc = self.core.lzc_destroy_bookmarks(request, ctypes.byref(errlist))
            return rc, (self.failures(errlist) if errlist.value else {})
        finally:
            self.nv.nvlist_free(request)
            if errlist.value:
                self.nv.nvlist_free(errlist)


def pool_of(name: str) -> str:
    return name.split("/", 1)[0].split("@", 1)[0].split("#", 1)[0]


def by_pool(items: Dict[str, str | None]) -> Dict[str, Dict[str, str | None]]:
    """`items` split by pool: libzfs_core takes one pool's at a time."""
    pools: Dict[str, Dict[str, str | None]] = {}
    for key, value in items.items():
        pools.setdefault(pool_of(key), {})[key] = value
    return pools


def parse_request(text: str) -> tuple[str, Dict[str, str | None]]:
    """The op and its items (NAME: None, for bookmarks FS#B: FS@S, for holds FS@S: TAG);
    ValueError names what is wrong with a request."""
    request = json.loads(text)
    op = request.get("op") if isinstance(request, dict) else None
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}")
    items: Dict[str, str | None] = {}
    if op == "bookmark":
        bookmarks = request.get("bookmarks")
        if not isinstance(bookmarks, dict) or not all(
                isinstance(k, str) and "#" in k and isinstance(v, str) and "@" in v
                and k.split("#", 1)[0] == v.split("@", 1)[0] for k, v in bookmarks.items()):
            raise ValueError("bookmarks must map FS#BOOKMARK to FS@SNAPSHOT")
        items.update(bookmarks)
    elif op in ("hold", "release"):
        holds = request.get("holds")
        if not isinstance(holds, dict) or not all(
                isinstance(k, str) and "@" in k and isinstance(v, str) and v
                for k, v in holds.items()):
            raise ValueError("holds must map FS@SNAPSHOT to a tag")
        items.update(holds)
    else:
        names = request.get("names")
        sep = "@" if op == "destroy-snapshots" else "#"
        if not isinstance(names, list) or not all(
                isinstance(n, str) and sep in n for n in names):
            raise ValueError(f"names must be a list of FS{sep}NAME")
        items.update((n, None) for n in names)
    return op, items


def request(op: str, items: Dict[str, str | None]) -> Dict[str, Dict[str, Any]]:
    """`op` on `items`, one libzfs_core request per pool: by pool, {"errno": N,
    "failed": {NAME: ERRNO}} (errno 0: all of that pool's done but those in "failed": a
    hold's missing snapshot is skipped, not fatal). Unavailable where this host has no
    libzfs_core."""
    libraries = _Libraries()
    pools: Dict[str, Dict[str, Any]] = {}
    for pool, pool_items in by_pool(items).items():
        rc, failed = libraries.call(op, pool_items)
        pools[pool] = {"errno": rc, "failed": failed}
    return pools


def main(argv: List[str] | None = None) -> int:
    try:
        op, items = parse_request(sys.stdin.read())
    except ValueError as exc:  # json's errors are ValueErrors too
        print(f"lzc: a bad request: {exc}", file=sys.stderr)
        return 2
    try:
        pools = request(op, items)
    except Unavailable as exc:
        print(f"lzc: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps({"pools": pools}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
