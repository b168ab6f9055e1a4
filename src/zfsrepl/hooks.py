"""The pre- and post-snapshot hooks: executables run with a timeout."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

from zfsrepl.errors import CommandError, ConfigError
from zfsrepl.fileio import trusted_owner, user_name
from zfsrepl.log import logger


def _owner_problem(st: os.stat_result, euid: int, folder: bool) -> str | None:
    if not trusted_owner(st.st_uid, euid):
        return f"is owned by {user_name(st.st_uid)}"
    mode = stat.S_IMODE(st.st_mode)
    # In a sticky folder (/tmp) others cannot rename or replace what is ours.
    if mode & 0o022 and not (folder and mode & stat.S_ISVTX):
        return f"is writable by others (mode {mode:04o})"
    return None


def hook_problem(path: str, euid: int) -> str | None:
    """Why the hook `path` must not run as user `euid`: someone other than that user or
    root could change it, or a folder above it (where a link leads too); else None."""
    for p in dict.fromkeys((path, os.path.realpath(path))):
        chain = [(p, False), *((str(d), True) for d in Path(p).parents)]
        for item, folder in chain:
            try:
                st = os.stat(item)
            except OSError as exc:
                return f"{item}: {exc.strerror}"
            problem = _owner_problem(st, euid, folder)
            if problem:
                return f"{item} {problem}"
    return None


def check_executable(key: str, path: str | None, definition: Path | None = None) -> None:
    """Refuse to start a cycle whose hook cannot run, or that anybody but root and the
    user running zfsrepl could change (it runs as that user): before anything changes.
    The error names the definition that asks for it, as every definition error does."""
    if path is None:
        return
    where = f"{definition}: " if definition is not None else ""
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise ConfigError(f"{where}{key}: {path} is not an executable file; expected the full "
                          'path of an executable or "none"')
    euid = os.geteuid()
    problem = hook_problem(path, euid)
    if problem:
        me = "root" if euid == 0 else f"root or {user_name(euid)}"
        raise ConfigError(f"{where}{key}: refusing the hook {path}: {problem}; a hook runs as "
                          f"{user_name(euid)}, so it and every folder above it must belong "
                          f"to {me} and be writable by their owner only")


def run_hook(key: str, path: str, env: dict[str, str], timeout: int) -> None:
    """Run the hook; raise CommandError if it fails or outlives `timeout` seconds."""
    logger.info("running %s hook %s", key, path)
    full_env = {**os.environ, **env}
    try:
        proc = subprocess.Popen([path], env=full_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as exc:
        raise CommandError(f"{key} hook {path} cannot run: {exc.strerror}") from None
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The hook may have started children: end its whole process group.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CommandError(f"{key} hook {path} did not finish within {timeout}s; killed") \
            from None
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    for line in output.decode("utf-8", "replace").splitlines():
        logger.info("%s: %s", key, line)
    if proc.returncode != 0:
        raise CommandError(f"{key} hook {path} failed with exit code {proc.returncode}",
                           returncode=proc.returncode)
