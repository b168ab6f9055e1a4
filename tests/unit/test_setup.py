"""Setup without hosts: keys, root scripts, files, the wizard's questions."""

from __future__ import annotations

import dataclasses
import os
import shlex
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from zfsrepl import agent, config
from zfsrepl.cli import main
from zfsrepl.config import Endpoint, FilesystemPair, Service
from zfsrepl.errors import ConnectionFailed
from zfsrepl.host import Result
from zfsrepl.setup import apply, authorized_keys, keys, rootscript
from zfsrepl.setup.files import write_if_changed
from zfsrepl.setup.probe import ZfsProbe, allow_works
from zfsrepl.setup.wizard import Wizard
from zfsrepl.zfswrap import WRAPPER_PATH as WRAPPER

SVC = Service(
    name="testrepl",
    source=Endpoint("srchost", "src", zfs_command=f"sudo -n {WRAPPER}"),
    destination=Endpoint("198.51.100.12", "dst", zfs_command=f"sudo -n {WRAPPER}"),
    filesystems=(FilesystemPair("zfsrepl_src/a", "zfsrepl_dst/x/a"),
                 FilesystemPair("zfsrepl_src/b 2", "zfsrepl_dst/y/b 2")),
    interval=60, retries=5, keep_source=3, keep_destination=3,
)
PLACES = apply.Places(Path("/etc/zfsrepl"), Path("/var/log/zfsrepl"), Path("/var/lib/zfsrepl"))


# ---------------------------------------------------------------------------- keys


def test_key_pair_is_made_once_with_private_modes(tmp_path: Path) -> None:
    folder = tmp_path / "keys" / "src"
    folder.mkdir(parents=True, mode=0o700)
    private = folder / "testrepl"
    public, created = keys.ensure_key(private, "zfsrepl:testrepl:src@srchost")
    assert created and public.startswith("ssh-ed25519 ")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{private}.pub").stat().st_mode) == 0o644
    assert keys.permission_problems(private) == []
    again, created = keys.ensure_key(private, "zfsrepl:testrepl:src@srchost")
    assert not created and again == public


def test_lost_public_key_is_derived_again(tmp_path: Path) -> None:
    private = tmp_path / "k"
    public, _ = keys.ensure_key(private, "c")
    Path(f"{private}.pub").unlink()
    os.chmod(private, 0o644)
    assert keys.permission_problems(private)  # both: missing .pub, readable private key
    assert keys.ensure_key(private, "c") == (public, False)
    assert keys.permission_problems(private) == []


# ---------------------------------------------------------------------------- forced command


def test_forced_command_round_trips_into_the_agents_policy() -> None:
    svc = apply.normalized(SVC, PLACES.config_dir)
    argv = apply.forced_argv(svc, "/usr/local/bin/zfsrepl", "/var/log/zfsrepl/agent.log")
    line = authorized_keys.key_line("ssh-ed25519 AAAAkey c", argv, "zfsrepl:x:src@srchost")
    words = shlex.split(line.split('"')[1])
    assert words[:2] == ["/usr/local/bin/zfsrepl", "agent"]
    policy = agent.policy_from_args(agent.build_parser().parse_args(words[2:]))
    assert policy.filesystems == {"zfsrepl_dst/x/a", "zfsrepl_dst/y/b 2"}
    assert policy.naming == svc.naming
    assert policy.zfs_argv == ("sudo", "-n", "/usr/local/libexec/zfsrepl/zfs")


# ---------------------------------------------------------------------------- root scripts


def test_definitions_for_each_side() -> None:
    svc = apply.normalized(SVC, PLACES.config_dir)
    assert svc.destination.identity == "/etc/zfsrepl/keys/src/testrepl"
    src = apply.root_step(svc, "source", PLACES)
    dst = apply.root_step(svc, "destination", PLACES)
    assert config.parse_service(_toml(src.definition_text)) == svc
    assert config.parse_service(_toml(dst.definition_text)).role == "destination"
    assert src.definition_path == "/etc/zfsrepl/services/testrepl.toml"
    assert dst.definition_path == "/etc/zfsrepl/services/testrepl.toml"
    elsewhere = apply.Places(PLACES.config_dir, PLACES.log_dir,
                             destination_config_dir=Path("/srv/dst-etc"))
    assert apply.root_step(svc, "destination", elsewhere).definition_path == \
        "/srv/dst-etc/services/testrepl.toml"
    assert dst.datasets == ("zfsrepl_dst/x", "zfsrepl_dst/y")
    assert dst.agent_log == "/var/log/zfsrepl/agent.testrepl.log"
    assert (src.rights, src.zfs_path) == ("sudo", "/usr/local/libexec/zfsrepl/zfs")


