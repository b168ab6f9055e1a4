"""What a `zfs send` stream is, from its first record: the agent's check before a receive.

A send stream is a sequence of replay records; the first is a BEGIN record:

    offset  size  field
         0     4  record type (BEGIN = 0)
         4     4  payload length (bytes that follow the record)
         8     8  magic 0x2F5BACBAC (tells the byte order of the whole stream)
        16     8  version info: bits 0-1 the header type, 1 a single filesystem's
                  stream (substream), 2 a compound stream; bits 2-31 feature flags
        ...       creation time, objset type, flags, GUIDs, the snapshot's name

A compound stream is what `send -I` makes (the snapshots between, one after the
other) and what `send -R`, `-p`, `-b`, `-h` make. Only the latter carry a payload in
their BEGIN record: a packed list of properties, holds and filesystems to create or
destroy, with substreams of every filesystem following. Without that list a receive
takes the substreams into the one filesystem it was given, like single streams (OpenZFS
2.3: `send -I` gives a compound BEGIN record with no payload, `-R`, `-p`, `-h` one with
a payload). So the check refuses a compound stream with a payload: zfsrepl never sends
properties or several filesystems in one stream. A zfs-fuse (pool version 23) stream
and a current OpenZFS stream share this layout; the old version number 1 or 2 is the
header type of today.

A service with `recursive = true` receives exactly that refused form: one `send -R`
stream of its subtree. Its payload, a packed nvlist (XDR), names the filesystems and
the properties the receive would set; `check_replication` reads it so the agent can
refuse a stream that would set a property reaching root (a mountpoint over a system
folder, set-uid programs, devices) where zfs cannot leave it out (no `receive -x`).

Pure, standard library only: the agent (bare Python 3.9) imports it.
"""

from __future__ import annotations

import struct

from zfsrepl.record import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see record)
if TYPE_CHECKING:
    from typing import Dict, List, Union

BEGIN_RECORD_TYPE = 0
BACKUP_MAGIC = 0x2F5BACBAC
SUBSTREAM = 1
COMPOUNDSTREAM = 2
# What the agent reads before it decides: the fields above, which every version of
# the format puts first. A real stream is longer (a BEGIN and an END record at least).
HEADER_BYTES = 24
# A replay record's size (zfs-fuse pool version 23 and OpenZFS alike): the payload of a
# BEGIN record follows it.
RECORD_BYTES = 312
# A replication stream's payload lists every filesystem and snapshot of the subtree: far
# more than thousands of either take, far less than the agent should hold in memory.
MAX_PAYLOAD = 64 << 20


@record
class Begin:
    """A stream zfsrepl may send: one filesystem's (a single stream, or `send -I`'s
    compound one), no properties."""

    big_endian: bool
    features: int  # the feature flags (bits 2-31 of the version info)
    payload: int  # bytes of payload after the BEGIN record (resume or key data)


@record
class BadStream:
    reason: str


if TYPE_CHECKING:
    StreamCheck = Union[Begin, BadStream]


def check_begin(header: bytes, replication: bool = False) -> StreamCheck:
    """Whether a stream beginning with `header` (at least HEADER_BYTES of it) is one a
    zfsrepl cycle sends; why not, in words for the sender. `replication`: the receive
    is a recursive service's, which takes only a replication stream (`send -R`), whose
    payload the caller reads next (`check_replication`)."""
    if len(header) < HEADER_BYTES:
        return BadStream(f"the stream ended after {len(header)} bytes, before its first "
                         "record was complete: this is no zfs send stream")
    big = struct.unpack_from("<Q", header, 8)[0] != BACKUP_MAGIC
    rtype, payload, magic, info = struct.unpack_from(">IIQQ" if big else "<IIQQ", header)
    if magic != BACKUP_MAGIC:
        return BadStream("the stream does not begin with a zfs send stream's magic number: "
                         "only the output of zfs send is received")
    if rtype != BEGIN_RECORD_TYPE:
        return BadStream(f"the stream's first record is of type {rtype}, not a BEGIN record")
    kind = info & 0x3
    if replication:
        if kind != COMPOUNDSTREAM or payload == 0:
            return BadStream("a recursive service receives only a replication stream "
                             "(zfs send -R) into its destination parent")
        if payload > MAX_PAYLOAD:
            return BadStream(f"the replication stream's list of filesystems is {payload} "
                             f"bytes, more than the {MAX_PAYLOAD} this host reads")
    elif kind == COMPOUNDSTREAM and payload != 0:
        return BadStream("the stream is a replication stream (zfs send -R, -p, -b or -h: "
                         "it carries properties and may create or destroy filesystems); "
                         "zfsrepl sends each filesystem's snapshots alone, without "
                         "properties")
    if kind not in (SUBSTREAM, COMPOUNDSTREAM):
        return BadStream(f"the stream's header type is {kind}, neither a single "
                         "filesystem's stream nor a replication stream")
    return Begin(big_endian=big, features=(info >> 2) & ((1 << 30) - 1), payload=payload)


# ---------------------------------------------------------------------------- send -R


