"""recursive = true: the definition, the cycle's decisions and commands, and what the
agent, the zfs wrapper and the stream check accept for it (and only for it)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from zfsrepl import agent, config, plan, recursive, streamcheck, zfswrap
from zfsrepl.config import Endpoint, FilesystemPair, Service, dump_service, parse_service
from zfsrepl.cycle import FilesystemPlan, cycle_class
from zfsrepl.errors import ConfigError, ReplicationError
from zfsrepl.host import Result
from zfsrepl.naming import SnapshotNaming
from zfsrepl.recursive import RecursiveCycle, TreeSend, decide_tree, group_destroys
from zfsrepl.replication import Replication
from zfsrepl.setup import apply
from zfsrepl.snapshots import Snapshot
from zfsrepl.transfer import TransferResult

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# `zfs send -R` of zfsrepl_src/t1/p (children a, a/x, b; b has setuid=off and a user
# property, a compression=on) as zfs-fuse wrote them: the first record and its payload
FULL = (FIXTURES / "zfs-fuse-send-R-full.head").read_bytes()
# `send -R -i @s1 p@s2` after a child c was created and a@hand snapshotted
INCREMENTAL = (FIXTURES / "zfs-fuse-send-R-inc.head").read_bytes()

NAMING = SnapshotNaming("src", "dst", "198.51.100.12")
SRC, DST = "tank/data", "backup/data"
ZFS = ("sudo", "-n", "/usr/sbin/zfs")
POLICY = agent.Policy("svc", frozenset({DST}), NAMING, ZFS, recursive=True)
FLAT = agent.Policy("svc", frozenset({DST}), NAMING, ZFS)
SOURCE_RULE = zfswrap.Rule("svc", "source", frozenset({SRC}), NAMING, recursive=True)
DESTINATION_RULE = zfswrap.Rule("svc", "destination", frozenset({DST}), NAMING,
                                recursive=True)

DEFINITION = '''\
name = "svc"
recursive = true
[source]
host = "a"
user = "src"
[destination]
host = "198.51.100.12"
user = "dst"
[[filesystem]]
source = "tank/data"
destination = "backup/data"
'''


# ---------------------------------------------------------------------------- definition


def test_the_key_round_trips_and_defaults_to_false() -> None:
    svc = parse_service(tomllib.loads(DEFINITION))
    assert svc.recursive
    assert parse_service(tomllib.loads(dump_service(svc))) == svc
    flat = parse_service(tomllib.loads(DEFINITION.replace("recursive = true\n", "")))
    assert not flat.recursive and "recursive" not in dump_service(flat)


@pytest.mark.parametrize("change,says", [
    ('[[filesystem]]\nsource = "tank/more"\ndestination = "backup/more"\n',
     "filesystem: 2 [[filesystem]] tables with recursive = true; expected exactly one"),
    ('mountpoint = "/srv"\n', "filesystem[1].mountpoint: is not used with recursive"),
])
def test_one_parent_and_no_per_filesystem_setting(change: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re_escape(says)):
        parse_service(tomllib.loads(DEFINITION + change))


@pytest.mark.parametrize("key,says", [
    ("parallel = 4", "parallel: 4 does not apply with recursive = true: one stream"),
    ("skip_unchanged = true", "skip_unchanged: True does not apply with recursive = true"),
])
def test_settings_that_cannot_apply_to_one_stream_are_refused(key: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re_escape(says)):
        parse_service(tomllib.loads(key + "\n" + DEFINITION))
    parse_service(tomllib.loads(key + "\n" + DEFINITION.replace("true", "false", 1)))


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_setup_writes_it_into_the_forced_command_and_the_wrapper_rule() -> None:
    svc = parse_service(tomllib.loads(DEFINITION))
    argv = apply.forced_argv(svc, "/usr/bin/zfsrepl", "/var/log/zfsrepl/agent.svc.log")
    args = agent.build_parser().parse_args(argv[2:])
    assert agent.policy_from_args(args) == agent.Policy(
        "svc", frozenset({DST}), svc.naming, ("zfs",), recursive=True)
    flat = apply.forced_argv(parse_service(tomllib.loads(DEFINITION.replace(
        "recursive = true\n", ""))), "/usr/bin/zfsrepl", "/l")
    assert "--recursive" not in flat
    rule = zfswrap.parse_rule(DESTINATION_RULE.to_json(), "r.json")
    assert rule == DESTINATION_RULE
    assert "recursive" not in zfswrap.Rule("s", "source", frozenset({SRC}), NAMING).to_json()
    two = zfswrap.Rule("s", "source", frozenset({SRC, "tank/x"}), NAMING, recursive=True)
    assert "recursive must be" in str(zfswrap.parse_rule(two.to_json(), "r.json"))
    for bad in ('"yes"', "1"):
        text = DESTINATION_RULE.to_json().replace('"recursive": true', f'"recursive": {bad}')
        assert "recursive must be" in str(zfswrap.parse_rule(text, "r.json"))
    text = DESTINATION_RULE.to_json().replace('"filesystems": [', '"filesystems": 5, "x": [')
    assert "must hold exactly" in str(zfswrap.parse_rule(text, "r.json"))
    text = DESTINATION_RULE.to_json().replace(f'[\n  "{DST}"\n ]', "5")
    assert "list of filesystem names" in str(zfswrap.parse_rule(text, "r.json"))


# ---------------------------------------------------------------------------- stream check


def test_a_real_replication_stream_is_read() -> None:
    full = streamcheck.check_replication(FULL)
    assert full == streamcheck.Replication(
        incremental=False,
        filesystems=("zfsrepl_src/t1/p", "zfsrepl_src/t1/p/a", "zfsrepl_src/t1/p/a/x",
                     "zfsrepl_src/t1/p/b"),
        harmful=())  # setuid=off is harmless
    inc = streamcheck.check_replication(INCREMENTAL)
    assert isinstance(inc, streamcheck.Replication) and inc.incremental
    assert "zfsrepl_src/t1/p/c" in inc.filesystems


def _setuid_on(stream: bytes) -> bytes:
    """FULL with p/b's setuid=off turned on (the uint64 after the name and its type)."""
    at = stream.index(b"setuid\0\0") + 8 + 8 + 7
    assert stream[at] == 0
    return stream[:at] + b"\1" + stream[at + 1:]


