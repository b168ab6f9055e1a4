"""Snapshot names: which snapshots belong to a service, and in which order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfsrepl.naming import SnapshotNaming, split_snapshot, valid_name_component

_ALNUM = "ABCXYZabcxyz0189"


def _word(first: str, rest: str, max_size: int) -> st.SearchStrategy[str]:
    # Small alphabets, so that dashes and shared prefixes come up often.
    return st.builds(lambda a, b: a + b, st.sampled_from(first),
                     st.text(alphabet=rest, max_size=max_size))


# What config.py lets through for users and destination hosts.
USERS = _word(_ALNUM + "_", _ALNUM + "_.-", 31)
HOSTS = _word(_ALNUM + "_.:", _ALNUM + "_.:-", 40)
NAMINGS = st.builds(SnapshotNaming, USERS, USERS, HOSTS)
SEQS = st.integers(min_value=1, max_value=10**12)

N = SnapshotNaming("src", "dst", "desthost")


def test_format_follows_the_manual() -> None:
    assert N.prefix == "zfsrepl-src-dst-desthost-"
    assert N.format(120) == "zfsrepl-src-dst-desthost-120"


@pytest.mark.parametrize("bad", [0, -1])
def test_format_refuses_sequence_below_one(bad: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        N.format(bad)


@settings(max_examples=200)
@given(NAMINGS, SEQS)
def test_parse_inverts_format(naming: SnapshotNaming, seq: int) -> None:
    name = naming.format(seq)
    assert valid_name_component(name)
    assert naming.parse(name) == seq
    assert naming.is_ours(name)


@settings(max_examples=200)
@given(NAMINGS, NAMINGS, SEQS)
def test_another_services_names_are_not_ours(mine: SnapshotNaming, theirs: SnapshotNaming,
                                             seq: int) -> None:
    # Two triples can spell the same prefix ("a-b","c" vs "a","b-c"): that is the
    # manual's format, not something parse can tell apart.
    if mine.prefix != theirs.prefix:
        assert mine.parse(theirs.format(seq)) is None


@pytest.mark.parametrize("name", [
    "zfsrepl-src-dst-otherhost-5",        # another service: other destination host
    "zfsrepl-src-other-desthost-5",       # other destination user
    "zfsrepl-other-dst-desthost-5",       # other source user
    "zfsrepl-src-dst-desthost-2-5",       # host 'desthost-2' is not 'desthost'
    "zfsrepl-src-b-dst-desthost-5",       # source user 'src-b' is not 'src'
    "zfsrepl-src-dst-desthost-05",        # leading zero
    "zfsrepl-src-dst-desthost-0",         # zero is no sequence
    "zfsrepl-src-dst-desthost-",          # missing sequence
    "zfsrepl-src-dst-desthost",           # missing separator and sequence
    "zfsrepl-src-dst-desthost-5a",        # extra suffix
    "zfsrepl-src-dst-desthost-5-old",     # extra suffix after a dash
    "zfsrepl-src-dst-desthost-5 ",        # trailing space
    "zfsrepl-src-dst-desthost--5",        # negative-looking
    "zfsrepl-src-dst-desthost-+5",        # sign
    "ZFSREPL-src-dst-desthost-5",         # case matters
    "xzfsrepl-src-dst-desthost-5",        # something before the prefix
    "autosnap_2024-01-01_00:00:00_daily",  # another tool
    "",
])
def test_near_misses_are_not_ours(name: str) -> None:
    assert N.parse(name) is None
    assert not N.is_ours(name)


def test_user_that_prefixes_another_user() -> None:
    a = SnapshotNaming("a", "dst", "h")
    ab = SnapshotNaming("a-b", "dst", "h")
    assert a.parse(ab.format(7)) is None
    assert ab.parse(a.format(7)) is None
    assert a.parse(a.format(7)) == 7


def test_host_that_prefixes_another_host() -> None:
    h = SnapshotNaming("src", "dst", "h")
    h1 = SnapshotNaming("src", "dst", "h-1")
    assert h.parse(h1.format(5)) is None  # 'zfsrepl-src-dst-h-1-5'
    assert h1.parse(h.format(15)) is None  # 'zfsrepl-src-dst-h-15'
    assert h.parse(h.format(15)) == 15


@pytest.mark.parametrize("tail", ["\u00b2", "\u0661", "\u0663\u0664"])
def test_non_ascii_digits_are_not_a_sequence(tail: str) -> None:
    """str.isdigit() accepts superscripts and other scripts' digits: U+00B2 makes
    parse raise ValueError from int(), U+0661 parses as 1. ZFS itself refuses such
    names, so only names from elsewhere (a typed argument) reach this."""
    assert N.parse(N.prefix + tail) is None


def test_split_snapshot() -> None:
    assert split_snapshot("tank/src/fs@zfsrepl-src-dst-h-3") == ("tank/src/fs",
                                                               "zfsrepl-src-dst-h-3")
    assert split_snapshot("tank/my data:1@snap 1") == ("tank/my data:1", "snap 1")


@pytest.mark.parametrize("bad", ["tank/fs", "@snap", "tank/fs@", "", "@"])
def test_split_snapshot_refuses_non_snapshots(bad: str) -> None:
    with pytest.raises(ValueError, match="not a snapshot name"):
        split_snapshot(bad)


@pytest.mark.parametrize("value,ok", [
    ("src", True), ("a-b_c.d:e f", True), ("", False), ("a@b", False), ("a/b", False),
    ("a#b", False), ("a;b", False), ("a$b", False), ("é", False),
    # '$' in the pattern also matches before a final newline
    ("src\n", False),
])
def test_valid_name_component(value: str, ok: bool) -> None:
    assert valid_name_component(value) is ok
