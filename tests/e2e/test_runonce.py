"""`zfsrepl runonce` between the lab's two hosts, as users src and dst, over real ssh.

Every replica is checked by content: the files of each destination snapshot must
equal the files of the source at that snapshot.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import (
    Area,
    Lab,
    LabHost,
    ZfsreplCli,
    exists,
    snapshot_checksums,
    snapshot_prefix,
    tree_checksums,
    write_tree,
)

pytestmark = pytest.mark.backends("fuse", "openzfs")


def snapshots(host: LabHost, fs: str) -> list[str]:
    """Snapshot names (after '@') of `fs`, oldest first."""
    out = host.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-d", "1", fs)
    return [line.split("@", 1)[1] for line in out.splitlines() if "@" in line]



def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


def assert_replica_equals(lab: Lab, src_fs: str, dst_fs: str, snap: str,
                          expected: dict[str, str]) -> None:
    assert snapshot_checksums(lab.src, f"{src_fs}@{snap}") == expected
    assert snapshot_checksums(lab.dst, f"{dst_fs}@{snap}") == expected


def mount_read_write(host: LabHost, fs: str) -> None:
    """Mount a replica for changing it by hand. A tool may keep replicas readonly=on;
    an administrator who works on one anyway mounts it read-write (a temporary
    property: the dataset's readonly stays as it is)."""
    if host.zfs("get", "-H", "-o", "value", "readonly", fs).strip() == "on":
        host.zfs("mount", "-o", "rw", fs)
    else:
        host.zfs("mount", fs)


def make_fs(lab: Lab, fs: str, seed: int) -> dict[str, str]:
    lab.src.zfs("create", fs)
    mnt = lab.src.mountpoint(fs)
    write_tree(mnt, seed=seed)
    return tree_checksums(mnt)


def test_full_then_incremental_for_two_filesystems(lab: Lab, area: Area,
                                                   repl: ZfsreplCli) -> None:
    # The second filesystem's name holds a space: every word crossing ssh is quoted.
    pairs = [(f"{area.src}/fs1", f"{area.dst}/fs1"), (f"{area.src}/fs 2", f"{area.dst}/fs 2")]
    for i, (src, _) in enumerate(pairs):
        make_fs(lab, src, seed=i)
    repl.write_service(filesystems=pairs, keep=2, retries=1)

    seen: list[str] = []
    for cycle in range(4):
        expected = {}
        for i, (src, _) in enumerate(pairs):
            if cycle:
                write_tree(lab.src.mountpoint(src), seed=100 * cycle + i)
            expected[src] = tree_checksums(lab.src.mountpoint(src))
        out = text(repl.run("runonce", "testrepl"))
        kind = "full send" if cycle == 0 else "incremental"
        assert out.count(f"starting {kind}") == len(pairs), out
        assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO ", out, re.M), out

        snap = snapshots(lab.src, pairs[0][0])[-1]
        assert snap == f"{snapshot_prefix(lab)}{cycle + 1}"
        seen.append(snap)
        for src, dst in pairs:
            assert_replica_equals(lab, src, dst, snap, expected[src])
            # keep = 2 on both sides
            assert snapshots(lab.src, src) == seen[-2:]
            assert snapshots(lab.dst, dst) == seen[-2:]


def test_nothing_to_do_when_up_to_date_still_snapshots_and_sends(
        lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    expected = make_fs(lab, src, seed=3)
    repl.write_service(filesystems=[(src, dst)], keep=3, retries=1)
    repl.run("runonce", "testrepl")
    repl.run("runonce", "testrepl")  # no change: an empty incremental, still a new snapshot
    names = snapshots(lab.dst, dst)
    assert len(names) == 2
    assert_replica_equals(lab, src, dst, names[-1], expected)


def test_changes_on_the_destination_are_overwritten(lab: Lab, area: Area,
                                                    repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    make_fs(lab, src, seed=5)
    repl.write_service(filesystems=[(src, dst)], retries=1)
    repl.run("runonce", "testrepl")

    # Someone works on the replica: mount it, change files, unmount.
    mount_read_write(lab.dst, dst)
    mnt = lab.dst.mountpoint(dst)
    (mnt / "written-on-destination").write_bytes(b"lost on the next cycle")
    next(p for p in mnt.iterdir() if p.is_file() and p.name.startswith("file-")).unlink()
    lab.dst.zfs("unmount", dst)

    write_tree(lab.src.mountpoint(src), seed=6)
    expected = tree_checksums(lab.src.mountpoint(src))
    repl.run("runonce", "testrepl")
    assert_replica_equals(lab, src, dst, snapshots(lab.src, src)[-1], expected)


def test_source_ahead_heals_without_help(lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    """The original manual's 7.1: the source holds snapshots the destination never got
    (and the destination was touched). The next cycle sends them all, from the newest
    snapshot both sides share."""
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    make_fs(lab, src, seed=7)
    repl.write_service(filesystems=[(src, dst)], keep=10, retries=1)
    repl.run("runonce", "testrepl")
    first = snapshots(lab.dst, dst)[-1]

    # Cycles that snapshotted but never sent (as if the link was down)
    missed = {}
    for seq in (2, 3, 4):
        write_tree(lab.src.mountpoint(src), seed=70 + seq)
        name = f"{snapshot_prefix(lab)}{seq}"
        lab.src.zfs("snapshot", f"{src}@{name}")
        missed[name] = tree_checksums(lab.src.mountpoint(src))
    mount_read_write(lab.dst, dst)
    (lab.dst.mountpoint(dst) / "stray").write_text("changed on the destination")
    lab.dst.zfs("unmount", dst)

    repl.run("runonce", "testrepl")
    names = snapshots(lab.dst, dst)
    assert names == [first, *missed, f"{snapshot_prefix(lab)}5"]
    for name, expected in missed.items():
        assert snapshot_checksums(lab.dst, f"{dst}@{name}") == expected


# Not on the OpenZFS VM: backend-neutral, and minutes of emulated time (the e2e run
# there is kept to what OpenZFS changes).
@pytest.mark.backends("fuse")
def test_two_services_on_one_source_keep_independent_chains(lab: Lab, area: Area,
                                                            repl: ZfsreplCli) -> None:
    """One source filesystem, two services: one to the destination host, one to a second
    destination on the source host itself. Each keeps its own chain and retention, and
    neither sends or prunes the other's snapshots."""
    src = f"{area.src}/shared"
    to_dst, to_local = f"{area.dst}/copy-a", f"{area.src}/copy-b"
    make_fs(lab, src, seed=11)
    repl.write_service(name="to-dst", filesystems=[(src, to_dst)], keep=2, retries=1)
    repl.write_service(name="to-local", filesystems=[(src, to_local)], keep=1, retries=1,
                       destination={"host": lab.src.address})
    for cycle in range(3):
        write_tree(lab.src.mountpoint(src), seed=110 + cycle)
        repl.run("runonce", "to-dst")
        repl.run("runonce", "to-local")

    a = f"zfsrepl-src-dst-{lab.dst.address}-"
    b = f"zfsrepl-src-dst-{lab.src.address}-"
    on_src = snapshots(lab.src, src)
    assert [n for n in on_src if n.startswith(a)] == [f"{a}2", f"{a}3"]
    assert [n for n in on_src if n.startswith(b)] == [f"{b}3"]
    assert snapshots(lab.dst, to_dst) == [f"{a}2", f"{a}3"]
    assert snapshots(lab.src, to_local) == [f"{b}3"]
    expected = snapshot_checksums(lab.src, f"{src}@{b}3")
    assert snapshot_checksums(lab.src, f"{to_local}@{b}3") == expected


HOOK = """#!/bin/sh
echo "$ZFSREPL_PHASE $ZFSREPL_SERVICE $ZFSREPL_SNAPSHOT ${ZFSREPL_SNAPSHOT_STATUS:-}" >> "$0.log"
printf '%s\\n' "$ZFSREPL_FILESYSTEMS" | sed 's/^/fs /' >> "$0.log"
exit ${EXIT:-0}
"""


def install_hook(repl: ZfsreplCli, name: str, exit_code: int = 0) -> Path:
    path = repl.base / name
    repl.put(path, HOOK.replace("${EXIT:-0}", str(exit_code)).encode())
    repl.host.run(["chmod", "0755", str(path)])
    return path


def hook_log(repl: ZfsreplCli, hook: Path) -> list[str]:
    proc = repl.host.run(["cat", f"{hook}.log"], check=False)
    return proc.stdout.decode().splitlines()


def test_hooks_run_in_order_around_the_snapshot(lab: Lab, area: Area,
                                                repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/db", f"{area.dst}/db"
    make_fs(lab, src, seed=13)
    pre, post = install_hook(repl, "pre"), install_hook(repl, "post")
    # one log for both: the order is visible
    repl.host.run(["ln", "-sf", f"{pre}.log", f"{post}.log"])
    repl.write_service(filesystems=[(src, dst)], retries=1,
                       pre_snapshot=str(pre), post_snapshot=str(post))
    repl.run("runonce", "testrepl")
    snap = f"{snapshot_prefix(lab)}1"
    assert hook_log(repl, pre) == [
        f"pre_snapshot testrepl {snap} ", f"fs {src}",
        f"post_snapshot testrepl {snap} ok", f"fs {src}",
    ]
    assert snapshots(lab.dst, dst) == [snap]


def test_failing_pre_hook_aborts_the_cycle_and_post_hook_still_runs(
        lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/db", f"{area.dst}/db"
    make_fs(lab, src, seed=17)
    pre, post = install_hook(repl, "pre", exit_code=3), install_hook(repl, "post")
    repl.write_service(filesystems=[(src, dst)], retries=1, retry_delay=0,
                       pre_snapshot=str(pre), post_snapshot=str(post))
    proc = repl.run("runonce", "testrepl", check=False)
    assert proc.returncode == 1
    assert "pre_snapshot hook" in proc.stderr.decode() and "exit code 3" in proc.stderr.decode()
    assert " ALARM " in proc.stderr.decode()
    assert snapshots(lab.src, src) == []
    assert not exists(lab.dst, dst)
    assert hook_log(repl, post)[0].startswith("post_snapshot testrepl ")
    assert hook_log(repl, post)[0].endswith(" failed")


def _nothing_changed(lab: Lab, area: Area, before: tuple[str, str]) -> None:
    after = (lab.src.zfs("list", "-H", "-r", "-t", "all", "-o", "name", area.src),
             lab.dst.zfs("list", "-H", "-r", "-t", "all", "-o", "name", area.dst))
    assert after == before


def _listing(lab: Lab, area: Area) -> tuple[str, str]:
    return (lab.src.zfs("list", "-H", "-r", "-t", "all", "-o", "name", area.src),
            lab.dst.zfs("list", "-H", "-r", "-t", "all", "-o", "name", area.dst))


def test_missing_destination_parent_is_one_clear_error(lab: Lab, area: Area,
                                                       repl: ZfsreplCli) -> None:
    src = f"{area.src}/fs"
    make_fs(lab, src, seed=19)
    repl.write_service(filesystems=[(src, f"{area.dst}/no/such/parent/fs")], retries=2,
                       retry_delay=0)
    before = _listing(lab, area)
    proc = repl.run("runonce", "testrepl", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert f"destination parent {area.dst}/no/such/parent does not exist" in err
    assert "Traceback" not in err
    assert err.count("zfsrepl: error:") == 1
    _nothing_changed(lab, area, before)


def test_missing_source_filesystem_is_one_clear_error(lab: Lab, area: Area,
                                                      repl: ZfsreplCli) -> None:
    make_fs(lab, f"{area.src}/present", seed=23)
    repl.write_service(filesystems=[(f"{area.src}/present", f"{area.dst}/present"),
                                    (f"{area.src}/absent", f"{area.dst}/absent")],
                       retries=1)
    before = _listing(lab, area)
    proc = repl.run("runonce", "testrepl", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert f"source filesystem {area.src}/absent does not exist" in err
    assert "Traceback" not in err
    _nothing_changed(lab, area, before)


def test_unreachable_destination_is_one_clear_error(lab: Lab, area: Area,
                                                    repl: ZfsreplCli) -> None:
    src = f"{area.src}/fs"
    make_fs(lab, src, seed=29)
    # Nothing listens on port 2 of the destination host: the connection is refused.
    repl.write_service(filesystems=[(src, f"{area.dst}/fs")], retries=2, retry_delay=0,
                       destination={"port": 2})
    before = _listing(lab, area)
    proc = repl.run("runonce", "testrepl", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert f"cannot connect to dst@{lab.dst.address}" in err
    assert "Connection refused" in err
    assert " WARNING attempt 1 of 2 failed" in err and " ALARM " in err
    assert "Traceback" not in err
    _nothing_changed(lab, area, before)


def test_dry_run_prints_the_plan_and_changes_nothing(lab: Lab, area: Area,
                                                     repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    make_fs(lab, src, seed=31)
    repl.write_service(filesystems=[(src, dst)], keep=1, retries=1)
    repl.run("runonce", "testrepl")
    before = _listing(lab, area)
    out = repl.run("runonce", "--dry-run", "testrepl").stdout.decode()
    p = snapshot_prefix(lab)
    assert f"snapshot @{p}2 of: {src}" in out
    assert f"{src} -> {dst}: incremental -i @{p}1 -> @{p}2" in out
    assert f"destroy on source: {src}@{p}1" in out
    assert f"destroy on destination: {dst}@{p}1" in out
    assert "nothing was changed" in out
    _nothing_changed(lab, area, before)


def test_bad_definition_exits_2_and_names_file_and_key(lab: Lab, area: Area,
                                                        repl: ZfsreplCli) -> None:
    path = repl.write_service(filesystems=[(f"{area.src}/fs", f"{area.dst}/fs")], intervall=5)
    proc = repl.run("runonce", "testrepl", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert f"{path}: intervall: unknown key; did you mean 'interval'?" in err
    proc = repl.run("runonce", "nosuchservice", check=False)
    assert proc.returncode == 2 and "no service 'nosuchservice'" in proc.stderr.decode()


def test_python_m_zfsrepl_runs_the_same_cli() -> None:
    assert shutil.which("python3")
    proc = subprocess.run(["python3", "-m", "zfsrepl", "--help"], capture_output=True,
                          check=True, cwd=Path(__file__).resolve().parents[2] / "src")
    assert b"runonce" in proc.stdout