def test_a_property_that_reaches_root_is_named() -> None:
    found = streamcheck.check_replication(_setuid_on(FULL))
    assert isinstance(found, streamcheck.Replication)
    assert found.harmful == ("zfsrepl_src/t1/p/b: setuid=1",)


def test_the_harmful_properties_are_those_the_agent_excludes() -> None:
    assert set(streamcheck.ROOT_PROPERTIES) == set(agent.EXCLUDED_PROPERTIES)


@pytest.mark.parametrize("stream,says", [
    (FULL[:400], "ended inside its list"),
    (FULL[:312] + b"\0" * (len(FULL) - 312), "not an XDR-encoded nvlist"),
    (FULL[:330] + b"\xff" * (len(FULL) - 330), "cannot be read"),
])
def test_a_damaged_list_is_refused(stream: bytes, says: str) -> None:
    found = streamcheck.check_replication(stream)
    assert isinstance(found, streamcheck.BadStream) and says in found.reason


def test_a_replication_stream_only_where_asked_for() -> None:
    assert isinstance(streamcheck.check_begin(FULL[:24]), streamcheck.BadStream)
    assert isinstance(streamcheck.check_begin(FULL[:24], replication=True), streamcheck.Begin)
    single = bytes(FULL[:8]) + FULL[8:16] + (1).to_bytes(8, "little")  # a SUBSTREAM
    found = streamcheck.check_begin(single, replication=True)
    assert isinstance(found, streamcheck.BadStream) and "only a replication" in found.reason


