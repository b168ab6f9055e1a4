"""The pre- and post-snapshot hooks: executables run with a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from zfsrepl.errors import CommandError, ConfigError
from zfsrepl.log import logger


def check_executable(key: str, path: str | None, definition: Path | None = None) -> None:
    """Refuse to start a cycle whose hook cannot run (before anything changes); the error
    names the definition that asks for it, as every definition error does."""
    if path is None:
        return
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        where = f"{definition}: " if definition is not None else ""
        raise ConfigError(f"{where}{key}: {path} is not an executable file; expected the full "
                          'path of an executable or "none"')


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
