"""The pure diagnosis: every situation from both chains and the facts, without ZFS."""

from __future__ import annotations

import itertools

import pytest

from zfsrepl import diagnosis, zfserrors
from zfsrepl.diagnosis import (
    Chains,
    ClearMaintenance,
    DestroySnapshot,
    Kind,
    Rollback,
    Side,
    diagnose,
)
from zfsrepl.errors import CommandError, ConnectionFailed, LoginRefused
from zfsrepl.naming import SnapshotNaming
from zfsrepl.snapshots import Snapshot

N = SnapshotNaming("src", "dst", "host")
SRC, DST = "pool/src/fs", "pool/dst/fs"
SND, RCV = Side("source", "srchost", "src"), Side("destination", "dsthost", "dst")


def snap(fs: str, name: str, guid: int, txg: int, userrefs: int = 0) -> Snapshot:
    return Snapshot(fs, name, guid, txg, creation=1000 + txg, userrefs=userrefs)


def own(seq: int) -> str:
    return N.format(seq)


def chain(fs: str, seqs: list[int], base_txg: int = 0) -> list[Snapshot]:
    """Own snapshots with GUID = 100 + seq (the same snapshot on both sides)."""
    return [snap(fs, own(q), 100 + q, base_txg + i + 1) for i, q in enumerate(seqs)]


def run(sending: list[Snapshot] | None, receiving: list[Snapshot] | None,
        **facts: object) -> diagnosis.Finding:
    c = Chains(SRC, DST, sending, receiving, sending_side=SND, receiving_side=RCV,
               **facts)  # type: ignore[arg-type]
    return diagnose(c, N, "svc")


def test_up_to_date() -> None:
    f = run(chain(SRC, [1, 2]), chain(DST, [1, 2]))
    assert f.kind is Kind.UP_TO_DATE and f.healthy and not f.repairs


def test_sender_ahead_heals_in_the_next_cycle() -> None:
    # manual 7.1: 120, 121 on the destination, 120-124 on the source
    f = run(chain(SRC, [120, 121, 122, 123, 124]), chain(DST, [120, 121]))
    assert f.kind is Kind.SENDER_AHEAD and f.healthy
    assert "3 snapshot(s)" in f.explanation and own(124) in f.explanation
    assert not f.repairs


def test_receiver_modified_rolls_back_to_the_common_snapshot() -> None:
    f = run(chain(SRC, [1, 2]), chain(DST, [1, 2]), receiving_written=4096)
    assert f.kind is Kind.RECEIVER_MODIFIED
    assert f.repairs == (Rollback("receiving", DST, own(2)),)


def test_receiver_written_zero_is_up_to_date() -> None:
    assert run(chain(SRC, [1]), chain(DST, [1]), receiving_written=0).kind is Kind.UP_TO_DATE


def test_receiver_has_extra_own_snapshots_manual_7_2() -> None:
    # the receiving side has 256, 257' (another 257: other GUID), 258'
    rcv = [*chain(DST, [256]), snap(DST, own(257), 9257, 5), snap(DST, own(258), 9258, 6)]
    f = run(chain(SRC, [256, 257]), rcv)
    assert f.kind is Kind.RECEIVER_HAS_EXTRA and not f.healthy
    assert f.repairs == (DestroySnapshot("receiving", DST, own(258)),
                         DestroySnapshot("receiving", DST, own(257)),
                         Rollback("receiving", DST, own(256)))
    assert f"zfs rollback {DST}@{own(256)}" in f.commands[-2]


@pytest.mark.parametrize("foreign,held", [(True, False), (False, True), (True, True)])
def test_receiver_extra_foreign_or_held_is_left_to_the_operator(foreign: bool,
                                                                held: bool) -> None:
    extra = [snap(DST, "manual" if foreign else own(3), 999, 9, userrefs=1 if held else 0)]
    f = run(chain(SRC, [1, 2]), chain(DST, [1]) + extra)
    assert f.kind is Kind.RECEIVER_HAS_EXTRA and f.repairs == ()
    assert ("not made by this service" in f.explanation) is foreign
    assert ("held" in f.explanation) is held


def test_no_common_snapshot_never_destroys_a_filesystem() -> None:
    f = run(chain(SRC, [1, 2]), [snap(DST, own(1), 555, 1)])
    assert f.kind is Kind.NO_COMMON and f.repairs == ()
    assert "other GUIDs" in f.explanation
    assert any("zfs rename" in c for c in f.commands)
    g = run(chain(SRC, [1]), [snap(DST, "x", 1, 1)])
    assert g.kind is Kind.NO_COMMON and "other GUIDs" not in g.explanation