# ---------------------------------------------------------------------------- the agent


@pytest.mark.parametrize("command,expected", [
    (f"zfs receive -u {DST}", agent.RunZfs(("receive", "-u", DST), changes=(DST,),
                                           stream=True, replication=DST)),
    (f"zfs destroy -r {DST}@{NAMING.format(3)}",
     agent.RunZfs(("destroy", "-r", f"{DST}@{NAMING.format(3)}"), changes=(DST,))),
    (f"zfs destroy {DST}/a/b@{NAMING.format(3)}",
     agent.RunZfs(("destroy", f"{DST}/a/b@{NAMING.format(3)}"), changes=(f"{DST}/a/b",))),
    (f"zfs get -Hp -r -o name,property,value guid,createtxg {DST}",
     agent.RunZfs(("get", "-Hp", "-r", "-o", "name,property,value", "guid,createtxg", DST),
                  listing=True)),
])
def test_the_agent_accepts_a_recursive_services_forms(command: str,
                                                      expected: agent.RunZfs) -> None:
    assert agent.decide(command, POLICY) == expected


@pytest.mark.parametrize("command,says", [
    (f"zfs receive -u -F {DST}", "no -F"),
    (f"zfs receive -u {DST}/a", "receive -u backup/data (one zfs send -R"),
    (f"zfs receive -u -s {DST}", "no -F"),
    (f"zfs destroy -r {DST}@by-hand", "was not made by service svc"),
    (f"zfs destroy -r backup/other@{NAMING.format(3)}", "not a destination filesystem"),
    (f"zfs destroy -r {DST}", "takes a snapshot"),
    ("zfs get -Hp -r -o name,property,value guid backup", "get -Hp -r -o"),
    (f"zfs get -Hp -r -o name,property,value mountpoint {DST}", "may read only"),
])
def test_the_agent_refuses_other_forms_for_a_recursive_service(command: str, says: str) -> None:
    found = agent.decide(command, POLICY)
    assert isinstance(found, agent.Refused) and says in found.reason, found


@pytest.mark.parametrize("command", [
    f"zfs destroy -r {DST}@{NAMING.format(3)}",
    f"zfs get -Hp -r -o name,property,value guid {DST}",
    f"zfs destroy {DST}/a@{NAMING.format(3)}",
])
def test_none_of_it_for_a_service_that_is_not_recursive(command: str) -> None:
    assert isinstance(agent.decide(command, FLAT), agent.Refused)
    found = agent.decide(f"zfs receive -u {DST}", FLAT)
    assert isinstance(found, agent.RunZfs) and found.replication is None


def test_a_listing_passes_on_the_whole_subtree_only_for_a_recursive_service() -> None:
    out = (f"{DST}\tguid\t1\n{DST}/a\tguid\t2\n{DST}/a/b@s\tguid\t3\n"
           "backup/other\tguid\t4\nbackup/data2\tguid\t5\n").encode()
    assert agent.own_listing(out, POLICY.filesystems, True).decode().split("\n")[:3] == [
        f"{DST}\tguid\t1", f"{DST}/a\tguid\t2", f"{DST}/a/b@s\tguid\t3"]
    assert agent.own_listing(out, POLICY.filesystems, True).count(b"\n") == 3
    assert agent.own_listing(out, FLAT.filesystems).count(b"\n") == 1


def _read(stream: bytes, run: agent.RunZfs, existing: frozenset[str],
          excluded: bool = False) -> bytes | agent.Refused:
    r, w = os.pipe()
    os.write(w, stream + b"rest of the stream")
    os.close(w)
    try:
        header = agent._read_up_to(r, streamcheck.HEADER_BYTES)
        return agent.read_stream(header, r, run, existing, excluded)
    finally:
        os.close(r)


