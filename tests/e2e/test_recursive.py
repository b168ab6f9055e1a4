"""recursive = true between the lab's hosts: one replication stream for a subtree.

A parent with children replicates with one `zfs send -R` per cycle; a child created
later comes along in the next cycle's stream; retention keeps `keep` on both sides and
never destroys a snapshot the service did not make, nor the replica of a child destroyed
on the source. The agent takes a replication stream only for a recursive service, and
refuses one that would set a property reaching root unless zfs runs as root with
`receive -x` (neither lab: zfs-fuse has no -x; the OpenZFS lab uses `zfs allow`).
"""

from __future__ import annotations

import re
import subprocess

import pytest

from lab import (
    Area,
    Lab,
    ZfsreplCli,
    own_snapshots,
    retry_busy,
    snapshot_checksums,
    write_tree,
)

SERVICE = "testrepl"
CHILDREN = ("a", "b", "c", "a/deep")
pytestmark = pytest.mark.backends("fuse", "openzfs")


def make_tree(lab: Lab, parent: str, children: tuple[str, ...] = CHILDREN) -> None:
    lab.src.zfs("create", parent)
    for i, child in enumerate(children, start=1):
        lab.src.zfs("create", f"{parent}/{child}")
        write_tree(lab.src.mountpoint(f"{parent}/{child}"), seed=i)


def runonce(repl: ZfsreplCli, check: bool = True) -> tuple[int, str]:
    proc = repl.run("runonce", "--debug", SERVICE, timeout=600, check=check)
    return proc.returncode, proc.stdout.decode() + proc.stderr.decode()


def sends(out: str) -> list[str]:
    """The `zfs send` commands a cycle ran (its --debug lines)."""
    return re.findall(r"DEBUG \S+: running (.*\bzfs send .*)", out)


def same_content(lab: Lab, src: str, dst: str, snap: str) -> None:
    assert snapshot_checksums(lab.dst, f"{dst}@{snap}") == \
        snapshot_checksums(lab.src, f"{src}@{snap}")