def _toml(text: str) -> dict[str, object]:
    import tomllib

    return tomllib.loads(text)


@pytest.mark.parametrize("zfs_command", ["sudo -n /usr/local/libexec/zfsrepl/zfs", "/sbin/zfs"])
def test_root_script_is_valid_shell(zfs_command: str, tmp_path: Path) -> None:
    svc = apply.normalized(SVC, PLACES.config_dir)
    svc = Service(**{**svc.__dict__, "destination": Endpoint(
        svc.destination.host, svc.destination.user, identity=svc.destination.identity,
        zfs_command=zfs_command)})
    text = rootscript.render(apply.root_step(svc, "destination", PLACES))
    script = tmp_path / "s.sh"
    script.write_text(text)
    subprocess.run(["sh", "-n", str(script)], check=True)
    assert text.startswith("#!/bin/sh\n")
    assert apply.root_step(svc, "destination", PLACES).definition_text in text
    if zfs_command.startswith("sudo"):
        assert "dst ALL=(root) NOPASSWD: /usr/local/libexec/zfsrepl/zfs'" in text
        assert "NOPASSWD: /usr/sbin/zfs" not in text
        assert "visudo -cqf" in text
        assert "zfs allow -u" not in text
    else:
        assert ("/sbin/zfs allow -u dst "
                "create,mount,receive,readonly,destroy,rollback,hold,release,userprop,"
                "rename,clone,promote "
                "zfsrepl_dst/y") in text
        assert "sudoers" not in text


def test_root_script_refuses_to_run_as_a_user() -> None:
    text = rootscript.render(apply.root_step(SVC, "source", PLACES))
    # As root, run it as nobody: the script arrives on stdin, so no file need be readable.
    as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] \
        if os.getuid() == 0 else []
    out = subprocess.run([*as_user, "sh", "-s"], input=text, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 1 and "as root" in out.stderr


def test_root_step_problems_and_done(tmp_path: Path) -> None:
    fake_zfs = tmp_path / "zfs"
    fake_zfs.write_text("#!/bin/sh\nprintf 'Local+Descendent permissions:\\n"
                        "\\tuser me create,destroy\\n\\tuser me mount,receive\\n'\n")
    fake_zfs.chmod(0o755)
    step = rootscript.RootStep(
        side="destination", host="h", user="me", service="s", config_dir=str(tmp_path),
        definition_file="s.remote", definition_text="name = 's'\n", rights="allow",
        zfs_path=str(fake_zfs), datasets=("p/x",), permissions=("create", "receive", "rollback"),
        agent_log=str(tmp_path / "agent.s.log"))
    found = rootscript.problems(step)
    assert len(found) == 4, found
    assert any("lacks rollback" in p for p in found)
    (tmp_path / "keys" / "me").mkdir(parents=True, mode=0o755)
    assert any("mode 0755" in p for p in rootscript.problems(step))
    (tmp_path / "keys" / "me").chmod(0o700)
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "s.remote").write_text("name = 's'\n")
    (tmp_path / "agent.s.log").touch()
    assert rootscript.problems(step) == ["zfs allow on p/x lacks rollback for me"]
    assert rootscript.RootStep.from_json(step.to_json()) == step


def test_rights_of() -> None:
    assert rootscript.rights_of("sudo -n /usr/sbin/zfs") == ("sudo", "/usr/sbin/zfs")
    assert rootscript.rights_of("/sbin/zfs") == ("allow", "/sbin/zfs")


# ---------------------------------------------------------------------------- probe, files


@pytest.mark.parametrize(("output", "rc", "works"), [
    ("usage:\n\tallow <filesystem|volume>\n", 2, True),
    ("internal error: /usr/lib/zfs/pyzfs.py not found", 255, False),
    ("connect: Permission denied\ninternal error: failed to initialize ZFS library", 1, False),
    ("unrecognized command 'allow'", 2, False),
])
def test_allow_detection(output: str, rc: int, works: bool) -> None:
    assert allow_works(output, rc) is works
    probe = ZfsProbe("/usr/sbin/zfs", works, "/home/x")
    assert probe.zfs_command == ("/usr/sbin/zfs" if works else f"sudo -n {WRAPPER}")