RECEIVE = agent.RunZfs(("receive", "-u", DST), changes=(DST,), stream=True, replication=DST)


def test_the_agent_reads_the_list_before_zfs_sees_a_byte() -> None:
    assert _read(FULL, RECEIVE, frozenset()) == FULL  # all of it handed to zfs
    assert _read(INCREMENTAL, RECEIVE, frozenset({DST})) == INCREMENTAL
    flat = _read(FULL, agent.RunZfs(("receive", "-u", DST), stream=True), frozenset())
    assert isinstance(flat, agent.Refused) and "replication stream" in flat.reason


def test_an_incremental_only_into_an_existing_parent() -> None:
    found = _read(INCREMENTAL, RECEIVE, frozenset())
    assert isinstance(found, agent.Refused) and "does not exist" in found.reason


def test_a_harmful_property_only_where_zfs_excludes_it() -> None:
    stream = _setuid_on(FULL)
    found = _read(stream, RECEIVE, frozenset())
    assert isinstance(found, agent.Refused)
    assert "zfsrepl_src/t1/p/b: setuid=1" in found.reason and "zfs inherit" in found.reason
    assert _read(stream, RECEIVE, frozenset(), excluded=True) == stream


# ---------------------------------------------------------------------------- the wrapper


@pytest.mark.parametrize("args", [
    ["snapshot", "-r", f"{SRC}@{NAMING.format(4)}"],
    ["send", "-R", f"{SRC}@{NAMING.format(4)}"],
    ["send", "-R", "-i", f"{SRC}@{NAMING.format(3)}", f"{SRC}@{NAMING.format(4)}"],
    ["send", "-R", "-I", f"{SRC}@{NAMING.format(3)}", f"{SRC}@{NAMING.format(4)}"],
    ["destroy", "-r", f"{SRC}@{NAMING.format(3)}"],
    ["destroy", f"{SRC}/child/deep@{NAMING.format(3)}"],
    ["get", "-Hp", "-r", "-o", "name,property,value", "guid,createtxg", SRC],
])
def test_the_wrapper_lets_a_recursive_source_run_its_forms(args: list[str]) -> None:
    assert isinstance(zfswrap.decide(args, [SOURCE_RULE]), zfswrap.Run), args


@pytest.mark.parametrize("args", [
    ["snapshot", "-r", f"{SRC}/child@{NAMING.format(4)}"],  # only of the parent
    ["snapshot", "-r", f"{SRC}@by-hand"],
    ["send", "-R", f"{SRC}/child@{NAMING.format(4)}"],
    ["send", "-R", "-i", f"tank/other@{NAMING.format(3)}", f"{SRC}@{NAMING.format(4)}"],
    ["send", "-R", "-p", f"{SRC}@{NAMING.format(4)}"],
    ["receive", "-u", SRC],
])
def test_the_wrapper_refuses_the_rest(args: list[str]) -> None:
    assert isinstance(zfswrap.decide(args, [SOURCE_RULE]), zfswrap.Refused), args


def test_the_wrapper_refuses_recursive_forms_without_a_recursive_rule() -> None:
    flat = zfswrap.Rule("svc", "source", frozenset({SRC}), NAMING)
    for args in (["snapshot", "-r", f"{SRC}@{NAMING.format(4)}"],
                 ["send", "-R", f"{SRC}@{NAMING.format(4)}"],
                 ["destroy", "-r", f"{SRC}@{NAMING.format(3)}"]):
        assert isinstance(zfswrap.decide(args, [flat]), zfswrap.Refused), args
    found = zfswrap.decide(["receive", "-u", DST], [DESTINATION_RULE])
    assert isinstance(found, zfswrap.Run) and found.replication and found.check is not None


# ---------------------------------------------------------------------------- decisions


def snap(fs: str, seq: int | str, guid: int, txg: int) -> Snapshot:
    name = NAMING.format(seq) if isinstance(seq, int) else seq
    return Snapshot(fs, name, guid, txg, creation=txg)


