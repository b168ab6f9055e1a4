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

Pure, standard library only: the agent (bare Python 3.9) imports it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Union

BEGIN_RECORD_TYPE = 0
BACKUP_MAGIC = 0x2F5BACBAC
SUBSTREAM = 1
COMPOUNDSTREAM = 2
# What the agent reads before it decides: the fields above, which every version of
# the format puts first. A real stream is longer (a BEGIN and an END record at least).
HEADER_BYTES = 24


@dataclass(frozen=True)
class Begin:
    """A stream zfsrepl may send: one filesystem's (a single stream, or `send -I`'s
    compound one), no properties."""

    big_endian: bool
    features: int  # the feature flags (bits 2-31 of the version info)
    payload: int  # bytes of payload after the BEGIN record (resume or key data)


@dataclass(frozen=True)
class BadStream:
    reason: str


StreamCheck = Union[Begin, BadStream]


def check_begin(header: bytes) -> StreamCheck:
    """Whether a stream beginning with `header` (at least HEADER_BYTES of it) is one a
    zfsrepl cycle sends; why not, in words for the sender."""
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
    if kind == COMPOUNDSTREAM and payload != 0:
        return BadStream("the stream is a replication stream (zfs send -R, -p, -b or -h: "
                         "it carries properties and may create or destroy filesystems); "
                         "zfsrepl sends each filesystem's snapshots alone, without "
                         "properties")
    if kind not in (SUBSTREAM, COMPOUNDSTREAM):
        return BadStream(f"the stream's header type is {kind}, neither a single "
                         "filesystem's stream nor a replication stream")
    return Begin(big_endian=big, features=(info >> 2) & ((1 << 30) - 1), payload=payload)
