"""Exceptions that carry a message meant for the operator.

Every error a user can cause or meet ends as one of these, caught at the command
line and printed as one clear line: never a traceback.
"""

from __future__ import annotations


class ZfsreplError(Exception):
    """Base of all operator-facing errors."""

    exit_code = 1


class UsageError(ZfsreplError):
    """Bad command line or bad service definition: nothing was changed."""

    exit_code = 2


class ConfigError(UsageError):
    """A service definition is invalid; the message names file, key and expectation."""


class CommandError(ZfsreplError):
    """A command (zfs, ssh, a hook) failed; carries what it printed."""

    def __init__(self, message: str, *, argv: list[str] | None = None, stderr: str = "",
                 returncode: int | None = None) -> None:
        super().__init__(message)
        self.argv = argv or []
        self.stderr = stderr
        self.returncode = returncode


class ConnectionFailed(CommandError):
    """The remote host could not be reached or refused the login."""


class LoginRefused(ConnectionFailed):
    """The remote host answered, and refused the login (the key, or the password)."""


class ReplicationError(ZfsreplError):
    """The cycle cannot proceed for a reason in ZFS state (no common snapshot, ...)."""