@record
class Replication:
    """What a replication stream's payload says it brings."""

    incremental: bool  # from a snapshot the destination must already have
    filesystems: tuple[str, ...]  # their names on the sending side
    # "FS: PROPERTY=VALUE" for each property it would set that reaches root (ROOT_PROPERTIES)
    harmful: tuple[str, ...]


# Properties a received filesystem must not get from a stream where zfs runs as root
# (agent.EXCLUDED_PROPERTIES, a unit test keeps them equal), with the values that are
# harmless: a mountpoint over a system folder, a share, set-uid programs or device
# nodes that count would each give the sending side a way to root here.
ROOT_PROPERTIES: Dict[str, tuple] = {
    "mountpoint": ("none", "legacy"), "canmount": (0, 2, "off", "noauto"),
    "sharenfs": ("off",), "sharesmb": ("off",), "setuid": (0, "off"), "exec": (0, "off"),
    "devices": (0, "off"),
}


class NvlistError(ValueError):
    pass


if TYPE_CHECKING:
    NvValue = Union[str, int, bool, None, "NvList", List["NvList"]]
    NvList = Dict[str, NvValue]

# data_type_t values (sys/nvpair.h) read here; the others are skipped by their size
_NV_BOOLEAN, _NV_INT64, _NV_UINT64, _NV_STRING, _NV_HRTIME = 1, 7, 8, 9, 18
_NV_NVLIST, _NV_NVLIST_ARRAY, _NV_BOOLEAN_VALUE = 19, 20, 21
_NV_ENCODE_XDR = 1
_MAX_DEPTH = 8  # the send header nests 4 deep (fss > fs > snapprops > snapshot)


def check_replication(prefix: bytes) -> Replication | BadStream:
    """What the replication stream beginning with `prefix` (its BEGIN record and the
    payload check_begin(..., replication=True) announced) brings, or why it is none."""
    checked = check_begin(prefix[:HEADER_BYTES], replication=True)
    if isinstance(checked, BadStream):
        return checked
    payload = prefix[RECORD_BYTES:RECORD_BYTES + checked.payload]
    if len(payload) < checked.payload:
        return BadStream("the replication stream ended inside its list of filesystems")
    try:
        header = unpack_nvlist(payload)
        fss = header.get("fss")
        if not isinstance(fss, dict):
            raise NvlistError("it lists no filesystems")
        names: list[str] = []
        harmful: list[str] = []
        for fs in fss.values():
            if not isinstance(fs, dict) or not isinstance(fs.get("name"), str):
                raise NvlistError("a filesystem in it has no name")
            name = str(fs["name"])
            names.append(name)
            harmful += [f"{name}: {prop}={value}" for prop, value in _props(fs.get("props"))
                        if prop in ROOT_PROPERTIES and value not in ROOT_PROPERTIES[prop]]
    except NvlistError as exc:
        return BadStream(f"the replication stream's list of filesystems cannot be read: {exc}")
    return Replication(incremental="fromsnap" in header, filesystems=tuple(sorted(names)),
                       harmful=tuple(sorted(harmful)))


def _props(value: NvValue) -> list[tuple[str, NvValue]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise NvlistError("properties that are not a list")
    return list(value.items())


def unpack_nvlist(data: bytes) -> NvList:
    """A packed nvlist in XDR encoding (how zfs send packs a stream's payload) as a dict;
    values of types the send header does not use are None."""
    if len(data) < 4 or data[0] != _NV_ENCODE_XDR:
        raise NvlistError("not an XDR-encoded nvlist")
    return _Xdr(data, 4).nvlist(0)


class _Xdr:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise NvlistError("it ends early")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def string(self) -> str:
        size = self.u32()
        raw = self.take(size)
        self.take(-size % 4)  # XDR pads to 4 bytes
        return raw.rstrip(b"\0").decode("utf-8", "replace")

    def nvlist(self, depth: int) -> NvList:
        if depth > _MAX_DEPTH:
            raise NvlistError("lists nested too deep")
        self.take(8)  # version, flags
        out: NvList = {}
        while True:
            start = self.pos
            encoded, decoded = self.u32(), self.u32()
            if encoded == 0 and decoded == 0:
                return out
            end = start + encoded  # the whole pair, nested lists included
            if encoded < 8 or end > len(self.data):
                raise NvlistError("a pair's size is wrong")
            name = self.string()
            kind, count = self.u32(), self.u32()
            value: NvValue = None
            if kind == _NV_NVLIST and count == 1:
                value = self.nvlist(depth + 1)
            elif kind == _NV_NVLIST_ARRAY:
                value = [self.nvlist(depth + 1) for _ in range(count)]
            elif kind == _NV_STRING and count == 1:
                value = self.string()
            elif kind in (_NV_UINT64, _NV_INT64, _NV_HRTIME) and count == 1:
                value = int(struct.unpack(">Q", self.take(8))[0])
            elif kind == _NV_BOOLEAN:
                value = True
            elif kind == _NV_BOOLEAN_VALUE and count == 1:
                value = self.u32() != 0
            if self.pos > end:
                raise NvlistError(f"pair {name!r} is longer than its size says")
            self.pos = end
            out[name] = value
