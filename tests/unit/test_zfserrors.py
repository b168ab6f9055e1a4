"""zfs's error texts as types: the texts are those seen from zfs-fuse 0.7 (pool v23)
and OpenZFS 2.x; the Zfs wrapper and a transfer raise the typed errors, which callers
still catch as CommandError."""

from __future__ import annotations

import sys

import pytest

from zfsrepl import zfserrors
from zfsrepl.errors import CommandError, ConnectionFailed
from zfsrepl.host import Result
from zfsrepl.transfer import TransferFailed, TransferNotResumable, pipe
from zfsrepl.zfs import Zfs
from zfsrepl.zfserrors import (
    CreatedNotMounted,
    DatasetBusy,
    DatasetExists,
    DatasetMissing,
    DestinationModified,
    HasClones,
    HoldExists,
    IncrementalMismatch,
    NoSpace,
    NoSuchHold,
    NotResumable,
    PermissionDenied,
    UnknownProperty,
)

FUSE = [
    ("cannot open 'dstpool/fs': dataset does not exist", DatasetMissing),
    ("cannot open 'fs@a%c': dataset does not exist", DatasetMissing),
    ("cannot receive incremental stream: destination 'dstpool/r4' does not exist",
     DatasetMissing),
    ("cannot destroy 'dstpool/fs': dataset is busy", DatasetBusy),
    ("cannot rename 'dstpool/fs': dataset is busy", DatasetBusy),
    ("cannot receive new filesystem stream: destination 'dstpool/fs' exists\n"
     "must specify -F to overwrite it", DatasetExists),
    ("cannot create snapshot 'srcpool/fs@s1': dataset already exists", DatasetExists),
    ("cannot receive incremental stream: destination dstpool/fs has been modified\n"
     "since most recent snapshot", DestinationModified),
    ("cannot receive incremental stream: most recent snapshot of dstpool/fs does not\n"
     "match incremental source", IncrementalMismatch),
    ("connect: Permission denied\ninternal error: failed to initialize ZFS library",
     PermissionDenied),
    ("bad property list: invalid property 'written'", UnknownProperty),
    ("invalid property 'userrefs'", UnknownProperty),
    ("cannot hold snapshot 'dstpool/fs@s1': tag already exists on this dataset", HoldExists),
    ("cannot release hold from snapshot 'dstpool/fs@s1': no such tag on this dataset",
     NoSuchHold),
]
OPENZFS = [
    ("cannot open 'tank/fs': dataset does not exist", DatasetMissing),
    ("cannot destroy snapshot tank/fs@s1: dataset is busy", DatasetBusy),
    ("cannot destroy 'tank/fs@s1': snapshot has dependent clones\n"
     "use '-R' to destroy the following datasets:\ntank/fs.diverged-20260101-120000",
     HasClones),
    ("cannot resume send: 'tank/fs@s2' used in the initial send no longer exists",
     NotResumable),
    ("cannot resume send: resume token is corrupt", NotResumable),
    ("cannot receive resume stream: kernel modules must be upgraded to receive this stream.",
     NotResumable),
    ("cannot destroy 'tank/fs@s1': permission denied", PermissionDenied),
    ("cannot rename 'tank/fs': permission denied", PermissionDenied),
    ("filesystem 'tank/fs' can not be mounted: Permission denied\n"
     "cannot mount 'tank/fs': Insufficient privileges", PermissionDenied),
    ("cannot receive new filesystem stream: out of space", NoSpace),
    ("cannot create snapshot 'tank/fs@s9': out of space", NoSpace),
    ("cannot create bookmark 'tank/fs#s1': bookmark exists", DatasetExists),
    ("cannot create 'tank/fs.diverged-20260101-120000': dataset already exists",
     DatasetExists),
    ("cannot hold snapshot 'tank/fs@s1': tag already exists on this dataset", HoldExists),
    ("cannot destroy snapshot tank/fs@s1: snapshot is cloned", HasClones),
    # a clone made by a user who may not mount (Linux): the mount's complaint comes first
    ("filesystem 'tank/fs' can not be mounted: Permission denied\n"
     "cannot mount 'tank/fs': Insufficient privileges\n"
     "clone successfully created, but not mounted", CreatedNotMounted),
    ("cannot receive incremental stream: most recent snapshot of tank/fs does not\n"
     "match incremental source", IncrementalMismatch),
]


@pytest.mark.parametrize(("stderr", "kind"), FUSE + OPENZFS)
def test_each_text_names_its_kind(stderr: str, kind: type[zfserrors.ZfsError]) -> None:
    assert zfserrors.kind_of(stderr) is kind
    error = zfserrors.failed("dst: x", argv=["zfs"], stderr=stderr, returncode=1)
    assert type(error) is kind and isinstance(error, CommandError)
    assert (str(error), error.stderr, error.returncode) == ("dst: x", stderr, 1)