def test_missing_filesystems() -> None:
    assert run(None, chain(DST, [1])).kind is Kind.SENDER_MISSING
    f = run(chain(SRC, [1]), None)
    assert f.kind is Kind.RECEIVER_MISSING and f.healthy
    g = run(chain(SRC, [1]), None, receiving_parent_exists=False)
    assert g.kind is Kind.RECEIVER_PARENT_MISSING and "zfs create -p pool/dst" in g.commands[0]


def test_nothing_yet() -> None:
    f = run([snap(SRC, "manual", 1, 1)], [])
    assert f.kind is Kind.NOTHING_YET and f.healthy


def test_taken_over_comes_before_the_chains() -> None:
    f = run(chain(SRC, [1, 2]), chain(DST, [1]), receiving_role=diagnosis.ROLE_TAKEN_OVER)
    assert f.kind is Kind.TAKEN_OVER and not f.healthy and f.repairs == ()
    assert any("zfsrepl failover --end svc" in c for c in f.commands)
    assert any("zfsrepl runonce svc" in c for c in f.commands)
    assert run(chain(SRC, [1]), chain(DST, [1]),
               receiving_role=diagnosis.ROLE_REPLICA).kind is Kind.UP_TO_DATE


def test_repairs_only_touch_own_snapshots_and_roll_back_to_common() -> None:
    """Over many small chain shapes: a rollback target is always common to both sides
    and a destroyed snapshot is always the service's, on the receiving side only."""
    names = [own(1), own(2), own(3), "manual"]
    for n_src, n_dst, shift in itertools.product(range(4), range(4), (0, 1)):
        src = [snap(SRC, names[i], 100 + i, i + 1) for i in range(n_src)]
        dst = [snap(DST, names[i], 100 + i if i < 2 else 200 + i + shift, i + 1)
               for i in range(n_dst)]
        f = run(src, dst)
        src_guids = {s.guid for s in src}
        for r in f.repairs:
            assert not isinstance(r, ClearMaintenance)
            assert r.side == "receiving" and r.filesystem == DST
            target = next(s for s in dst if s.name == r.snapshot)
            if isinstance(r, Rollback):
                assert target.guid in src_guids
            else:
                assert N.is_ours(r.snapshot) and target.guid not in src_guids


def _zfs_failed(stderr: str) -> CommandError:
    """A zfs command on the destination that failed saying `stderr`, as zfs.py raises it."""
    return zfserrors.failed(f"dst@h: {stderr}", argv=["zfs", "get"], stderr=stderr,
                            returncode=1)


@pytest.mark.parametrize("error,kind", [
    (LoginRefused("cannot connect to dst@h: dst@h: Permission denied (publickey)."),
     Kind.KEY_REJECTED),
    (ConnectionFailed("cannot connect to dst@h: ssh: connect to host h port 22: Connection "
                      "refused"), Kind.UNREACHABLE),
    (ConnectionFailed("cannot connect to dst@h: connection timed out"), Kind.UNREACHABLE),
    (ConnectionFailed("lost the connection to dst@h: Broken pipe"), Kind.UNREACHABLE),
    (_zfs_failed("sudo: a password is required"), Kind.MISSING_RIGHTS),
    (_zfs_failed("cannot open 'p/fs': permission denied"), Kind.MISSING_RIGHTS),
    (_zfs_failed("zfsrepl agent: refused: zfs get may read only ..."), Kind.MISSING_RIGHTS),
    (_zfs_failed("zfsrepl zfs wrapper: refused: zfs get ..."), Kind.MISSING_RIGHTS),
    # an untyped error whose text names the reason: typed here, where zfs's words are read
    (CommandError("dst@h: cannot open", stderr="cannot open 'p/fs': permission denied"),
     Kind.MISSING_RIGHTS),
    # words in a message are not a kind: only the type decides
    (CommandError("dst@h: Permission denied (publickey) in a file name"), Kind.UNKNOWN_ERROR),
    (CommandError("dst@h: something odd"), Kind.UNKNOWN_ERROR),
])
def test_access_problems(error: CommandError, kind: Kind) -> None:
    f = diagnosis.diagnose_access(error, RCV, "svc", via_agent=True)
    assert f.kind is kind and not f.healthy
    assert str(error) in f.explanation


