"""The agent's check of a send stream's first record, on crafted headers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zfsrepl.streamcheck import (
    BACKUP_MAGIC,
    COMPOUNDSTREAM,
    HEADER_BYTES,
    SUBSTREAM,
    BadStream,
    Begin,
    check_begin,
)

# A BEGIN record as OpenZFS writes it: type, payload length, magic, version info (header
# type in bits 0-1, feature flags from bit 2), then the rest of the 312-byte record.
RECORD = 312
FEATURE_LARGE_BLOCKS = 1 << 20  # bits 2-31: what a current OpenZFS stream may carry


def begin(kind: int, *, order: str = "<", features: int = 0, payload: int = 0,
          rtype: int = 0, magic: int = BACKUP_MAGIC) -> bytes:
    head = struct.pack(order + "IIQQ", rtype, payload, magic, (features << 2) | kind)
    return head + b"\0" * (RECORD - len(head))


@pytest.mark.parametrize("order", ["<", ">"])
def test_a_single_filesystems_stream_is_accepted_in_both_byte_orders(order: str) -> None:
    found = check_begin(begin(SUBSTREAM, order=order))
    assert found == Begin(big_endian=order == ">", features=0, payload=0)


def test_zfs_fuse_pool_v23_stream() -> None:
    # version 1 in the old drr_version field: the header type of today
    assert isinstance(check_begin(begin(1)), Begin)


@pytest.mark.parametrize("order", ["<", ">"])
def test_feature_flags_and_a_payload_are_read(order: str) -> None:
    # raw sends and resumed streams put an nvlist after a substream's BEGIN record
    found = check_begin(begin(SUBSTREAM, order=order, features=FEATURE_LARGE_BLOCKS >> 2,
                              payload=180))
    assert found == Begin(order == ">", FEATURE_LARGE_BLOCKS >> 2, 180)


# The first 24 bytes of streams OpenZFS 2.3.2 wrote (little-endian), by their send flags
OPENZFS_HEADERS = {
    "-i": "0000000000000000accbbaf5020000001100000000000000",
    "-I": "0000000000000000accbbaf5020000000200000000000000",
    "-R -I": "00000000ac040000accbbaf5020000000200000000000000",
    "-p -I": "00000000b8020000accbbaf5020000000200000000000000",
    "-h -I": "0000000004030000accbbaf5020000000200001000000000",
    "-p": "0000000004020000accbbaf5020000000200000000000000",
    "-R": "0000000040030000accbbaf5020000000200000000000000",
}


@pytest.mark.parametrize("flags", ["-i", "-I"])
def test_what_a_cycle_sends_on_openzfs_is_accepted(flags: str) -> None:
    # -I: a compound BEGIN record with no payload, the snapshots between following
    assert isinstance(check_begin(bytes.fromhex(OPENZFS_HEADERS[flags])), Begin)


@pytest.mark.parametrize("flags", ["-R -I", "-p -I", "-h -I", "-p", "-R"])
def test_openzfs_streams_with_properties_or_holds_are_refused(flags: str) -> None:
    found = check_begin(bytes.fromhex(OPENZFS_HEADERS[flags]))
    assert isinstance(found, BadStream)
    assert "replication stream" in found.reason


@pytest.mark.parametrize("order", ["<", ">"])
def test_an_intermediates_package_without_payload_is_accepted(order: str) -> None:
    found = check_begin(begin(COMPOUNDSTREAM, order=order))
    assert found == Begin(big_endian=order == ">", features=0, payload=0)


@pytest.mark.parametrize("order", ["<", ">"])
def test_a_replication_stream_is_refused(order: str) -> None:
    # send -R / -p: a compound BEGIN record whose payload is the property list
    found = check_begin(begin(COMPOUNDSTREAM, order=order, payload=4096))
    assert isinstance(found, BadStream)
    assert "replication stream" in found.reason and "properties" in found.reason


@pytest.mark.parametrize("kind", [0, 3])
def test_an_unknown_header_type_is_refused(kind: int) -> None:
    found = check_begin(begin(kind))
    assert isinstance(found, BadStream) and f"header type is {kind}" in found.reason


@pytest.mark.parametrize("size", [0, 1, 8, HEADER_BYTES - 1])
def test_a_truncated_header_is_refused(size: int) -> None:
    found = check_begin(begin(SUBSTREAM)[:size])
    assert isinstance(found, BadStream)
    assert f"ended after {size} bytes" in found.reason


def test_the_decision_needs_only_the_first_bytes() -> None:
    assert isinstance(check_begin(begin(SUBSTREAM)[:HEADER_BYTES]), Begin)


def test_garbage_is_refused() -> None:
    found = check_begin(b"this is not a zfs send stream, it is text" * 10)
    assert isinstance(found, BadStream) and "magic number" in found.reason


def test_a_record_other_than_begin_is_refused() -> None:
    found = check_begin(begin(SUBSTREAM, rtype=5))
    assert isinstance(found, BadStream) and "type 5" in found.reason


def test_a_magic_of_mixed_byte_order_is_refused() -> None:
    bad = struct.pack("<IIQQ", 0, 0, BACKUP_MAGIC, SUBSTREAM)
    mixed = bad[:8] + bad[8:12][::-1] + bad[12:16][::-1] + bad[16:]
    assert isinstance(check_begin(mixed), BadStream)


@given(st.binary(max_size=400))
def test_any_bytes_give_an_answer(data: bytes) -> None:
    found = check_begin(data)
    assert isinstance(found, (Begin, BadStream))
    if isinstance(found, Begin):
        assert data[8:16] in (struct.pack("<Q", BACKUP_MAGIC), struct.pack(">Q", BACKUP_MAGIC))
