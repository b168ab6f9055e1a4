"""The service's line in authorized_keys: others kept byte for byte, never twice."""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zfsrepl.errors import UsageError
from zfsrepl.setup import authorized_keys as ak

MARK = ak.service_marker("testrepl", "src", "srchost")
PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnly4Test zfsrepl:testrepl:src@srchost"
ARGV = ["/opt/zfsrepl/bin/zfsrepl", "agent", "--service", "testrepl", "--filesystem",
        "pool/dst/fs 1"]
LINE = ak.key_line(PUB, ARGV, MARK)
OTHERS = (b"# my keys\n"
          b"ssh-ed25519 AAAAother1 alice@laptop\n"
          b'from="10.0.0.1",no-pty ssh-rsa AAAAother2 backup\n'
          b"\n"
          b"ssh-ed25519 AAAAother3 zfsrepl:otherservice:src@srchost\n")


def test_key_line_is_restricted_and_forced() -> None:
    assert LINE.startswith('restrict,command="')
    assert LINE.endswith(" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnly4Test " + MARK)
    command = LINE.split('"')[1]
    assert shlex.split(command) == ARGV


def test_forced_command_refuses_what_sshd_would_misread() -> None:
    for bad in ('a"b', "a\\b", "a\nb"):
        with pytest.raises(UsageError):
            ak.forced_command(["zfsrepl", bad])


def test_not_a_public_key() -> None:
    with pytest.raises(UsageError):
        ak.key_line("garbage", ARGV, MARK)


def test_added_at_the_end_others_kept() -> None:
    new = ak.with_line(OTHERS, LINE, MARK)
    assert new == OTHERS + LINE.encode() + b"\n"


def test_missing_final_newline_is_not_glued() -> None:
    new = ak.with_line(b"ssh-ed25519 AAAAx a@b", LINE, MARK)
    assert new == b"ssh-ed25519 AAAAx a@b\n" + LINE.encode() + b"\n"


def test_again_changes_nothing() -> None:
    once = ak.with_line(OTHERS, LINE, MARK)
    assert once is not None
    assert ak.with_line(once, LINE, MARK) is None


def test_a_changed_line_replaces_the_old_in_place() -> None:
    old = ak.key_line(PUB, [*ARGV[:-1], "pool/dst/old"], MARK)
    content = OTHERS.replace(b"\n\n", b"\n" + old.encode() + b"\n\n")
    new = ak.with_line(content, LINE, MARK)
    assert new == OTHERS.replace(b"\n\n", b"\n" + LINE.encode() + b"\n\n")


def test_duplicates_of_the_service_collapse_to_one() -> None:
    content = OTHERS + LINE.encode() + b"\n" + LINE.encode() + b"\n"
    new = ak.with_line(content, LINE, MARK)
    assert new == OTHERS + LINE.encode() + b"\n"


def test_commented_out_line_is_not_ours() -> None:
    content = b"# " + LINE.encode() + b"\n"
    assert ak.with_line(content, LINE, MARK) == content + LINE.encode() + b"\n"


def test_without_marker() -> None:
    content = ak.with_line(OTHERS, LINE, MARK)
    assert content is not None
    assert ak.without_marker(content, MARK) == OTHERS
    assert ak.without_marker(OTHERS, MARK) is None


@given(st.lists(st.binary(max_size=80).filter(lambda b: MARK.encode() not in b), max_size=8))
def test_other_lines_survive_any_content(lines: list[bytes]) -> None:
    content = b"\n".join(lines)
    new = ak.with_line(content, LINE, MARK)
    assert new is not None
    assert new.startswith(content)
    assert new.count(LINE.encode()) == 1
    assert ak.with_line(new, LINE, MARK) is None


def test_update_file_keeps_mode_and_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / ".ssh" / "authorized_keys"
    assert ak.update(path, lambda c: ak.with_line(c, LINE, MARK))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    os.chmod(path, 0o640)
    before = path.read_bytes()
    assert not ak.update(path, lambda c: ak.with_line(c, LINE, MARK))
    assert path.read_bytes() == before
    assert ak.update(path, lambda c: ak.without_marker(c, MARK))
    assert path.read_bytes() == b""
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".authorized")]
    assert leftovers == []


def test_the_lock_beside_the_file_is_not_reached_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / ".zfsrepl-authorized_keys.lock").symlink_to(target)
    with pytest.raises(UsageError, match="symbolic link"):
        ak.update(ssh / "authorized_keys", lambda c: c + b"x\n")
    assert not target.exists() and not (ssh / "authorized_keys").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a folder of another user")
def test_root_does_not_edit_a_file_in_another_users_folder(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    keys = ssh / "authorized_keys"
    keys.write_bytes(b"ssh-ed25519 AAAA zfsrepl:web:src@h\n")
    os.chown(ssh, 65534, 65534)
    with pytest.raises(UsageError, match=r"owned by nobody.*run zfsrepl as nobody"):
        ak.update(keys, lambda c: b"")
    assert keys.read_bytes() == b"ssh-ed25519 AAAA zfsrepl:web:src@h\n"
    assert not (ssh / ".zfsrepl-authorized_keys.lock").exists()