def test_maintenance_is_cleared_only_when_the_chains_allow() -> None:
    ok = diagnosis.diagnose_maintenance("svc", "retries ran out", chains_ok=True)
    assert ok.repairs == (ClearMaintenance("svc"),) and "retries ran out" in ok.explanation
    bad = diagnosis.diagnose_maintenance("svc", None, chains_ok=False)
    assert bad.repairs == () and "zfsrepl clear svc" in bad.commands


def test_interlock_message_says_what_to_do() -> None:
    text = diagnosis.interlock_problem([DST], "svc", RCV)
    assert DST in text and "zfsrepl runonce svc" in text and "zfsrepl failover --end svc" in text


def test_chain_table_aligns_by_guid_and_marks_the_newest_common() -> None:
    rcv = [*chain(DST, [1, 2]), snap(DST, own(3), 999, 3)]
    c = Chains(SRC, DST, chain(SRC, [1, 2, 3]), rcv)
    lines = diagnosis.chain_table(c, N)
    assert lines[-1] == f"  newest common snapshot: @{own(2)}"
    starred = [ln for ln in lines if ln.startswith("*")]
    assert len(starred) == 1 and "guid=102" in starred[0]
    # @3 differs by GUID: shown on separate rows
    assert sum(1 for ln in lines if own(3) in ln) == 2


def test_describe_repair() -> None:
    assert "no -r" in diagnosis.describe_repair(Rollback("receiving", DST, own(1)))
    assert diagnosis.describe_repair(ClearMaintenance("svc")).startswith("clear")


def mark(fs: str, seq: int, txg: int) -> Snapshot:
    """The bookmark of own snapshot `seq` (GUID 100 + seq, as in `chain`)."""
    return snap(fs, own(seq), 100 + seq, txg)


def test_a_bookmark_of_a_destroyed_snapshot_keeps_the_replica_usable() -> None:
    # @2 went to the receiver, was bookmarked and destroyed on the sender; @3 came after
    sending = [snap(SRC, own(1), 101, 1), snap(SRC, own(3), 103, 3)]
    marks = (mark(SRC, 2, 2),)
    f = run(sending, chain(DST, [1, 2]), sending_bookmarks=marks)
    assert f.kind is Kind.SENDER_AHEAD and f.healthy and not f.commands
    assert f"1 snapshot(s) after #{own(2)}" in f.explanation
    assert "the replica is still good" in f.explanation
    up = run(sending[:1], chain(DST, [1, 2]), sending_bookmarks=marks)
    assert up.kind is Kind.UP_TO_DATE and f"holds #{own(2)}" in up.explanation


def test_the_receiver_ahead_of_a_bookmark_rolls_back_to_its_copy_of_it() -> None:
    rcv = [*chain(DST, [1, 2]), snap(DST, own(3), 999, 3)]
    f = run([snap(SRC, own(4), 104, 4)], rcv, sending_bookmarks=(mark(SRC, 2, 2),))
    assert f.kind is Kind.RECEIVER_HAS_EXTRA
    assert f.repairs == (DestroySnapshot("receiving", DST, own(3)),
                         Rollback("receiving", DST, own(2)))
    assert f"stream from #{own(2)}" in f.explanation


def test_a_resume_token_is_resumed_before_anything_else() -> None:
    f = run(chain(SRC, [1, 2]), chain(DST, [1]), receiving_resume_token="1-abc")
    assert f.kind is Kind.RESUMING and f.healthy and not f.repairs
    assert run(chain(SRC, [1, 2]), None, receiving_resume_token="1-abc").kind \
        is Kind.RECEIVER_MISSING


def test_chain_table_shows_the_bookmark_that_is_the_common_point() -> None:
    c = Chains(SRC, DST, [snap(SRC, own(3), 103, 3)], chain(DST, [1, 2]),
               sending_bookmarks=(mark(SRC, 1, 1), mark(SRC, 2, 2)))
    lines = diagnosis.chain_table(c, N)
    assert lines[-1] == f"  newest common snapshot: #{own(2)} (bookmark)"
    (starred,) = [ln for ln in lines if ln.startswith("*")]
    assert f"#{own(2)} guid=102" in starred and f"@{own(2)} guid=102" in starred
    assert any(ln.startswith("=") and f"#{own(1)}" in ln for ln in lines)