def test_write_if_changed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert write_if_changed(path, "a\n", 0o700)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    mtime = path.stat().st_mtime_ns
    assert not write_if_changed(path, "a\n", 0o700)
    assert path.stat().st_mtime_ns == mtime
    assert write_if_changed(path, "a\n", 0o600)
    assert write_if_changed(path, "b\n", 0o600)
    assert path.read_text() == "b\n"


# ---------------------------------------------------------------------------- the wizard


@dataclass
class ScriptedConsole:
    answers: list[str]
    said: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.said.append(text)

    def ask(self, prompt: str) -> str:
        self.asked.append(prompt)
        if not self.answers:
            raise AssertionError(f"no answer left for {prompt!r}")
        return self.answers.pop(0)


class FakeDestination:
    label = "dst@198.51.100.12"
    zfsrepl = "/usr/bin/zfsrepl"

    def __init__(self, parents: set[str]) -> None:
        self.parents = parents
        self.closed = False

    def probe(self) -> ZfsProbe:
        return ZfsProbe("/usr/sbin/zfs", False, "/home/dst")

    def parent_state(self, zfs_argv: list[str], parent: str) -> str | None:
        assert zfs_argv == ["sudo", "-n", "/usr/local/libexec/zfsrepl/zfs"]
        return None if parent in self.parents else "missing"

    def close(self) -> None:
        self.closed = True


class ExistingSourceFs:
    label = "local"

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        name = argv[-1]
        if name in ("zfsrepl_src/a", "zfsrepl_src/b", "zfsrepl_src/b 2"):
            return Result(argv, 0, name + "\n", "")
        return Result(argv, 1, "", f"cannot open '{name}': dataset does not exist\n")

    def command(self, argv: list[str]) -> list[str]:
        return argv

    def close(self) -> None:
        pass


def test_wizard_refuses_bad_answers_and_asks_again(tmp_path: Path) -> None:
    hook = tmp_path / "pre.sh"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    logins: list[Endpoint] = []
    dest = FakeDestination({"zfsrepl_dst/r"})

    def connect(ep: Endpoint) -> FakeDestination:
        logins.append(ep)
        if ep.user == "nobody":
            raise ConnectionFailed("cannot log in as nobody@198.51.100.12: Permission denied")
        return dest

    answers = [
        str(tmp_path / "no-such-dir" / "r.toml"), str(tmp_path / "resp.toml"),
        "",  # source host: the default
        "bad host!", "198.51.100.12", "nobody",  # login refused: host and user again
        "", "dst",
        "0", "x", "2",
        "pool", "zfsrepl_src/missing", "zfsrepl_src/a",
        "zfsrepl_dst/nothere/a", "zfsrepl_dst/r/a",
        "zfsrepl_src/a", "zfsrepl_src/b",
        "zfsrepl_dst/r/a", "zfsrepl_dst/r/b",
        "soon", "",  # interval: refused, then the default 60
        "", "-1", "3",  # retries default 1, keep refused, 3
        "pre.sh", str(hook), "",  # pre refused (not a full path), then the hook; post none
        "bad name!", "testrepl",
        "maybe", "y",
    ]
    console = ScriptedConsole(answers)
    wizard = Wizard(console, tmp_path / "etc", connect=connect,  # type: ignore[arg-type]
                    source_host=ExistingSourceFs(),
                    probe_source=lambda: ZfsProbe("/usr/sbin/zfs", False, "/home/src"))
    result = wizard.run()
    assert console.answers == []
    assert result.go and result.destination is dest
    svc = result.service
    assert svc.name == "testrepl" and svc.interval == 60 and svc.retries == 1
    assert svc.keep_source == svc.keep_destination == 3
    assert svc.pre_snapshot == str(hook) and svc.post_snapshot is None
    assert [(p.source, p.destination) for p in svc.filesystems] == [
        ("zfsrepl_src/a", "zfsrepl_dst/r/a"), ("zfsrepl_src/b", "zfsrepl_dst/r/b")]
    assert svc.destination.identity == str(tmp_path / "etc" / "keys" / svc.source.user /
                                           "testrepl")
    assert svc.source.zfs_command == svc.destination.zfs_command == f"sudo -n {WRAPPER}"
    refusals = [s for s in console.said if s.startswith("Refused:")]
    assert len(refusals) == 15, refusals
    assert any("zfsrepl_dst/nothere does not exist" in s for s in refusals)
    assert any("is replicated by this service already" in s for s in refusals)
    assert any("Permission denied" in s for s in refusals)
    assert [ep.user for ep in logins] == ["nobody", "dst"]
    # the response file is the definition: it loads back to the same service
    path = tmp_path / "resp.toml"
    path.write_text(config.dump_service(svc))
    assert config.load_service_file(path) == svc
    assert any("interval in seconds [60]" in q for q in console.asked)