def fplan(rel: str, src: list[Snapshot], dst: list[Snapshot] | None) -> FilesystemPlan:
    pair = FilesystemPair(SRC + rel, DST + rel)
    return FilesystemPlan(pair, src, dst, plan.plan_filesystem(src, dst, NAMING))


def test_a_new_child_travels_whole_in_the_incremental_stream() -> None:
    fps = [fplan("", [snap(SRC, 1, 11, 1), snap(SRC, 2, 12, 5)], [snap(DST, 1, 11, 1)]),
           fplan("/a", [snap(SRC + "/a", 1, 21, 1), snap(SRC + "/a", 2, 22, 5)],
                 [snap(DST + "/a", 1, 21, 1)]),
           fplan("/new", [snap(SRC + "/new", 2, 32, 5)], None)]
    assert decide_tree(fps, NAMING) == (TreeSend(NAMING.format(2), NAMING.format(1)), [])


def test_own_snapshots_between_come_along_unless_a_foreign_one_lies_between() -> None:
    src = [snap(SRC, 1, 11, 1), snap(SRC, 2, 12, 3), snap(SRC, 3, 13, 5)]
    fps = [fplan("", src, [snap(DST, 1, 11, 1)])]
    assert decide_tree(fps, NAMING)[0] == TreeSend(NAMING.format(3), NAMING.format(1), True)
    src = [snap(SRC, 1, 11, 1), snap(SRC, "by-hand", 99, 2), snap(SRC, 3, 13, 5)]
    fps = [fplan("", src, [snap(DST, 1, 11, 1)])]
    assert decide_tree(fps, NAMING)[0] == TreeSend(NAMING.format(3), NAMING.format(1), False)


def test_a_tree_that_cannot_go_as_one_stream_is_named() -> None:
    parent = fplan("", [snap(SRC, 1, 11, 1), snap(SRC, 2, 12, 5)], [snap(DST, 1, 11, 1)])
    lost = fplan("/a", [snap(SRC + "/a", 1, 21, 1), snap(SRC + "/a", 2, 22, 5)], None)
    _, problems = decide_tree([parent, lost], NAMING)
    assert problems and f"{DST}/a is missing, though {SRC}/a has @{NAMING.format(1)}" \
        in problems[0]
    # b's newest common snapshot is older than the parent's (n(2) is gone from b)
    behind = fplan("/b", [snap(SRC + "/b", 1, 31, 1), snap(SRC + "/b", 3, 33, 5)],
                   [snap(DST + "/b", 1, 31, 1)])
    parent = fplan("", [snap(SRC, 2, 12, 2), snap(SRC, 3, 13, 5)], [snap(DST, 2, 12, 2)])
    _, problems = decide_tree([parent, behind], NAMING)
    assert problems and f"shares @{NAMING.format(1)} with" in problems[0]


def test_a_child_left_behind_by_a_cut_stream_is_named_not_skipped() -> None:
    # the parent received @2, the child still stands at @1
    parent = fplan("", [snap(SRC, 1, 11, 1), snap(SRC, 2, 12, 5)],
                   [snap(DST, 1, 11, 1), snap(DST, 2, 12, 5)])
    child = fplan("/a", [snap(SRC + "/a", 1, 21, 1), snap(SRC + "/a", 2, 22, 5)],
                  [snap(DST + "/a", 1, 21, 1)])
    send, problems = decide_tree([parent, child], NAMING)
    assert send is None and problems and f"{DST}/a is behind {DST}" in problems[0]