@pytest.mark.parametrize("stderr", [
    "", "warning: cannot send 'srcpool/fs@s2': Broken pipe",
    # rollback without -r: not "exists" in the sense of a dataset being there
    "cannot rollback to 'dstpool/fs@s1': more recent snapshots exist\n"
    "use '-r' to force deletion of the following snapshots:",
])
def test_a_text_zfs_names_no_reason_for_stays_plain(stderr: str) -> None:
    assert zfserrors.kind_of(stderr) is None
    assert type(zfserrors.failed("x", argv=[], stderr=stderr, returncode=1)) is CommandError


def test_typed_keeps_the_message_and_leaves_other_errors_alone() -> None:
    plain = CommandError("dst: cannot open 'a': dataset does not exist", argv=["zfs", "get"],
                         stderr="cannot open 'a': dataset does not exist\n", returncode=1)
    found = zfserrors.typed(plain)
    assert isinstance(found, DatasetMissing)
    assert (str(found), found.argv, found.returncode) == (str(plain), plain.argv, 1)
    lost = ConnectionFailed("lost", stderr="dataset is busy")
    assert zfserrors.typed(lost) is lost


def test_every_line_and_says() -> None:
    two = ("cannot open 'a': dataset does not exist\n"
           "cannot open 'b': dataset does not exist\n")
    assert zfserrors.every_line(two, DatasetMissing)
    # a batch where one snapshot had the hold already and another had no room: failed
    mixed = ("cannot hold snapshot 'a@s': tag already exists on this dataset\n"
             "cannot hold snapshot 'b@s': out of space\n")
    assert not zfserrors.every_line(mixed, HoldExists)
    assert zfserrors.kind_of(mixed) is NoSpace
    assert not zfserrors.every_line(two + "cannot open 'c': permission denied\n",
                                    DatasetMissing)
    assert not zfserrors.every_line("", DatasetMissing)
    assert zfserrors.says("warning: cannot send 'a': Broken pipe\n"
                          "cannot receive resume stream: checksum mismatch", NotResumable)


class FailingHost:
    label = "dst"

    def __init__(self, stderr: str, returncode: int = 1) -> None:
        self.stderr = stderr
        self.returncode = returncode
        self.calls: list[list[str]] = []

    def run(self, argv: list[str], *, check: bool = True, **_: object) -> Result:
        self.calls.append(argv)
        if check and self.returncode:
            raise CommandError(f"dst: {self.stderr.splitlines()[0]}", argv=argv,
                               stderr=self.stderr, returncode=self.returncode)
        return Result(argv, self.returncode, "", self.stderr)


def test_the_zfs_wrapper_raises_the_typed_error() -> None:
    zfs = Zfs(FailingHost("cannot rename 'tank/fs': permission denied\n"),  # type: ignore[arg-type]
              ["zfs"])
    with pytest.raises(PermissionDenied, match="dst: cannot rename 'tank/fs'"):
        zfs.run("rename", "tank/fs", "tank/fs.x")
    busy = FailingHost("cannot destroy snapshot tank/fs@s1: dataset is busy\n")
    zfs = Zfs(busy, ["zfs"])  # type: ignore[arg-type]
    with pytest.raises(DatasetBusy):
        zfs.destroy_snapshot("tank/fs", "s1")
    assert len(busy.calls) > 1  # busy is ridden out a while before it is raised


def test_listing_a_missing_filesystem_is_not_an_error() -> None:
    zfs = Zfs(FailingHost("cannot open 'tank/a': dataset does not exist\n"),  # type: ignore[arg-type]
              ["zfs"])
    assert zfs.states(["tank/a"]) == {"tank/a": None}
    zfs = Zfs(FailingHost("cannot open 'tank/a': permission denied\n"),  # type: ignore[arg-type]
              ["zfs"])
    with pytest.raises(PermissionDenied):
        zfs.states(["tank/a"])


def test_a_hold_already_there_is_fine_another_failure_is_not() -> None:
    Zfs(FailingHost("cannot hold snapshot 'a@s': tag already exists on this dataset\n"),  # type: ignore[arg-type]
        ["zfs"]).hold("t", ["a@s"])
    with pytest.raises(NoSpace):
        Zfs(FailingHost("cannot hold snapshot 'a@s': out of space\n"),  # type: ignore[arg-type]
            ["zfs"]).hold("t", ["a@s"])


def test_a_transfer_whose_token_is_no_good_raises_not_resumable() -> None:
    sender = [sys.executable, "-c", "import sys; sys.stderr.write(\"cannot resume send: "
              "'tank/fs@s2' used in the initial send no longer exists\\n\"); sys.exit(1)"]
    with pytest.raises(TransferNotResumable) as exc:
        pipe(sender, ["cat"], "resumed send")
    assert isinstance(exc.value, NotResumable) and isinstance(exc.value, TransferFailed)
    cut = [sys.executable, "-c", "import sys; sys.stderr.write('Broken pipe\\n'); sys.exit(1)"]
    with pytest.raises(TransferFailed) as other:
        pipe(cut, ["cat"], "resumed send")
    assert not isinstance(other.value, NotResumable)
