"""Plans that use what current ZFS offers: bookmarks as incremental bases, resume tokens."""

from __future__ import annotations

from zfsrepl.plan import (
    Diverged,
    Incremental,
    NoCommonSnapshot,
    Resume,
    Send,
    UpToDate,
    plan_filesystem,
    received_names,
)
from zfsrepl.snapshots import Snapshot

from .helpers import NAMING, SRC_FS, other, own, received, seq


def mark(n: int, guid: int, txg: int, name: str | None = None) -> Snapshot:
    """A bookmark of the source (its name is what follows the '#')."""
    return Snapshot(SRC_FS, name or seq(n), guid, txg, creation=txg)


def test_a_bookmark_continues_the_chain_when_its_snapshot_is_gone() -> None:
    # @2 was replicated, bookmarked, then destroyed on the source by hand
    dst = received([own(1, 101, 10), own(2, 102, 20)])
    src = [own(1, 101, 10), own(3, None, 31)]
    p = plan_filesystem(src, dst, NAMING, bookmarks=(mark(2, 102, 20),))
    assert p == Incremental(base="#" + seq(2),
                            sends=(Send(target=seq(3), base=seq(2), bookmark=True),))
    assert p.sends[0].describe() == f"incremental -i #{seq(2)} -> @{seq(3)}"
    assert received_names(p, src) == [seq(3)]


def test_without_any_common_snapshot_a_bookmark_is_enough() -> None:
    dst = received([own(2, 102, 20)])
    src = [own(3, 103, 30), own(4, None, 40)]
    p = plan_filesystem(src, dst, NAMING, bookmarks=(mark(2, 102, 20),))
    assert isinstance(p, Incremental)
    assert p.sends == (Send(target=seq(3), base=seq(2), bookmark=True),
                       Send(target=seq(4), base=seq(3)))
    assert received_names(p, src) == [seq(3), seq(4)]
    # and without the bookmark there is none
    assert isinstance(plan_filesystem(src, dst, NAMING), NoCommonSnapshot)


def test_a_common_snapshot_wins_over_its_own_bookmark() -> None:
    dst = received([own(1, 101, 10), own(2, 102, 20)])
    src = [own(1, 101, 10), own(2, 102, 20), own(3, None, 30)]
    p = plan_filesystem(src, dst, NAMING, bookmarks=(mark(2, 102, 20),))
    assert p == Incremental(base=seq(2), sends=(Send(target=seq(3), base=seq(2)),))


def test_an_older_bookmark_does_not_replace_a_newer_common_snapshot() -> None:
    dst = received([own(1, 101, 10), own(2, 102, 20)])
    src = [own(2, 102, 20), own(3, None, 30)]
    p = plan_filesystem(src, dst, NAMING, bookmarks=(mark(1, 101, 10),))
    assert p == Incremental(base=seq(2), sends=(Send(target=seq(3), base=seq(2)),))


def test_a_bookmark_of_something_the_destination_lacks_is_no_base() -> None:
    dst = received([own(1, 101, 10)])
    src = [own(1, 101, 10), own(3, None, 30)]
    p = plan_filesystem(src, dst, NAMING, bookmarks=(mark(2, 999, 20),))
    assert p == Incremental(base=seq(1), sends=(Send(target=seq(3), base=seq(1)),))


def test_the_destination_ahead_of_the_bookmark_has_diverged() -> None:
    dst = [*received([own(2, 102, 20)]), Snapshot("backup/dst/fs", "local", 555, 2000)]
    src = [own(3, None, 30)]
    p = plan_filesystem(src, dst, NAMING, bookmarks=(mark(2, 102, 20),))
    assert p == Diverged(common="#" + seq(2), extra_on_destination=("local",))


def test_up_to_date_at_a_bookmark() -> None:
    dst = received([own(2, 102, 20)])
    p = plan_filesystem([other("x", 5, 5)], dst, NAMING, bookmarks=(mark(2, 102, 20),))
    # no own snapshot at all: nothing to send
    assert not p.sends
    p = plan_filesystem([own(1, 101, 10)], dst, NAMING, bookmarks=(mark(2, 102, 20),))
    assert p == UpToDate(common="#" + seq(2))


def test_foreign_snapshots_after_the_bookmark_are_stepped_over() -> None:
    dst = received([own(2, 102, 20)])
    src = [own(3, 103, 30), other("manual", 77, 35), own(4, None, 40)]
    p = plan_filesystem(src, dst, NAMING, bookmarks=(mark(2, 102, 20),))
    assert p.sends == (Send(target=seq(3), base=seq(2), bookmark=True),
                       Send(target=seq(4), base=seq(3)))


def test_a_resume_token_comes_first() -> None:
    dst = received([own(1, 101, 10)])
    src = [own(1, 101, 10), own(2, 102, 20), own(3, None, 30)]
    p = plan_filesystem(src, dst, NAMING, resume_token="1-abc-def")
    assert p == Resume("1-abc-def")
    assert p.sends == (Send(target="", token="1-abc-def"),)
    assert p.sends[0].describe() == "resumed send of a cut stream"
    # what it brings is known from the next listing, not guessed
    assert received_names(p, src) == []


def test_a_cut_full_receive_is_resumed_too() -> None:
    # the destination exists (partly received), without snapshots, with a token
    assert plan_filesystem([own(1, None, 10)], [], NAMING, resume_token="1-x") == Resume("1-x")


def test_no_token_no_resume() -> None:
    dst = received([own(1, 101, 10)])
    src = [own(1, 101, 10), own(2, None, 20)]
    assert not isinstance(plan_filesystem(src, dst, NAMING, resume_token=None), Resume)
    assert not isinstance(plan_filesystem(src, dst, NAMING, resume_token=""), Resume)