def test_destroy_r_only_where_every_filesystem_with_the_name_would_destroy_it() -> None:
    old, older = NAMING.format(1), NAMING.format(2)
    tree = {DST: [snap(DST, 1, 1, 1), snap(DST, 2, 2, 2)],
            DST + "/a": [snap(DST + "/a", 1, 3, 1), snap(DST + "/a", 2, 4, 2)],
            DST + "/gone": [snap(DST + "/gone", 1, 5, 1)]}  # its source was destroyed
    wanted = {DST: (old, older), DST + "/a": (old, older)}
    assert group_destroys(DST, wanted, tree) == (
        [older], [(DST, old), (DST + "/a", old)])


# ---------------------------------------------------------------------------- one cycle


class TreeHost:
    """Answers the subtree listing like a ZFS holding `tree`; records what runs."""

    label = "u@test"

    def __init__(self, tree: dict[str, list[tuple[str, int]]]) -> None:
        self.tree = tree
        self.argvs: list[list[str]] = []

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        self.argvs.append(list(argv))
        args = argv[len(ZFS):]
        if args[:3] == ["get", "-Hp", "-r"]:
            if args[-1] not in self.tree:
                return Result(argv, 1, "", f"cannot open '{args[-1]}': dataset does not "
                                           "exist\n")
            lines = []
            for fs, snaps in self.tree.items():
                lines.append(f"{fs}\tguid\t{len(fs)}\n")
                lines += [f"{fs}@{n}\tguid\t{g}\n{fs}@{n}\tcreatetxg\t{g}\n"
                          for n, g in snaps]
            return Result(argv, 0, "".join(lines), "")
        if args[:1] == ["list"]:
            return Result(argv, 0, "".join(f"{n}\n" for n in args[3:]), "")
        return Result(argv, 0, "", "")

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)


def endpoint(user: str) -> Endpoint:
    return Endpoint("198.51.100.12" if user == "dst" else "a", user,
                    zfs_command=shlex.join(ZFS))


SVC = Service("svc", endpoint("src"), endpoint("dst"), (FilesystemPair(SRC, DST),),
              keep_source=2, keep_destination=2, recursive=True)


def test_a_cycle_is_one_snapshot_one_stream_and_the_forms_pass_agent_and_wrapper(
        monkeypatch: pytest.MonkeyPatch) -> None:
    n = NAMING.format
    src = TreeHost({SRC: [(n(1), 11), (n(2), 12)], SRC + "/a": [(n(1), 21), (n(2), 22)],
                    SRC + "/new": []})
    dst = TreeHost({DST: [(n(1), 11), (n(2), 12)], DST + "/a": [(n(1), 21), (n(2), 22)],
                    DST + "/gone": [(n(1), 31)]})
    streams: list[tuple[list[str], list[str]]] = []

    def pipe(sender: list[str], receiver: list[str], what: str,
             **kw: object) -> TransferResult:
        streams.append((sender, receiver))
        return TransferResult(0.1, 100)

    monkeypatch.setattr(recursive, "pipe", pipe)
    assert cycle_class(Replication.forward(SVC)) is RecursiveCycle
    cycle = RecursiveCycle(SVC, src, dst)  # type: ignore[arg-type]
    cp = cycle.survey(take_snapshot=True)
    assert cp.conflicts() == []
    shown = cp.describe()  # runonce --dry-run
    assert shown[1] == (f"recursive: one stream: zfs send -R -i {SRC}@{n(2)} {SRC}@{n(3)} | "
                        f"zfs receive -u {DST}")
    assert f"{SRC}/new -> {DST}/new: full send of @{n(3)}" in shown
    cycle.take_snapshots(cp)
    cycle.send_and_prune(cp)
    tail = [a[len(ZFS):] for a in src.argvs]
    assert tail.count(["snapshot", "-r", f"{SRC}@{n(3)}"]) == 1
    assert not [a for a in tail if a[:1] == ["snapshot"] and a[1] != "-r"]
    assert streams == [([*ZFS, "send", "-R", "-i", f"{SRC}@{n(2)}", f"{SRC}@{n(3)}"],
                        [*ZFS, "receive", "-u", DST])]
    # keep = 2: n(1) goes with one destroy -r on the source; on the destination
    # "gone" (no longer on the source) keeps it, so it goes one filesystem at a time
    assert ["destroy", "-r", f"{SRC}@{n(1)}"] in tail
    dtail = [a[len(ZFS):] for a in dst.argvs]
    assert ["destroy", f"{DST}@{n(1)}"] in dtail and ["destroy", f"{DST}/a@{n(1)}"] in dtail
    assert not [a for a in dtail if "gone" in " ".join(a) and a[0] == "destroy"]
    # no hold or bookmark on the base
    assert not [a for a in (*tail, *dtail) if a[:1] in (["hold"], ["release"], ["bookmark"])]
    # every form passes the wrapper's rules (the agent's grammar for the destination)
    for rule, forms in ((SOURCE_RULE, [*tail, streams[0][0][len(ZFS):]]),
                        (DESTINATION_RULE, [*dtail, streams[0][1][len(ZFS):]])):
        for args in forms:
            if args:  # the capability probe
                assert isinstance(zfswrap.decide(args, [rule]), zfswrap.Run), args


