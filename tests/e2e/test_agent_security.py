"""What the agent enforces itself, against a key holder who does not run zfsrepl.

One service replicates a filesystem through its own key, pinned to the agent by the
forced command setup writes. Then a hostile client with that key sends what an
honest cycle never does: a replication stream (`zfs send -R`, which carries
properties and may destroy filesystems), a forced receive into a filesystem with
another service's child below it, a listing that would show that child, and, after
`lockoutkey` and the key line put back, changing requests on the taken-over
filesystem. Each is refused with the agent's one line and nothing changes on the
destination.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from test_failover import Setup, edit_keys, install_service_key, replicate_twice, snapshots
from test_setup_support import listing, service_lines

from lab import Lab, ZfsreplCli, claim_area, destroy, exists, write_tree
from zfsrepl import agent

# zfs-fuse only: the streams are crafted with zfs-fuse's `send -R`, and the checks are
# the agent's, the same on every ZFS (OpenZFS runs the cycles through it elsewhere).
pytestmark = pytest.mark.backends("fuse")

REFUSED = agent.EXIT_REFUSED


@dataclass
class Service:
    s: Setup
    key: Path
    marker: str

    @property
    def lab(self) -> Lab:
        return self.s.lab

    def send(self, command: str, stream: bytes = b"") -> tuple[int, str, str]:
        """`command` through ssh with the service key, `stream` on its standard input;
        (exit code, stdout, stderr)."""
        lab = self.lab
        proc = lab.src.run(["ssh", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                            "-i", str(self.key), f"{lab.dst.user}@{lab.dst.address}",
                            command], input=stream, check=False)
        return (proc.returncode, proc.stdout.decode("utf-8", "replace"),
                proc.stderr.decode("utf-8", "replace"))

    def replication_stream(self, snapshot: str) -> bytes:
        """`zfs send -R -I` from the destination's newest snapshot to a new `snapshot` of the
        source filesystem: what a compromised source could send."""
        s = self.s
        base = snapshots(self.lab.dst, s.dst_fs)[-1]
        self.lab.src.zfs("snapshot", f"{s.src_fs}@{snapshot}")
        proc = self.lab.src.root(["zfs", "send", "-R", "-I", f"@{base}",
                                  f"{s.src_fs}@{snapshot}"])
        assert len(proc.stdout) > 312
        return proc.stdout


@pytest.fixture(scope="module")
def service(lab: Lab) -> Iterator[Service]:
    with claim_area(lab) as area:
        repl = ZfsreplCli(lab, area.name)
        repl.create()
        name = f"sec-{area.name}"
        key = repl.base / "service-key"
        s = Setup(lab, area, repl, name=name, destination={"identity": str(key)})
        lab.src.zfs("create", s.src_fs)
        write_tree(lab.src.mountpoint(s.src_fs), seed=1)
        marker = ""
        try:
            marker = install_service_key(s, key)
            replicate_twice(s)  # a normal cycle, through the agent, works
            yield Service(s, key, marker)
        finally:
            if marker:
                edit_keys(lab, "remove", marker)
            lab.stop_children()
            s.close()
            repl.destroy()


def test_a_replication_stream_is_refused(service: Service) -> None:
    s, lab = service.s, service.lab
    lab.src.zfs("set", "setuid=off", s.src_fs)  # a property the stream would carry
    lab.src.zfs("set", "zr:planted=yes", s.src_fs)
    stream = service.replication_stream("with-props")
    before = listing(lab.dst, s.area.dst)
    code, _, err = service.send(f"zfs receive -u -F {shlex.quote(s.dst_fs)}", stream)
    assert code == REFUSED, err
    assert err.startswith("zfsrepl agent: refused: ") and err.count("\n") == 1, err
    assert "replication stream" in err, err
    assert listing(lab.dst, s.area.dst) == before
    assert lab.dst.zfs("get", "-H", "-o", "value", "zr:planted", s.dst_fs).strip() == "-"


def test_garbage_is_no_stream(service: Service) -> None:
    s, lab = service.s, service.lab
    before = listing(lab.dst, s.area.dst)
    code, _, err = service.send(f"zfs receive -u -F {shlex.quote(s.dst_fs)}",
                                b"not a zfs stream at all, but long enough to be read")
    assert code == REFUSED and "magic number" in err, err
    assert listing(lab.dst, s.area.dst) == before


def test_a_forced_receive_cannot_reach_another_services_child(service: Service) -> None:
    s, lab = service.s, service.lab
    child = f"{s.dst_fs}/other-service"
    lab.dst.zfs("create", child)
    try:
        # what a compromised source would send: its filesystem has no such child, and
        # a forced receive of a replication stream destroys what the sender lacks
        stream = service.replication_stream("without-child")
        code, _, err = service.send(f"zfs receive -u -F {shlex.quote(s.dst_fs)}", stream)
        assert exists(lab.dst, child), (code, err)
        assert code == REFUSED, err
        assert f"{child!r}" in err and "not service" in err, err

        # a listing shows the service's own datasets only
        props = ",".join(agent.LISTING_PROPERTIES)
        code, out, err = service.send("zfs get -Hp -r -d 1 -o name,property,value "
                                      f"{props} {shlex.quote(s.dst_fs)}")
        assert code == 0, err
        names = {line.split("\t", 1)[0] for line in out.splitlines()}
        assert s.dst_fs in names and child not in names, out
        assert any(n.startswith(f"{s.dst_fs}@") for n in names), out
    finally:
        destroy(lab.dst, child, "-r")


def test_a_taken_over_filesystem_cannot_be_changed_with_the_key_put_back(
        service: Service) -> None:
    """Last in this module: it locks the key out and marks the filesystem."""
    s, lab = service.s, service.lab
    line = service_lines(lab, service.marker)
    assert len(line) == 1
    locked = s.back.run("lockoutkey", s.name)
    assert b"interlock set" in locked.stdout + locked.stderr
    edit_keys(lab, "add", service.marker, line[0])  # a rebuilt source's setup -r
    snaps = snapshots(lab.dst, s.dst_fs)
    oldest, newest = (f"{s.dst_fs}@{n}" for n in (snaps[0], snaps[-1]))
    tag = f"zfsrepl-{s.name}"
    before = listing(lab.dst, s.area.dst)
    for command in (f"zfs destroy {shlex.quote(oldest)}",
                    f"zfs rollback {shlex.quote(oldest)}",
                    f"zfs hold {tag} {shlex.quote(newest)}",
                    f"zfs release {tag} {shlex.quote(newest)}",
                    f"zfs receive -A {shlex.quote(s.dst_fs)}",
                    f"zfs receive -u -F {shlex.quote(s.dst_fs)}"):
        code, _, err = service.send(command)
        assert code == REFUSED, (command, err)
        assert "taken over" in err and f"zfsrepl failover --end {s.name}" in err, err
        assert err.count("\n") == 1, err
    assert listing(lab.dst, s.area.dst) == before
    assert snapshots(lab.dst, s.dst_fs) == snaps
    # reading stays allowed: doctor and status read through the agent
    code, out, err = service.send(f"zfs list -H -o name {shlex.quote(s.dst_fs)}")
    assert (code, out.strip()) == (0, s.dst_fs), err
