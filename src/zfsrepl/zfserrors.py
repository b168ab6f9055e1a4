"""What a failed zfs command said, as a type.

This is the one place that reads zfs's error texts. Everything else catches the
classes below (all CommandError, so a caller that catches CommandError still
does) and never looks at the words. The texts are those of both generations:
zfs-fuse (the pool v23, OpenSolaris-era command line) and OpenZFS 2.x; where a
message wraps across lines, the first line is enough.
"""

from __future__ import annotations

import re

from zfsrepl.errors import CommandError


class ZfsError(CommandError):
    """A zfs command failed for a reason zfs named."""


class DatasetMissing(ZfsError):
    """The dataset (or the snapshot) named does not exist."""


class DatasetBusy(ZfsError):
    """The dataset is in use: mounted under FUSE, held, or being received into."""


class DatasetExists(ZfsError):
    """What was to be created (a snapshot, a filesystem, a bookmark) is already there."""


class NotResumable(ZfsError):
    """A cut resumable transfer cannot go on from its token (its snapshot is gone or
    changed, the token is corrupt): discard it and start over."""


class PermissionDenied(ZfsError):
    """The user may not do this: no delegated right, no root, no access to zfs."""


class RefusedByRule(PermissionDenied):
    """The service's agent or the zfs wrapper refused the command: it is not one of the
    forms this service may run there."""


class NoSpace(ZfsError):
    """The pool (or a quota) is full."""


class DestinationModified(ZfsError):
    """An incremental receive found the replica written since its newest snapshot."""


class IncrementalMismatch(ZfsError):
    """An incremental stream's base is not the replica's newest snapshot."""


class HasClones(ZfsError):
    """The snapshot is the origin of a clone, which would have to go with it."""


class CreatedNotMounted(ZfsError):
    """The dataset was created, only mounting it failed (a user who may not mount)."""


class UnknownProperty(ZfsError):
    """This ZFS does not know a property asked for (older pool versions)."""


class HoldExists(ZfsError):
    """A hold with that tag is already on the snapshot."""


class NoSuchHold(ZfsError):
    """No hold with that tag is on the snapshot."""


# In order of precedence: a text is of the first kind one of its lines names. A
# pipeline or a command that goes on past a failure says several things; what
# decides comes first ("created, but not mounted" after the mount's own complaint).
# The more specific texts come first too ("tag already exists" before "already
# exists"; a resume token's snapshot that "no longer exists" before anything else).
_PATTERNS: tuple[tuple[re.Pattern[str], type[ZfsError]], ...] = tuple(
    (re.compile(text, re.IGNORECASE), cls) for text, cls in (
        (r"cannot resume send|resume token|cannot receive resume stream", NotResumable),
        (r"successfully created, but", CreatedNotMounted),
        (r"has dependent clones|snapshot is cloned", HasClones),
        (r"has been modified", DestinationModified),
        (r"most recent snapshot of \S+ does not|match incremental source", IncrementalMismatch),
        (r"out of space|no space left|quota exceeded", NoSpace),
        (r"^zfsrepl (agent|zfs wrapper): refused: ", RefusedByRule),
        (r"permission denied|insufficient privileges|not permitted|"
         r"password is required|a terminal is required", PermissionDenied),
        (r"dataset does not exist|destination '?\S+'? does not exist|"
         r"could not find any snapshots|no such pool", DatasetMissing),
        (r"is busy", DatasetBusy),
        (r"tag already exists", HoldExists),
        (r"no such tag", NoSuchHold),
        (r"already exists|bookmark exists|destination '?\S+'? exists", DatasetExists),
        (r"invalid property", UnknownProperty),
    ))


def kind_of_line(line: str) -> type[ZfsError] | None:
    """The class one line of zfs's standard error names, or None."""
    for pattern, cls in _PATTERNS:
        if pattern.search(line):
            return cls
    return None


def kind_of(stderr: str) -> type[ZfsError] | None:
    """The class `stderr` names: of the kinds its lines name, the first in precedence."""
    lines = stderr.splitlines()
    for pattern, cls in _PATTERNS:
        if any(pattern.search(ln) for ln in lines):
            return cls
    return None


def says(stderr: str, kind: type[ZfsError]) -> bool:
    """Whether any line of `stderr` names `kind` (a pipeline's processes each say their
    own; the one that matters need not come first)."""
    return any(kind_of_line(ln) is kind for ln in stderr.splitlines())


def every_line(stderr: str, *kinds: type[ZfsError]) -> bool:
    """Whether `stderr` has a line and each of its lines names one of `kinds` (zfs goes on
    past a dataset it cannot act on and says so in one line each)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return bool(lines) and all(kind_of_line(ln) in kinds for ln in lines)


def typed(exc: CommandError) -> CommandError:
    """`exc` as the class its zfs error text names, message and details unchanged; a
    lost connection, an error of another kind or one zfs did not name stays as it is."""
    if type(exc) is not CommandError:
        return exc
    cls = kind_of(exc.stderr)
    if cls is None:
        return exc
    return cls(str(exc), argv=exc.argv, stderr=exc.stderr, returncode=exc.returncode)


def failed(message: str, *, argv: list[str], stderr: str, returncode: int | None
           ) -> CommandError:
    """The error for a zfs command that failed with `stderr`: typed where zfs named the
    reason, a plain CommandError otherwise."""
    cls = kind_of(stderr) or CommandError
    return cls(message, argv=argv, stderr=stderr, returncode=returncode)