def test_wizard_takes_an_existing_response_file_as_defaults(tmp_path: Path) -> None:
    path = tmp_path / "resp.toml"
    old = apply.normalized(SVC, tmp_path)
    path.write_text(config.dump_service(old))
    dest = FakeDestination({"zfsrepl_dst/x", "zfsrepl_dst/y"})
    console = ScriptedConsole([str(path)] + [""] * 14 + ["n"])
    wizard = Wizard(console, tmp_path, connect=lambda ep: dest,  # type: ignore[arg-type,return-value]
                    source_host=ExistingSourceFs(),
                    probe_source=lambda: ZfsProbe("/usr/sbin/zfs", False, "/home/src"))
    result = wizard.run()
    assert not result.go
    got = result.service
    assert got.filesystems == old.filesystems and got.name == old.name
    assert (got.interval, got.retries, got.keep_source) == (60, 5, 3)


def test_wizard_run_again_keeps_every_setting_it_does_not_ask(tmp_path: Path) -> None:
    path = tmp_path / "resp.toml"
    base = apply.normalized(SVC, tmp_path)
    first, second = base.filesystems
    old = dataclasses.replace(
        base, parallel=4, wire_compression="zstd", skip_unchanged=True, metrics_port=9100,
        on_alarm="/usr/local/bin/alarm", bandwidth_limit=20_000_000, stall_timeout=60,
        listing_cache="on", keep_destination=7, retry_delay=1.0,
        filesystems=(dataclasses.replace(first, mountpoint="/srv/x"), second),
        # a cluster's logical name that only the address reaches: it need not resolve
        destination=dataclasses.replace(base.destination, host="standby.invalid",
                                        address="198.51.100.12", port=2222,
                                        ssh_options=("ServerAliveInterval=5",)))
    path.write_text(config.dump_service(old))
    logins: list[Endpoint] = []

    def connect(ep: Endpoint) -> FakeDestination:
        logins.append(ep)
        return FakeDestination({"zfsrepl_dst/x", "zfsrepl_dst/y"})

    consoles: list[ScriptedConsole] = []

    def run(answers: list[str]) -> Service:
        consoles.append(ScriptedConsole(answers))
        wizard = Wizard(consoles[-1], tmp_path, connect=connect,  # type: ignore[arg-type]
                        source_host=ExistingSourceFs(),
                        probe_source=lambda: ZfsProbe("/usr/sbin/zfs", False, "/home/src"))
        return wizard.run().service

    got = run([str(path)] + [""] * 14 + ["n"])  # every default: nothing may be lost
    assert logins[-1].address == "198.51.100.12" and logins[-1].port == 2222
    carried = ("parallel", "wire_compression", "skip_unchanged", "metrics_port", "on_alarm",
               "bandwidth_limit", "stall_timeout", "listing_cache", "keep_source",
               "keep_destination", "retry_delay", "filesystems")
    assert {k: getattr(got, k) for k in carried} == {k: getattr(old, k) for k in carried}
    d = got.destination
    assert (d.host, d.address, d.port, d.ssh_options) == (
        "standby.invalid", "198.51.100.12", 2222, ("ServerAliveInterval=5",))
    # another destination host: its old address goes; a new keep is both sides' keep
    # (a new name must resolve: "other.invalid" is refused and asked again)
    moved = run([str(path), "", "other.invalid", "localhost", ""] + [""] * 7 + ["4"]
                + [""] * 3 + ["n"])
    assert any("'other.invalid' does not resolve" in line for line in consoles[-1].said)
    assert moved.destination.host == "localhost" and moved.destination.address is None
    assert logins[-1].address is None
    assert moved.keep_source == moved.keep_destination == 4 and moved.parallel == 4


def test_setup_with_a_bad_response_file_is_one_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text('name = "x"\ninterval = "often"\n')
    assert main(["--config-dir", str(tmp_path), "setup", "-r", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interval" in err