def test_a_subtree_replicates_as_one_stream_with_its_own_retention(
        lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/tree", f"{area.dst}/tree"
    make_tree(lab, src)
    repl.write_service(filesystems=[(src, dst)], recursive=True, keep=2, retries=1)

    _, out = runonce(repl)
    assert len(sends(out)) == 1 and " send -R " in sends(out)[0], out
    first = own_snapshots(lab, lab.src, src)
    assert len(first) == 1
    for child in CHILDREN:
        assert own_snapshots(lab, lab.dst, f"{dst}/{child}") == first
        same_content(lab, f"{src}/{child}", f"{dst}/{child}", first[0])

    # A child created since, a change in another, a snapshot made by hand on the source.
    lab.src.zfs("create", f"{src}/d")
    write_tree(lab.src.mountpoint(f"{src}/d"), seed=9)
    write_tree(lab.src.mountpoint(f"{src}/a"), seed=10)
    lab.src.zfs("snapshot", f"{src}/a@by-hand")
    _, out = runonce(repl)
    assert len(sends(out)) == 1 and " -i " in sends(out)[0], out
    second = own_snapshots(lab, lab.src, src)[-1]
    assert own_snapshots(lab, lab.dst, f"{dst}/d") == [second]
    same_content(lab, f"{src}/d", f"{dst}/d", second)
    same_content(lab, f"{src}/a", f"{dst}/a", second)
    # the snapshot made by hand stays where it was made, and only there
    assert "by-hand" in lab.src.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", src)
    assert "by-hand" not in lab.dst.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", dst)

    # A child destroyed on the source: its replica stays, with its snapshots.
    kept_b = own_snapshots(lab, lab.dst, f"{dst}/b")
    # zfs-fuse calls a just-replicated mounted filesystem busy for a moment
    retry_busy(lambda: lab.src.zfs("destroy", "-r", f"{src}/b"))
    for _ in range(2):
        _, out = runonce(repl)
        assert len(sends(out)) == 1, out
    newest = own_snapshots(lab, lab.src, src)
    assert len(newest) == 2  # keep = 2, on every filesystem of both sides
    for child in ("", "/a", "/a/deep", "/c", "/d"):
        assert own_snapshots(lab, lab.src, src + child) == newest
        assert own_snapshots(lab, lab.dst, dst + child) == newest
    assert own_snapshots(lab, lab.dst, f"{dst}/b") == kept_b
    assert "by-hand" in lab.src.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", src)
    same_content(lab, f"{src}/a/deep", f"{dst}/a/deep", newest[-1])

    # A snapshot made by hand on a replica: the cycle refuses (a forced receive would
    # destroy it), and it stays.
    lab.dst.zfs("snapshot", f"{dst}/c@by-hand")
    code, out = runonce(repl, check=False)
    assert code != 0 and f"{dst}/c has snapshots newer" in out, out
    assert not sends(out)
    assert f"{dst}/c@by-hand" in lab.dst.zfs("list", "-H", "-t", "snapshot", "-o", "name",
                                             "-r", dst)
    assert own_snapshots(lab, lab.dst, dst) == newest


def agent(lab: Lab, command: str, fs: str, stream: bytes,
          *flags: str) -> subprocess.CompletedProcess[bytes]:
    """The agent as sshd would start it for a service whose one filesystem is `fs`."""
    argv = ["env", f"SSH_ORIGINAL_COMMAND={command}", "zfsrepl", "agent",
            "--service", SERVICE, "--filesystem", fs, "--source-user", lab.src.user,
            "--destination-user", lab.dst.user, "--destination-host", lab.dst.address,
            "--zfs-command", lab.zfs_command, *flags]
    return lab.dst.run(argv, input=stream, check=False)


def test_the_agent_takes_a_replication_stream_only_for_a_recursive_service(
        lab: Lab, area: Area) -> None:
    src, dst = f"{area.src}/tree", f"{area.dst}/tree"
    make_tree(lab, src, ("a", "b"))
    lab.src.zfs("snapshot", "-r", f"{src}@s1")
    full = lab.src.root(["zfs", "send", "-R", f"{src}@s1"]).stdout

    refused = agent(lab, f"zfs receive -u {dst}", dst, full)
    assert refused.returncode == 126, refused.stderr
    assert b"replication stream" in refused.stderr
    refused = agent(lab, f"zfs receive -u -F {dst}", dst, full, "--recursive")
    assert refused.returncode == 126 and b"no -F" in refused.stderr, refused.stderr
    assert not own_snapshots(lab, lab.dst, dst) and "tree" not in lab.dst.zfs(
        "list", "-H", "-o", "name", "-r", area.dst)

    taken = agent(lab, f"zfs receive -u {dst}", dst, full, "--recursive")
    assert taken.returncode == 0, taken.stderr
    assert lab.dst.zfs("list", "-H", "-o", "name", "-r", "-t", "snapshot", dst).split() == [
        f"{dst}@s1", f"{dst}/a@s1", f"{dst}/b@s1"]

    # setuid=on below the parent reaches root; neither lab may leave it out: zfs-fuse has
    # no -x, and the OpenZFS lab's zfs runs as the user (`zfs allow`), not as root
    lab.src.zfs("set", "setuid=on", f"{src}/b")
    lab.src.zfs("snapshot", "-r", f"{src}@s2")
    incremental = lab.src.root(["zfs", "send", "-R", "-i", "@s1", f"{src}@s2"]).stdout
    refused = agent(lab, f"zfs receive -u {dst}", dst, incremental, "--recursive")
    assert refused.returncode == 126, refused.stderr
    assert f"{src}/b: setuid=".encode() in refused.stderr
    assert f"{dst}@s2" not in lab.dst.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-d",
                                          "1", dst)

    lab.src.zfs("inherit", "setuid", f"{src}/b")
    lab.src.zfs("snapshot", "-r", f"{src}@s3")
    incremental = lab.src.root(["zfs", "send", "-R", "-i", "@s1", f"{src}@s3"]).stdout
    taken = agent(lab, f"zfs receive -u {dst}", dst, incremental, "--recursive")
    assert taken.returncode == 0, taken.stderr
    # an incremental aimed at a missing parent is refused (zfs-fuse would find the base
    # in another dataset of the pool)
    missing = f"{area.dst}/elsewhere"
    refused = agent(lab, f"zfs receive -u {missing}", missing, incremental, "--recursive")
    assert refused.returncode == 126 and b"does not exist" in refused.stderr, refused.stderr
