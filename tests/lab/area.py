"""Per-test parent filesystems, so tests never see each other's datasets."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

from .base import Lab, LabCommandError
from .zfs import destroy, exists, release_holds

# How long an area's recursive destroy may take (DEFAULT_TIMEOUT suits one command of a
# test, not hundreds of filesystems)
AREA_DESTROY_TIMEOUT = 1800.0


@dataclasses.dataclass(frozen=True)
class Area:
    """A test's own parent filesystems: ``src`` on the source host, ``dst`` on the
    destination host (``readonly=off``), both mounted, and named alike (``t<N>``)."""

    name: str  # "t7"
    src: str  # "zfsrepl_src/t7"
    dst: str  # "zfsrepl_dst/t7"


@contextlib.contextmanager
def claim_area(lab: Lab) -> Iterator[Area]:
    """Create a fresh area; on exit destroy it and everything depending on it."""
    area = _create(lab)
    try:
        yield area
    finally:
        release_area(lab, area)


def _create(lab: Lab) -> Area:
    taken = {
        name.split("/", 1)[1]
        for host in lab.hosts
        for name in host.zfs("list", "-H", "-o", "name", "-d", "1", host.pool).split()
        if "/" in name
    }
    n = 0
    while True:
        n += 1
        name = f"t{n}"
        if name in taken:
            continue
        src, dst = f"{lab.src.pool}/{name}", f"{lab.dst.pool}/{name}"
        # `zfs create` is the claim: another test session may pick the same number
        try:
            lab.src.zfs("create", src)
        except LabCommandError as e:
            if "exists" in e.text:
                continue
            raise
        try:
            lab.dst.zfs("create", "-o", "readonly=off", dst)
        except LabCommandError as e:
            destroy(lab.src, src, "-r")
            if "exists" in e.text:
                continue
            raise
        return Area(name=name, src=src, dst=dst)


def release_area(lab: Lab, area: Area) -> None:
    """Destroy both parents recursively, with clones of their snapshots (``-R``) and
    whatever holds a tool left on them."""
    for host, fs in ((lab.src, area.src), (lab.dst, area.dst)):
        if exists(host, fs):
            release_holds(lab, host, fs, timeout=AREA_DESTROY_TIMEOUT)
            # a long benchmark's hundreds of filesystems take minutes in the emulated VM
            destroy(host, fs, "-R", timeout=AREA_DESTROY_TIMEOUT)