def test_a_diverged_child_stops_the_cycle_before_anything_runs() -> None:
    n = NAMING.format
    src = TreeHost({SRC: [(n(1), 11)], SRC + "/a": [(n(1), 21)]})
    dst = TreeHost({DST: [(n(1), 11)], DST + "/a": [(n(1), 21), ("by-hand", 99)]})
    cp = RecursiveCycle(SVC, src, dst).survey(take_snapshot=True)  # type: ignore[arg-type]
    with pytest.raises(ReplicationError, match=f"{DST}/a has snapshots newer"):
        cp.raise_on_conflict()


def test_a_missing_source_parent_is_one_clear_error() -> None:
    cycle = RecursiveCycle(SVC, TreeHost({}), TreeHost({}))  # type: ignore[arg-type]
    with pytest.raises(ReplicationError, match=f"source filesystem {SRC} does not exist"):
        cycle.survey(take_snapshot=True)


def test_config_module_keeps_the_key_listed() -> None:
    assert "recursive" in config._TOP_KEYS


@pytest.mark.skipif(os.geteuid() != 0, reason="the wrapper runs as root")
def test_the_installed_wrapper_takes_a_replication_stream_only_under_a_recursive_rule(
        tmp_path: Path) -> None:
    from .test_zfswrap import _run, _wrapper

    argv, bin_dir = _wrapper(tmp_path)
    rule_file = tmp_path / "rules" / "nobody" / "svc.destination.json"
    stream = FULL + b"the substreams"
    rule_file.write_text(zfswrap.Rule("svc", "destination", frozenset({DST}), NAMING)
                         .to_json())
    out = _run(argv, ["receive", "-u", DST], stream)
    assert out.returncode == zfswrap.EXIT_REFUSED and b"replication stream" in out.stderr
    assert not (bin_dir / "stream").exists()

    rule_file.write_text(DESTINATION_RULE.to_json())
    out = _run(argv, ["receive", "-u", DST], stream)
    assert out.returncode == 0, out.stderr
    assert (bin_dir / "stream").read_bytes() == stream  # whole, its list included
    # setuid=on: left out where this zfs has receive -x (the fake's usage is OpenZFS's)
    out = _run(argv, ["receive", "-u", DST], _setuid_on(FULL))
    assert out.returncode == 0, out.stderr
    assert "-x\nsetuid\n" in (bin_dir / "args").read_text()
    (bin_dir / "usage").write_text("usage: zfs command args ...\n")  # zfs-fuse: no -x
    (bin_dir / "stream").unlink()
    out = _run(argv, ["receive", "-u", DST], _setuid_on(FULL))
    assert out.returncode == zfswrap.EXIT_REFUSED and b"setuid=1" in out.stderr
    assert not (bin_dir / "stream").exists()
