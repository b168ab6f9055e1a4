"""The listing cache between the lab's hosts (listing_cache.py).

On OpenZFS (`snapshots_changed`), a cycle of a service with `listing_cache = "on"`
(the cache whatever its size; "auto" waits for 1,000 snapshots, which one `zfs snapshot`
per snapshot would take minutes to make in the emulated VM) after the first lists neither
side in full, a snapshot made or destroyed by hand on
either side between cycles is seen, and a damaged cache file is ignored with one
warning. On zfs-fuse (no such property) the
cache stays off and every cycle lists both sides, as before. Full listings are
counted in the commands `runonce --debug` shows.
"""

from __future__ import annotations

import json
import re

import pytest

from lab import Area, Lab, LabHost, ZfsreplCli, own_snapshots, wait_for, write_tree

SERVICE = "testrepl"
LISTING = re.compile(r"running .*get -Hp -r -d 1 ")
pytestmark = pytest.mark.backends("openzfs")


def runonce(repl: ZfsreplCli, src: str, dst: str, *,
            check: bool = True) -> tuple[str, int, int]:
    """One cycle with --debug: its output, and the full listings of `src` and `dst`."""
    proc = repl.run("runonce", "--debug", SERVICE, timeout=600, check=check)
    out = proc.stdout.decode() + proc.stderr.decode()
    ends = [ln.rstrip().rstrip("'\"") for ln in out.splitlines() if LISTING.search(ln)]
    return (out, sum(1 for ln in ends if ln.endswith(" " + src)),
            sum(1 for ln in ends if ln.endswith(" " + dst)))


def listings_file(repl: ZfsreplCli) -> str:
    return str(repl.state_dir / "services" / SERVICE / "listings.json")


def changed_second_passed(host: LabHost, fs: str) -> None:
    """Wait until the host's clock is past the second of `fs`'s last snapshot change: a
    change within that second could not be told from it (the README says so)."""
    def passed() -> bool:
        value = host.root(["zfs", "get", "-H", "-p", "-o", "value", "snapshots_changed",
                           fs]).stdout.decode().strip()
        now = int(host.root(["date", "+%s"]).stdout.decode().strip())
        return now > int(value)
    wait_for(f"the second of {fs}'s last snapshot change to pass", passed, timeout=30)


def one_filesystem(lab: Lab, area: Area, repl: ZfsreplCli, **fields: object) -> tuple[str, str]:
    """A service of one filesystem with the listing cache on whatever its size."""
    src, dst = f"{area.src}/fs", f"{area.dst}/fs"
    lab.src.zfs("create", src)
    write_tree(lab.src.mountpoint(src), seed=1)
    repl.write_service(filesystems=[(src, dst)], retries=1,
                       **{"keep": 3, "listing_cache": "on", **fields})
    return src, dst


def test_a_second_cycle_lists_neither_side_in_full(lab: Lab, area: Area,
                                                    repl: ZfsreplCli) -> None:
    src, dst = one_filesystem(lab, area, repl)
    out, n_src, n_dst = runonce(repl, src, dst)
    assert (n_src, n_dst) == (1, 1), out  # nothing kept yet
    for n in range(2, 6):  # retention destroys from the fourth cycle on
        write_tree(lab.src.mountpoint(src), seed=n)
        out, n_src, n_dst = runonce(repl, src, dst)
        assert (n_src, n_dst) == (0, 0), out
        assert "0 of 1 filesystem(s) listed in full, 1 from the listing cache" in out, out
        assert own_snapshots(lab, lab.dst, dst) == own_snapshots(lab, lab.src, src)
    assert len(own_snapshots(lab, lab.dst, dst)) == 3


@pytest.mark.parametrize("side", ["source", "destination"])
def test_a_snapshot_destroyed_by_hand_between_cycles_is_seen(
        lab: Lab, area: Area, repl: ZfsreplCli, side: str) -> None:
    src, dst = one_filesystem(lab, area, repl, keep=5)
    for _ in range(3):
        runonce(repl, src, dst)
    host, fs = (lab.src, src) if side == "source" else (lab.dst, dst)
    oldest = own_snapshots(lab, host, fs)[0]  # not the base: not held
    changed_second_passed(host, fs)
    host.root(["zfs", "destroy", f"{fs}@{oldest}"])
    out, n_src, n_dst = runonce(repl, src, dst)
    assert (n_src, n_dst) == ((1, 0) if side == "source" else (0, 1)), out
    kept = json.loads(lab.src.root(["cat", listings_file(repl)]).stdout)
    assert oldest not in [row[0] for row in kept[side][fs]["snapshots"]]


def test_a_snapshot_made_by_hand_on_the_source_between_cycles_is_seen(
        lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    src, dst = one_filesystem(lab, area, repl)
    runonce(repl, src, dst)
    runonce(repl, src, dst)
    changed_second_passed(lab.src, src)
    lab.src.root(["zfs", "snapshot", f"{src}@by-hand"])
    out, n_src, n_dst = runonce(repl, src, dst)
    assert (n_src, n_dst) == (1, 0), out
    kept = json.loads(lab.src.root(["cat", listings_file(repl)]).stdout)
    assert "by-hand" in [row[0] for row in kept["source"][src]["snapshots"]]


def test_a_snapshot_made_by_hand_on_the_replica_is_a_conflict_as_without_the_cache(
        lab: Lab, area: Area, repl: ZfsreplCli) -> None:
    src, dst = one_filesystem(lab, area, repl)
    runonce(repl, src, dst)
    runonce(repl, src, dst)
    changed_second_passed(lab.dst, dst)
    lab.dst.root(["zfs", "snapshot", f"{dst}@by-hand"])
    out, _, n_dst = runonce(repl, src, dst, check=False)
    assert n_dst == 1, out
    assert "@by-hand" in out and "newer than the last one it shares" in out, out
    assert "by-hand" in [ln.split("@", 1)[1] for ln in lab.dst.root(
        ["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-d", "1", dst]
    ).stdout.decode().splitlines()]


def test_a_damaged_cache_file_is_ignored_with_one_warning(lab: Lab, area: Area,
                                                          repl: ZfsreplCli) -> None:
    src, dst = one_filesystem(lab, area, repl)
    runonce(repl, src, dst)
    repl.put(repl.state_dir / "services" / SERVICE / "listings.json", b"\x00{not json")
    out, n_src, n_dst = runonce(repl, src, dst)
    assert (n_src, n_dst) == (1, 1), out
    assert out.count("WARNING") == 1 and "ignoring the listing cache" in out, out
    assert "Traceback" not in out
    assert own_snapshots(lab, lab.dst, dst) == own_snapshots(lab, lab.src, src)
    out, n_src, n_dst = runonce(repl, src, dst)  # written again after that cycle
    assert (n_src, n_dst) == (0, 0), out


@pytest.mark.backends("fuse")
def test_without_snapshots_changed_the_cache_stays_off(lab: Lab, area: Area,
                                                       repl: ZfsreplCli) -> None:
    src, dst = one_filesystem(lab, area, repl)
    for _ in range(3):
        out, n_src, n_dst = runonce(repl, src, dst)
        assert (n_src, n_dst) == (1, 1), out
        assert "WARNING" not in out, out
    assert own_snapshots(lab, lab.dst, dst) == own_snapshots(lab, lab.src, src)
    assert len(own_snapshots(lab, lab.dst, dst)) == 3
    found = lab.src.root(["test", "-e", listings_file(repl)], check=False)
    assert found.returncode != 0  # nothing written
