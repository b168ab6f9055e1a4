"""Hooks run as the service's user (root under a unit that runs as root): a hook, or a
folder on its path, that anybody else can change is refused before anything runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zfsrepl.errors import ConfigError
from zfsrepl.hooks import check_executable, run_hook

NOBODY = 65534


def _hook(folder: Path, mode: int = 0o755) -> Path:
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    folder.chmod(0o755)
    hook = folder / "pre"
    hook.write_text("#!/bin/sh\necho ran\n")
    hook.chmod(mode)
    return hook


def _refusal(key: str, path: Path) -> str | None:
    try:
        check_executable(key, str(path))
    except ConfigError as exc:
        return str(exc)
    return None


def test_a_hook_of_ones_own_passes_and_runs(tmp_path: Path) -> None:
    hook = _hook(tmp_path / "hooks")
    assert _refusal("pre_snapshot", hook) is None
    run_hook("pre_snapshot", str(hook), {}, 10)


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_a_hook_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    hook = _hook(tmp_path / "hooks", mode)
    refused = _refusal("pre_snapshot", hook)
    assert refused is not None and "pre_snapshot" in refused and "writable by others" in refused


def test_a_hook_in_a_folder_others_may_write_is_refused(tmp_path: Path) -> None:
    hook = _hook(tmp_path / "hooks")
    hook.parent.chmod(0o777)
    refused = _refusal("post_snapshot", hook)
    assert refused is not None and str(hook.parent) in refused and "writable by others" in refused


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to another user")
@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_hook_another_user_owns_is_refused(tmp_path: Path, what: str) -> None:
    hook = _hook(tmp_path / "hooks")
    os.chown(hook if what == "file" else hook.parent, NOBODY, NOBODY)
    refused = _refusal("on_alarm", hook)
    assert refused is not None and "on_alarm" in refused and "owned by nobody" in refused


def test_a_link_to_a_hook_is_checked_where_it_leads(tmp_path: Path) -> None:
    hook = _hook(tmp_path / "real", 0o777)
    link_folder = tmp_path / "links"
    link_folder.mkdir(mode=0o755)
    (link_folder / "pre").symlink_to(hook)
    refused = _refusal("pre_snapshot", link_folder / "pre")
    assert refused is not None and "writable by others" in refused


def test_a_missing_hook_is_still_one_message(tmp_path: Path) -> None:
    refused = _refusal("pre_snapshot", tmp_path / "nope")
    assert refused is not None and "is not an executable file" in refused


def test_a_hook_in_a_sticky_shared_folder_passes(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: others cannot rename or replace what is ours
    hook = _hook(shared / "mine")
    assert _refusal("pre_snapshot", hook) is None
