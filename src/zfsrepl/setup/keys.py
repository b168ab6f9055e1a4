"""The per-service SSH key pair: ed25519, the private half readable by its user only.

Keys live in `<config-dir>/keys/<source-user>/<service>` (and `.pub`), in a folder the
source root script creates for that user alone (mode 0700), as the manual's
`ssh_keys/<user>/<service>`.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from zfsrepl.errors import CommandError


def key_dir(config_dir: Path, user: str) -> Path:
    return config_dir / "keys" / user


def private_key_path(config_dir: Path, user: str, service: str) -> Path:
    return key_dir(config_dir, user) / service


KEYGEN_TIMEOUT = 60  # an ed25519 key takes milliseconds; more is a hang


def _keygen(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False,
                              timeout=KEYGEN_TIMEOUT)
    except FileNotFoundError:
        raise CommandError("ssh-keygen not found: install the OpenSSH client") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{' '.join(argv[:3])} did not finish within {KEYGEN_TIMEOUT}s",
                           argv=argv) from None
    if proc.returncode != 0:
        raise CommandError(f"{' '.join(argv[:3])} failed: "
                           f"{proc.stderr.decode('utf-8', 'replace').strip()}", argv=argv)
    return proc.stdout.decode("utf-8", "replace")


def ensure_key(private: Path, comment: str) -> tuple[str, bool]:
    """The public key of `private`, made first if missing; (public key, created).

    An existing key is kept (re-running setup must not lock the service out); its
    `.pub` is rewritten from the private key if missing or different, and both get
    their modes back.
    """
    public = private.with_name(private.name + ".pub")
    created = False
    if not private.exists():
        old_umask = os.umask(0o077)  # never readable by others, not even for a moment
        try:
            _keygen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                     "-f", str(private)])
        finally:
            os.umask(old_umask)
        created = True
    os.chmod(private, 0o600)
    derived = _keygen(["ssh-keygen", "-y", "-f", str(private)]).strip()
    blob = " ".join(derived.split()[:2])
    try:
        current = " ".join(public.read_text(encoding="utf-8").split()[:2])
    except (FileNotFoundError, UnicodeDecodeError):
        current = ""
    if current != blob:
        public.write_text(f"{blob} {comment}\n", encoding="utf-8")
    os.chmod(public, 0o644)
    return f"{blob} {comment}", created


def permission_problems(private: Path) -> list[str]:
    """What is wrong with the key files' owner and modes, one line each."""
    problems = []
    uid = os.getuid()
    for path, want in ((private, 0o600), (private.with_name(private.name + ".pub"), 0o644)):
        try:
            st = path.stat()
        except FileNotFoundError:
            problems.append(f"{path} is missing: run setup again")
            continue
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != uid:
            problems.append(f"{path} is not owned by this user (uid {uid}): chown it")
        if mode & ~want:
            problems.append(f"{path} has mode {mode:04o}: chmod {want:04o} {path}")
    return problems
