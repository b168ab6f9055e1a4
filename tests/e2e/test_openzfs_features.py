"""What zfsrepl uses of current OpenZFS, between the lab's hosts as the delegated users
`src` and `dst` (no sudo): resumed transfers, bookmarks as incremental bases, raw sends
of encrypted filesystems, holds of the incremental base.

These need a lab whose ZFS has the features (``"openzfs" in lab.features``); on the
zfs-fuse lab they are skipped, saying so. Replicas are checked by content.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from lab import (
    Area,
    Lab,
    LabCommandError,
    LabHost,
    ZfsreplCli,
    snapshot_checksums,
    tree_checksums,
    wait_for,
    write_tree,
)

TAG = "zfsrepl-testrepl"
# On the fuse lab too, where each test says why it is skipped.
pytestmark = pytest.mark.backends("fuse", "openzfs")


@pytest.fixture(autouse=True)
def _needs_openzfs(lab: Lab) -> None:
    if "openzfs" not in getattr(lab, "features", frozenset()):
        pytest.skip(f"the {lab.backend!r} lab's ZFS has no resume tokens, bookmarks, raw "
                    "sends or holds listing (run with ZFSREPL_LAB_BACKEND=openzfs)")


def snapshots(host: LabHost, fs: str) -> list[str]:
    out = host.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-d", "1", fs)
    return [line.split("@", 1)[1] for line in out.splitlines() if "@" in line]


def bookmarks(host: LabHost, fs: str) -> list[str]:
    out = host.zfs("list", "-H", "-t", "bookmark", "-o", "name", "-d", "1", fs)
    return [line.split("#", 1)[1] for line in out.splitlines() if "#" in line]


def prop(host: LabHost, ds: str, name: str) -> str:
    return host.zfs("get", "-H", "-o", "value", name, ds).strip()


def holds(host: LabHost, fs: str) -> dict[str, set[str]]:
    """snapshot name -> hold tags, for every snapshot of `fs`."""
    names = [f"{fs}@{s}" for s in snapshots(host, fs)]
    found: dict[str, set[str]] = {s.split("@", 1)[1]: set() for s in names}
    if names:
        for line in host.zfs("holds", "-H", *names).splitlines():
            snap, tag = line.split("\t")[:2]
            found[snap.split("@", 1)[1]].add(tag)
    return found


def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


def received_bytes(lab: Lab, fs: str) -> int:
    """What the `zfs receive` into `fs` has read from its stream so far (0 if none runs)."""
    # anchored: the sender's ssh client names the filesystem too, and reads far ahead
    script = (f"for p in $(pgrep -f '^[^ ]*zfs receive .*{fs}$'); do "
              "sed -n 's/^rchar: //p' /proc/$p/io; done")
    out = lab.dst.root(["sh", "-c", script], check=False).stdout.decode().split()
    return max((int(n) for n in out if n.isdigit()), default=0)


def make_fs(lab: Lab, fs: str, seed: int, *opts: str) -> dict[str, str]:
    lab.src.zfs("create", *opts, fs)
    mnt = lab.src.mountpoint(fs)
    write_tree(mnt, seed=seed)
    return tree_checksums(mnt)


def test_a_cut_transfer_resumes_where_it_stopped(lab: Lab, area: Area,
                                                 repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    make_fs(lab, src, seed=1)
    mnt = lab.src.mountpoint(src)
    (mnt / "big.bin").write_bytes(os.urandom(3 << 20))  # incompressible
    expected = tree_checksums(mnt)
    # slow enough to be cut halfway: ~3 MiB at 512 KiB/s
    repl.write_service(filesystems=[(src, dst)], retries=1, bandwidth_limit="512K")

    proc = repl.popen("runonce", "testrepl")
    assert proc.stderr is not None
    for raw in proc.stderr:
        if b"starting full send" in raw:
            break
    # cut it once the receiver has read half of the ~3 MiB: by bytes, not by time
    wait_for("the receive to read 1.5 MiB", lambda: received_bytes(lab, dst) >= 3 << 19)
    proc.terminate()
    proc.communicate(timeout=60)
    token = prop(lab.dst, dst, "receive_resume_token")
    assert token not in ("", "-"), "the cut receive left no resume token"
    first = snapshots(lab.src, src)[0]
    size_line = lab.src.zfs("send", "-nvP", f"{src}@{first}").strip().splitlines()[-1]
    whole = int(size_line.split()[-1])

    repl.write_service(filesystems=[(src, dst)], retries=1)  # no limit now
    out = text(repl.run("runonce", "testrepl", timeout=600))
    m = re.search(r"finished resumed send of a cut stream .* (\d+) bytes", out)
    assert m, out
    assert 0 < int(m.group(1)) < whole, (m.group(1), whole)
    assert prop(lab.dst, dst, "receive_resume_token") in ("", "-")
    for snap in snapshots(lab.src, src):
        assert snapshot_checksums(lab.dst, f"{dst}@{snap}") == expected


def test_the_chain_survives_its_snapshot_through_the_bookmark(lab: Lab, area: Area,
                                                              repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    make_fs(lab, src, seed=2)
    repl.write_service(filesystems=[(src, dst)], retries=1, keep=1)
    repl.run("runonce", "testrepl")
    # the replica is read-only and unmounted, its mountpoint not the source's
    assert prop(lab.dst, dst, "readonly") == "on"
    assert prop(lab.dst, dst, "mounted") == "no"
    assert prop(lab.dst, dst, "mountpoint") != prop(lab.src, src, "mountpoint")
    repl.run("runonce", "testrepl")
    last = snapshots(lab.src, src)[-1]
    assert bookmarks(lab.src, src) == [last]  # only the newest replicated one

    # someone destroys the last replicated snapshot on the source (our hold first)
    lab.src.zfs("release", TAG, f"{src}@{last}")
    lab.src.zfs("destroy", f"{src}@{last}")
    assert snapshots(lab.src, src) == []
    write_tree(lab.src.mountpoint(src), seed=3)
    expected = tree_checksums(lab.src.mountpoint(src))
    # the doctor sees the bookmark as the common point, as the cycle does: no advice to
    # move the replica aside and send everything again
    doctor = repl.run("doctor", "testrepl", check=False)
    out = text(doctor)
    assert doctor.returncode == 0, out
    assert f"newest common snapshot: #{last} (bookmark)" in out, out
    assert "NO COMMON SNAPSHOT" not in out and "zfs rename" not in out, out

    out = text(repl.run("runonce", "testrepl"))
    assert f"incremental -i #{last}" in out, out
    newest = snapshots(lab.src, src)[-1]
    assert snapshot_checksums(lab.dst, f"{dst}@{newest}") == expected
    assert bookmarks(lab.src, src) == [newest]


def test_an_encrypted_filesystem_replicates_raw(lab: Lab, area: Area,
                                                repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/secret", f"{area.dst}/secret"
    keyfile = f"/tmp/zfsrepl-test-key-{area.name}"
    for host in lab.hosts:
        host.root(["sh", "-c", f"umask 077; printf '%s' correct-horse-battery > {keyfile}"])
    try:
        expected = make_fs(lab, src, 4, "-o", "encryption=aes-256-gcm", "-o",
                           "keyformat=passphrase", "-o", f"keylocation=file://{keyfile}")
        repl.write_service(filesystems=[(src, dst)], retries=1)
        repl.run("runonce", "testrepl")
        write_tree(lab.src.mountpoint(src), seed=5)
        expected = tree_checksums(lab.src.mountpoint(src))
        out = text(repl.run("runonce", "testrepl"))
        assert "(raw)" in out, out

        assert prop(lab.dst, dst, "encryption") == "aes-256-gcm"
        assert prop(lab.dst, dst, "keystatus") == "unavailable"  # it never had the key
        lab.dst.zfs("load-key", "-L", f"file://{keyfile}", dst)
        snap = snapshots(lab.src, src)[-1]
        assert snapshot_checksums(lab.dst, f"{dst}@{snap}") == expected
    finally:
        for host in lab.hosts:
            host.root(["rm", "-f", keyfile])


def test_holds_guard_the_base_and_retention_still_prunes(lab: Lab, area: Area,
                                                         repl: ZfsreplCli) -> None:
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    make_fs(lab, src, seed=6)
    repl.write_service(filesystems=[(src, dst)], retries=1, keep=1)
    repl.run("runonce", "testrepl")
    first = snapshots(lab.src, src)[-1]
    lab.src.zfs("hold", "admin", f"{src}@{first}")  # someone else's hold on the source

    for cycle in range(2):
        write_tree(lab.src.mountpoint(src), seed=7 + cycle)
        expected = tree_checksums(lab.src.mountpoint(src))
        repl.run("runonce", "testrepl")
        base = snapshots(lab.src, src)[-1]
        # keep = 1: only the base on the destination; on the source also the admin's
        assert snapshots(lab.dst, dst) == [base]
        assert snapshots(lab.src, src) == [first, base]
        assert holds(lab.src, src) == {first: {"admin"}, base: {TAG}}
        assert holds(lab.dst, dst) == {base: {TAG}}
        assert snapshot_checksums(lab.dst, f"{dst}@{base}") == expected

        # the base cannot be destroyed by hand, not even by root
        for host, fs in ((lab.src, src), (lab.dst, dst)):
            with pytest.raises(LabCommandError) as exc:
                host.zfs("destroy", f"{fs}@{base}")
            assert "busy" in exc.value.text or "hold" in exc.value.text
    lab.src.zfs("release", "admin", f"{src}@{first}")


def test_the_sources_holds_bookmarks_and_prunes_are_one_transaction_group_each(
        lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    """Each `zfs destroy`, `zfs bookmark` and snapshot held or released waits for a
    transaction group: a cycle moves the source's holds, makes its bookmarks, destroys
    its old bookmarks and prunes its snapshots, for every filesystem, in one
    libzfs_core request each. Where one snapshot cannot go
    (a clone of it), the others still do, one at a time."""
    pairs = [(f"{area.src}/fs{i}", f"{area.dst}/fs{i}") for i in range(3)]
    for i, (src, _) in enumerate(pairs):
        make_fs(lab, src, seed=20 + i)
    repl.write_service(filesystems=pairs, retries=1, keep=1)
    repl.run("runonce", "testrepl")
    cloned_fs = pairs[1][0]
    first = snapshots(lab.src, cloned_fs)[-1]
    clone = f"{area.src}/clone"
    lab.src.zfs("clone", f"{cloned_fs}@{first}", clone)  # someone's clone of it
    pool = area.src.split("/", 1)[0]

    def cycle(seed: int) -> tuple[str, str]:
        for i, (src, _) in enumerate(pairs):
            write_tree(lab.src.mountpoint(src), seed=seed + i)
        expected = [tree_checksums(lab.src.mountpoint(src)) for src, _ in pairs]
        out = text(repl.run("runonce", "testrepl"))
        base = snapshots(lab.src, cloned_fs)[-1]
        for (src, dst), want in zip(pairs, expected):
            assert bookmarks(lab.src, src) == [base], out
            assert snapshots(lab.dst, dst) == [base], out
            assert snapshot_checksums(lab.dst, f"{dst}@{base}") == want
        return out, base

    out, base = cycle(seed=30)
    # the bases' holds moved: the new ones held, the old ones released, together
    assert f": 3 snapshots held in one transaction group (pool {pool})" in out
    assert f": 3 holds released in one transaction group (pool {pool})" in out
    for src, _ in pairs:
        held = lab.src.zfs("holds", "-H", *(f"{src}@{s}" for s in snapshots(lab.src, src)))
        assert [ln.split("\t")[:2] for ln in held.splitlines()] == [
            [f"{src}@{base}", "zfsrepl-testrepl"]], out
    assert f": 3 bookmarks made in one transaction group (pool {pool})" in out
    assert f": 3 bookmarks destroyed in one transaction group (pool {pool})" in out
    # the clone's origin refused the pool's request: the others went one at a time
    assert "snapshots destroyed in one transaction group" not in out
    assert f"kept {cloned_fs}@{first} on " in out and "a clone of it exists" in out
    assert snapshots(lab.src, cloned_fs) == [first, base]
    assert all(snapshots(lab.src, src) == [base] for src, _ in pairs[::2])

    lab.src.zfs("destroy", clone)
    out, base = cycle(seed=40)
    # the clone's origin, and each filesystem's old base: one request
    assert f": 4 snapshots destroyed in one transaction group (pool {pool})" in out
    assert all(snapshots(lab.src, src) == [base] for src, _ in pairs)
