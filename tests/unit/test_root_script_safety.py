"""The root script follows no link a user planted, and runs only from where root alone
can change it. Run as root: these are attacks on root."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from zfsrepl.setup import apply, rootscript
from zfsrepl.setup.rootscript import RootStep

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the attack is on root")

NOBODY = 65534
SECRET = b"root:$6$not-a-real-hash:19000:0:99999:7:::\n"


def _step(tmp_path: Path) -> RootStep:
    return RootStep(side="source", host="srchost", user="nobody", service="web",
                    config_dir=str(tmp_path / "etc"), definition_file="web.toml",
                    definition_text='name = "web"\n', rights="allow", zfs_path="/bin/true",
                    datasets=("p/x",), permissions=("send",),
                    state_folder=str(tmp_path / "state" / "services" / "web"),
                    service_log=str(tmp_path / "log" / "web.log"))


def _vault(tmp_path: Path) -> Path:
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    target = vault / "shadow"
    target.write_bytes(SECRET)
    target.chmod(0o600)
    return target


def _run(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(script)], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=60)


def _write(folder: Path, text: str, owner: int = 0, mode: int = 0o700) -> Path:
    folder.mkdir(mode=0o755, exist_ok=True)
    script = folder / "zfsrepl-root.web.source.sh"
    script.write_text(text)
    script.chmod(mode)
    os.chown(script, owner, owner)
    return script


def test_a_planted_link_for_the_log_file_is_refused(tmp_path: Path) -> None:
    target = _vault(tmp_path)
    step = _step(tmp_path)
    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o755)
    os.chown(log_dir, NOBODY, NOBODY)  # a log folder the user may write
    (log_dir / "web.log").symlink_to(target)
    out = _run(_write(tmp_path / "root-only", rootscript.render(step)))
    st = target.stat()
    assert (st.st_uid, st.st_mode & 0o7777, target.read_bytes()) == (0, 0o600, SECRET)
    assert out.returncode == 1 and str(log_dir) in out.stderr, out.stderr


def test_a_planted_link_for_the_state_folder_is_refused(tmp_path: Path) -> None:
    target = _vault(tmp_path)
    step = _step(tmp_path)
    services = tmp_path / "state" / "services"
    services.mkdir(parents=True, mode=0o755)
    os.chown(services, NOBODY, NOBODY)
    (services / "web").symlink_to(target.parent)
    out = _run(_write(tmp_path / "root-only", rootscript.render(step)))
    st = target.parent.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700)
    assert out.returncode == 1 and str(services) in out.stderr, out.stderr


def test_the_script_makes_its_files_and_runs_again(tmp_path: Path) -> None:
    step = _step(tmp_path)
    script = _write(tmp_path / "root-only", rootscript.render(step))
    for _ in range(2):
        out = _run(script)
        assert out.returncode == 0, out.stderr
    log = Path(step.service_log or "")
    st = log.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (NOBODY, 0o640)
    assert Path(step.state_folder or "").stat().st_uid == NOBODY


@pytest.mark.parametrize("where", ["user's file", "user's folder", "group-writable file"])
def test_the_script_refuses_to_run_where_others_can_change_it(tmp_path: Path,
                                                              where: str) -> None:
    step = _step(tmp_path)
    folder = tmp_path / "home"
    if where == "user's file":
        script = _write(folder, rootscript.render(step), owner=NOBODY)
    elif where == "user's folder":
        script = _write(folder, rootscript.render(step))
        os.chown(folder, NOBODY, NOBODY)
    else:
        script = _write(folder, rootscript.render(step), mode=0o770)
    out = _run(script)
    assert out.returncode == 1 and "only root can write" in out.stderr, out.stderr
    assert not (tmp_path / "etc").exists()  # it did nothing


def test_setup_names_the_scripts_sha256(tmp_path: Path) -> None:
    text = rootscript.render(_step(tmp_path))
    said: list[str] = []

    class Say:
        def say(self, line: str) -> None:
            said.append(line)

    apply.wait_for_root(Say(), "the source system h", "/home/u/s.sh",  # type: ignore[arg-type]
                        iter([["x"], []]).__next__, 0, text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert any(digest in line and "install -m 0700 /home/u/s.sh /root/s.sh" in line
               and "sh /root/s.sh" in line for line in said), said


@pytest.mark.parametrize("rights", ["allow", "sudo"])
def test_a_check_that_hangs_is_a_problem_not_a_hang(tmp_path: Path, rights: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # sudo -n -l of a path sudo does not know answers at once; zfs allow is what hangs
    hang = tmp_path / "zfs"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    monkeypatch.setattr(rootscript, "CHECK_TIMEOUT", 0.5)
    if rights == "sudo":
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "sudo").symlink_to(hang)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    step = RootStep(**{**_step(tmp_path).to_json(), "rights": rights, "zfs_path": str(hang)})
    found = rootscript.problems(step)
    assert any("did not answer within 0.5s" in p for p in found), found


def test_a_planted_link_for_the_key_folder_is_refused(tmp_path: Path) -> None:
    target = _vault(tmp_path)
    keys = tmp_path / "etc" / "keys"
    keys.mkdir(parents=True, mode=0o755)
    os.chown(keys, NOBODY, NOBODY)  # a configuration folder the user may write
    (keys / "nobody").symlink_to(target.parent)
    out = _run(_write(tmp_path / "root-only", rootscript.render(_step(tmp_path))))
    st = target.parent.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700)
    assert out.returncode == 1 and str(keys) in out.stderr, out.stderr
