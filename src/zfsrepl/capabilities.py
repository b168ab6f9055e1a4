"""What one host's ZFS offers, read from its own usage text (never from a version).

`zfs` without arguments prints the usage of every subcommand and changes nothing:
one call tells which options this ZFS has. A feature counts as present only
when every form zfsrepl runs for it appears there:

    resume       receive -s, receive -A, send -t (and so receive_resume_token)
    bookmarks    zfs bookmark (and send -i FS#BOOKMARK)
    holds        hold, release and a scriptable listing (holds -H): zfs-fuse lists
                 `holds` but without -H (and it needs a helper it lacks)
    raw_send     send -w
    estimate     send -nvP (a size estimate before sending)
    compressed   send -c -L -e (the receiver of such streams must have them too)
    list_p       list -p
    recv_props   receive -o PROP=VALUE
    multi_snapshot   several snapshots in one `zfs snapshot`
    destroy_list     destroy FS@a,b

It also names the helpers of a stream on the wire (compressors and mbuffer) and the
exact command forms zfsrepl runs them with, which the agent checks requests against.

This module is pure and imports only the standard library: the agent (which runs
on a bare Python 3.9) uses it too.
"""

from __future__ import annotations

import re

from zfsrepl.record import asdict, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see record)
if TYPE_CHECKING:
    from typing import Sequence


@record
class Capabilities:
    resume: bool = False
    bookmarks: bool = False
    holds: bool = False
    raw_send: bool = False
    estimate: bool = False
    compressed: bool = False
    list_p: bool = False
    recv_props: bool = False
    multi_snapshot: bool = False
    destroy_list: bool = False

    def names(self) -> list[str]:
        """The features present, for a log line."""
        return [k for k, v in asdict(self).items() if v]

    def to_json(self) -> dict[str, bool]:
        return asdict(self)


NONE = Capabilities()


def _usage_of(lines: list[str], cmd: str) -> str:
    """The usage lines of one subcommand (continuation lines included)."""
    out: list[str] = []
    inside = False
    for line in lines:
        stripped = line.strip()
        if not stripped:
            inside = False
            continue
        word = stripped.split()[0]
        if word == cmd:
            inside = True
            out.append(stripped)
        elif inside and line[:1] in (" ", "\t") and line.lstrip("\t").startswith(" "):
            out.append(stripped)  # "\t    <filesystem>" continues the line before
        else:
            inside = False
    return " ".join(out)


def flags(usage: str) -> set[str]:
    """Single-letter options in usage like 'send [-DnPpRv] [-i snap] ... -t <token>'."""
    found: set[str] = set()
    for group in re.findall(r"(?:^|[\s\[|])-([A-Za-z]+)", usage):
        found.update(group)
    return found


def from_usage(usage: str) -> Capabilities:
    """Capabilities from the text `zfs` (no arguments) prints."""
    lines = usage.splitlines()
    send, recv = _usage_of(lines, "send"), _usage_of(lines, "receive")
    holds = _usage_of(lines, "holds")
    send_flags, recv_flags = flags(send), flags(recv)
    return Capabilities(
        resume=("s" in recv_flags and "A" in recv_flags and "t" in send_flags),
        bookmarks=bool(_usage_of(lines, "bookmark")) and "bookmark" in send,
        holds=(bool(_usage_of(lines, "hold")) and bool(_usage_of(lines, "release"))
               and "H" in flags(holds)),
        raw_send="w" in send_flags,
        estimate={"n", "v", "P"} <= send_flags,
        compressed={"c", "L", "e"} <= send_flags,
        list_p="p" in flags(_usage_of(lines, "list")),
        recv_props="o" in recv_flags,
        multi_snapshot=bool(re.search(r"@<?[\w|]*>?\s+\.\.\.", _usage_of(lines, "snapshot"))),
        destroy_list="[,...]" in _usage_of(lines, "destroy"),
    )


# ---------------------------------------------------------------------------- wire tools

# Programs a stream may pass through on its way: the compressors `wire_compression`
# chooses from (in the order `auto` prefers them) and mbuffer, the receiving side's
# buffer. A host is asked once which of them it has (host.find_tools, the agent's hello).
# Where a system's own zfs binary lives (setup looks here before PATH: a wrapper named
# zfs earlier on PATH must not end up in a sudo rule).
SYSTEM_ZFS_PATHS = ("/usr/sbin/zfs", "/sbin/zfs", "/usr/local/sbin/zfs", "/usr/bin/zfs")


def is_system_zfs(zfs_argv: Sequence[str]) -> bool:
    """Whether `zfs_argv` is the system's zfs itself, by name or path: not through sudo
    or another wrapper (then libzfs_core may do its work, see lzc.py)."""
    return len(zfs_argv) == 1 and zfs_argv[0] in ("zfs", *SYSTEM_ZFS_PATHS)

COMPRESSORS = ("zstd", "lz4")
BUFFER_TOOL = "mbuffer"
WIRE_TOOLS = (*COMPRESSORS, BUFFER_TOOL)

_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE_RE = re.compile(r"^([1-9][0-9]{0,9})([KMG])$")
MIN_BUFFER = 1 << 20
# One stream's mbuffer: the agent refuses more (a key holder may open many streams at
# once), and 1 GiB is far beyond what smooths a network stream.
MAX_BUFFER = 1 << 30
# All of a service's parallel streams' buffers together, on the receiving host.
MAX_BUFFER_TOTAL = 4 << 30


def compress_argv(tool: str) -> list[str]:
    """The compressor on the sending side: standard input to standard output."""
    return [tool, "-c"]


def decompress_argv(tool: str) -> list[str]:
    """The decompressor on the receiving side (the agent accepts exactly this)."""
    return [tool, "-dc"]


def buffer_argv(size: int) -> list[str]:
    """mbuffer with `size` bytes of memory, quiet (no status line)."""
    return [BUFFER_TOOL, "-q", "-m", format_buffer_size(size)]


def parse_buffer_size(text: str) -> int | None:
    """Bytes of mbuffer's `-m` in the one form zfsrepl writes it: a whole number and K,
    M or G (powers of 1024), from MIN_BUFFER to MAX_BUFFER; None for anything else."""
    m = _SIZE_RE.fullmatch(text)
    if not m:
        return None
    size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    return size if MIN_BUFFER <= size <= MAX_BUFFER else None


def format_buffer_size(size: int) -> str:
    """`size` (a whole number of KiB) as mbuffer's -m reads it: "16M", "1G", "1536K"."""
    for unit in ("G", "M", "K"):
        if size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    raise ValueError(f"{size} is not a whole number of KiB")
