"""The replication demo on the lab (started by scripts/demo, which sets the lab up)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lab import (
    Lab,
    LabHost,
    ZfsreplCli,
    destroy,
    exists,
    lab_session,
    snapshot_checksums,
    tree_checksums,
    write_tree,
)

SRC_PARENT, DST_PARENT = "zfsrepl_src/demo", "zfsrepl_dst/demo"
FILESYSTEMS = [(f"{SRC_PARENT}/testfs1", f"{DST_PARENT}/testfs1"),
               (f"{SRC_PARENT}/testfs2", f"{DST_PARENT}/testfs2")]


def say(text: str) -> None:
    print(f"\n### {text}", flush=True)


def show(host: LabHost, argv: list[str]) -> None:
    print(f"{host.user}@{host.name}$ {shlex.join(argv)}", flush=True)
    proc = host.run(argv, check=False)
    sys.stdout.write(proc.stdout.decode() + proc.stderr.decode())
    sys.stdout.flush()
    if proc.returncode != 0:
        raise SystemExit(f"demo: {shlex.join(argv)} failed with exit code {proc.returncode}")


def fresh(lab: Lab) -> None:
    for host, parent in ((lab.src, SRC_PARENT), (lab.dst, DST_PARENT)):
        if exists(host, parent):
            destroy(host, parent, "-R")
        host.zfs("create", "-o", "readonly=off", parent)


def check_contents(lab: Lab) -> bool:
    ok = True
    for src, dst in FILESYSTEMS:
        snap = lab.src.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg",
                           "-d", "1", src).split()[-1].split("@", 1)[1]
        expected = tree_checksums(lab.src.mountpoint(src))
        on_src = snapshot_checksums(lab.src, f"{src}@{snap}")
        on_dst = snapshot_checksums(lab.dst, f"{dst}@{snap}")
        same = expected == on_src == on_dst
        ok &= same
        print(f"{dst}@{snap}: {len(on_dst)} entries, "
              f"{'identical to' if same else 'DIFFERENT from'} {src}")
    return ok


def main() -> int:
    with lab_session(keep=True) as lab:
        fresh(lab)
        for i, (src, _) in enumerate(FILESYSTEMS):
            lab.src.zfs("create", src)
            write_tree(lab.src.mountpoint(src), seed=i)
        repl = ZfsreplCli(lab, "demo")
        repl.create()
        path = repl.write_service(filesystems=FILESYSTEMS, keep=3, retries=2,
                                  retry_delay=1)
        say(f"the service definition {path}")
        print(path.read_text())

        say("first cycle on the source host, as user src: a full send of each filesystem")
        show(lab.src, repl.argv("runonce", "testrepl"))

        for i, (src, _) in enumerate(FILESYSTEMS):
            write_tree(lab.src.mountpoint(src), seed=10 + i)
        say("files changed on the source; what the next cycle would do")
        show(lab.src, repl.argv("runonce", "--dry-run", "testrepl"))
        say("second cycle: incremental sends")
        show(lab.src, repl.argv("runonce", "testrepl"))

        say("snapshots on the source host")
        show(lab.src, ["zfs", "list", "-t", "snapshot", "-r", "-o", "name,used,refer",
                       SRC_PARENT])
        say("snapshots on the destination host")
        show(lab.dst, ["zfs", "list", "-t", "snapshot", "-r", "-o", "name,used,refer",
                       DST_PARENT])
        say("content check: every file of the newest snapshot, on both sides")
        ok = check_contents(lab)
        print("\nthe lab stays up: scripts/lab-teardown removes it")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
