"""Service definitions: parsing, defaults, the TOML round trip and every error.

Each error must name the file, the key and what was expected (DESIGN.md, 8).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from zfsrepl import config
from zfsrepl.config import (
    Endpoint,
    FilesystemPair,
    Service,
    check_service_name,
    dump_service,
    load_service,
    load_service_file,
    parse_service,
)
from zfsrepl.errors import ConfigError, UsageError
from zfsrepl.naming import SnapshotNaming

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The example of README.md.
EXAMPLE = '''\
name = "testrepl"
interval = 60            # seconds between cycles
retries = 5              # attempts before the cycle (or the service) fails
keep = 3                 # snapshots kept on each side; keep_source / keep_destination override
pre_snapshot = "none"    # full path of an executable run before the snapshot, or "none"
post_snapshot = "none"   # run after the snapshot, even when taking it failed

[source]
host = "solaris10src"
user = "src"

[destination]
host = "solaris10dest"
user = "dst"

[[filesystem]]
source = "rpool/src/testfs1"
destination = "rpool/dst/testfs1"

[[filesystem]]
source = "rpool/src/testfs2"
destination = "rpool/dst/testfs2"
'''

# Every key there is.
FULL = '''\
name = "web-1.db_2"
interval = 300
retries = 4
keep = 2
keep_source = 5
keep_destination = 9
pre_snapshot = "/usr/local/bin/db freeze"
post_snapshot = "/usr/local/bin/db-thaw"
on_alarm = "/usr/local/bin/page-me"
hook_timeout = 30
retry_delay = 2.5

[source]
host = "192.0.2.10"
user = "repl_src"
port = 2222
identity = "/etc/zfsrepl/keys/web"
ssh_options = ["Compression=no", "ConnectTimeout=10"]
zfs_command = "sudo -n /usr/sbin/zfs"

[destination]
host = "backup.example.org"
user = "repl.dst"

[[filesystem]]
source = "tank/my data/fs:1"
destination = "backup/web/my data/fs:1"
'''


def write(tmp_path: Path, text: str | bytes, name: str = "testrepl") -> Path:
    folder = tmp_path / "services"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def variant(old: str, new: str, base: str = EXAMPLE) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


def set_top(line: str, base: str = EXAMPLE) -> str:
    """`base` with the top-level `key = value` of `line` set (replaced or added)."""
    key = line.split("=", 1)[0].strip()
    found = re.search(rf"^{re.escape(key)} =.*$", base, re.M)
    if found:
        return base[:found.start()] + line + base[found.end():]
    first = base.index("\n") + 1
    return base[:first] + line + "\n" + base[first:]


def config_error(tmp_path: Path, text: str | bytes, key: str, *expected: str,
                 name: str = "testrepl") -> str:
    """Load `text` as services/<name>.toml; assert ConfigError naming path, key, expected."""
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        load_service_file(path, expected_name=name)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert f"{key}:" in msg, msg
    for part in expected:
        assert part in msg, msg
    assert "\n" not in msg.strip(), msg  # one line for the operator
    return msg


# ---------------------------------------------------------------------------- parsing


def test_readme_example(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    svc = load_service_file(path, expected_name="testrepl")
    assert svc == Service(
        name="testrepl",
        source=Endpoint(host="solaris10src", user="src"),
        destination=Endpoint(host="solaris10dest", user="dst"),
        filesystems=(FilesystemPair("rpool/src/testfs1", "rpool/dst/testfs1"),
                     FilesystemPair("rpool/src/testfs2", "rpool/dst/testfs2")),
        interval=60, retries=5, keep_source=3, keep_destination=3,
        pre_snapshot=None, post_snapshot=None, on_alarm=None,
        hook_timeout=300, retry_delay=5.0,
    )
    assert svc.path == path
    assert svc.naming == SnapshotNaming("src", "dst", "solaris10dest")
    assert svc.source.zfs_argv == ["zfs"]


def test_every_key(tmp_path: Path) -> None:
    svc = load_service_file(write(tmp_path, FULL, "web-1.db_2"))
    assert svc.name == "web-1.db_2"
    assert (svc.interval, svc.retries, svc.keep_source, svc.keep_destination) == (300, 4, 5, 9)
    assert svc.pre_snapshot == "/usr/local/bin/db freeze"
    assert svc.post_snapshot == "/usr/local/bin/db-thaw"
    assert svc.on_alarm == "/usr/local/bin/page-me"
    assert svc.hook_timeout == 30
    assert svc.retry_delay == 2.5
    assert svc.source == Endpoint(host="192.0.2.10", user="repl_src", port=2222,
                                  identity="/etc/zfsrepl/keys/web",
                                  ssh_options=("Compression=no", "ConnectTimeout=10"),
                                  zfs_command="sudo -n /usr/sbin/zfs")
    assert svc.source.zfs_argv == ["sudo", "-n", "/usr/sbin/zfs"]
    assert svc.destination == Endpoint(host="backup.example.org", user="repl.dst")
    assert svc.filesystems == (FilesystemPair("tank/my data/fs:1", "backup/web/my data/fs:1"),)


MINIMAL = '''\
name = "m"
[source]
host = "a"
user = "u"
[destination]
host = "b"
user = "v"
[[filesystem]]
source = "p/x"
destination = "q/x"
'''


def test_defaults() -> None:
    svc = parse_service(tomllib.loads(MINIMAL))
    assert (svc.interval, svc.retries, svc.keep_source, svc.keep_destination) == (60, 1, 1, 1)
    assert (svc.pre_snapshot, svc.post_snapshot, svc.on_alarm) == (None, None, None)
    assert (svc.hook_timeout, svc.retry_delay) == (300, 5.0)
    assert svc.source == Endpoint(host="a", user="u", port=None, identity=None,
                                  ssh_options=(), zfs_command="zfs")
    assert svc.path is None


@pytest.mark.parametrize("keys,expected", [
    ("keep = 4", (4, 4)),
    ("keep = 4\nkeep_source = 2", (2, 4)),
    ("keep = 4\nkeep_destination = 7", (4, 7)),
    ("keep_source = 2\nkeep_destination = 7", (2, 7)),
    ("keep_destination = 7", (1, 7)),
])
def test_keep_source_and_destination_override_keep(keys: str, expected: tuple[int, int]) -> None:
    svc = parse_service(tomllib.loads(keys + "\n" + MINIMAL))
    assert (svc.keep_source, svc.keep_destination) == expected


def test_hooks_none_and_full_path() -> None:
    text = 'pre_snapshot = "none"\npost_snapshot = "/bin/true"\non_alarm = "none"\n' + MINIMAL
    svc = parse_service(tomllib.loads(text))
    assert (svc.pre_snapshot, svc.post_snapshot, svc.on_alarm) == (None, "/bin/true", None)


def test_load_service_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    svc = load_service(tmp_path, "testrepl")
    assert svc.name == "testrepl"
    assert svc.path == path


def test_list_services_skips_invalid_names(tmp_path: Path) -> None:
    assert config.list_services(tmp_path) == []
    write(tmp_path, EXAMPLE, "testrepl")
    write(tmp_path, EXAMPLE, "alpha")
    write(tmp_path, EXAMPLE, "-bad")
    (tmp_path / "services" / "notes.txt").write_text("x")
    assert config.list_services(tmp_path) == ["alpha", "testrepl"]


def test_directories_from_option_environment_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZFSREPL_CONFIG_DIR", raising=False)
    assert config.config_dir(None) == Path("/etc/zfsrepl")
    monkeypatch.setenv("ZFSREPL_CONFIG_DIR", "/srv/conf")
    assert config.config_dir(None) == Path("/srv/conf")
    assert config.config_dir("/opt/c") == Path("/opt/c")


def test_config_error_is_a_usage_error_with_exit_code_2() -> None:
    assert issubclass(ConfigError, UsageError)
    assert ConfigError("x").exit_code == 2


# ---------------------------------------------------------------------------- round trip

_ALNUM = "ABCXYZabcxyz0189"


def _word(first: str, rest: str, max_size: int) -> st.SearchStrategy[str]:
    return st.builds(lambda a, b: a + b, st.sampled_from(first),
                     st.text(alphabet=rest, max_size=max_size))


SERVICE_NAMES = _word(_ALNUM, _ALNUM + "_.-", 20)
USERS = _word(_ALNUM + "_", _ALNUM + "_.-", 20)
SRC_HOSTS = _word(_ALNUM + "_.:[]%", _ALNUM + "_.:[]%-", 30)
DST_HOSTS = _word(_ALNUM + "_.:", _ALNUM + "_.:-", 30)
COMPONENTS = st.text(alphabet=_ALNUM + "_.: -", min_size=1, max_size=12).filter(
    lambda c: c not in (".", ".."))
DATASETS = st.builds(lambda pool, parts: "/".join([pool, *parts]),
                     _word("AZaz", _ALNUM + "_.: -", 8),
                     st.lists(COMPONENTS, min_size=1, max_size=4))
# Quotes, backslashes, control and non-ASCII characters: everything TOML must escape.
PATHS = st.builds(lambda t: "/" + t, st.text(
    alphabet=st.one_of(st.sampled_from('"\\\'$ \t\n\x7f/'), st.characters(codec="utf-8")),
    max_size=30))
HOOKS = st.none() | PATHS


ZFS_FOLDERS = st.lists(_word(_ALNUM + "_+-", _ALNUM + "_.+-", 8), max_size=3).map(
    lambda parts: "".join(f"/{p}" for p in parts))
ZFS_COMMANDS = st.just("zfs") | st.builds(lambda sudo, folder: f"{sudo}{folder}/zfs",
                                          st.sampled_from(["", "sudo -n "]), ZFS_FOLDERS)
SSH_OPTIONS = st.builds(lambda k, v: f"{k}={v}", _word("AZaz", _ALNUM, 12),
                        st.text(min_size=1, max_size=12).filter(
                            lambda v: not v[0].isspace() and "\n" not in v and "\r" not in v)
                        ).filter(lambda o: config.ssh_option_problem(o) is None)


def endpoints(hosts: st.SearchStrategy[str]) -> st.SearchStrategy[Endpoint]:
    return st.builds(Endpoint, host=hosts, user=USERS,
                     port=st.none() | st.integers(1, 65535), identity=st.none() | PATHS,
                     ssh_options=st.lists(SSH_OPTIONS, max_size=3).map(tuple),
                     zfs_command=ZFS_COMMANDS)


@st.composite
def services(draw: st.DrawFn) -> Service:
    n = draw(st.integers(1, 4))
    sources = draw(st.lists(DATASETS, min_size=n, max_size=n, unique=True))
    # side by side: a destination inside another is refused
    destinations = draw(st.lists(DATASETS, min_size=n, max_size=n, unique=True).filter(
        lambda ds: not any(a.startswith(b + "/") for a in ds for b in ds)))
    return Service(
        name=draw(SERVICE_NAMES),
        source=draw(endpoints(SRC_HOSTS)),
        destination=draw(endpoints(DST_HOSTS)),
        filesystems=tuple(FilesystemPair(s, d) for s, d in zip(sources, destinations)),
        interval=draw(st.integers(1, 10**7)),
        retries=draw(st.integers(1, 1000)),
        keep_source=draw(st.integers(1, 100)),
        keep_destination=draw(st.integers(1, 100)),
        pre_snapshot=draw(HOOKS), post_snapshot=draw(HOOKS), on_alarm=draw(HOOKS),
        hook_timeout=draw(st.integers(1, 10**6)),
        # at most 6 significant digits; see test_retry_delay_keeps_its_precision
        retry_delay=draw(st.integers(0, 99999)) / 10,
    )


SPACES_AND_COLONS = Service(
    name="s", source=Endpoint("h", "u"), destination=Endpoint("d", "v"),
    filesystems=(FilesystemPair("tank/my data/fs: 2024", "backup/a b:c/ d "),),
    pre_snapshot='/opt/my "hooks"/pre\\snap', post_snapshot="/bin/it's here",
)


@settings(max_examples=80)
@given(services())
@example(SPACES_AND_COLONS)
def test_dump_then_parse_gives_the_service_back(svc: Service) -> None:
    assert parse_service(tomllib.loads(dump_service(svc))) == svc


def test_dump_then_load_from_file(tmp_path: Path) -> None:
    path = write(tmp_path, dump_service(SPACES_AND_COLONS), "s")
    assert load_service_file(path, expected_name="s") == SPACES_AND_COLONS


@pytest.mark.parametrize("delay", [1234567.0, 0.1234567, 12.3456789])
def test_retry_delay_keeps_its_precision(delay: float) -> None:
    """dump_service writes retry_delay with '%g', six significant digits."""
    svc = Service(name="s", source=Endpoint("h", "u"), destination=Endpoint("d", "v"),
                  filesystems=(FilesystemPair("p/a", "q/a"),), retry_delay=delay)
    assert parse_service(tomllib.loads(dump_service(svc))).retry_delay == delay


# ---------------------------------------------------------------------------- errors

EXPECTED_DATASET = "a ZFS filesystem name like pool/path/fs"


@pytest.mark.parametrize("old,key", [
    ('name = "testrepl"\n', "name"),
    ('user = "src"\n', "source.user"),
    ('host = "solaris10dest"\n', "destination.host"),
    ('destination = "rpool/dst/testfs2"\n', "filesystem[2].destination"),
])
def test_missing_required_key_says_what_is_expected(tmp_path: Path, old: str, key: str) -> None:
    """Every key that must be there; the message says what to write."""
    config_error(tmp_path, variant(old, ""), key, "missing", "; expected ")


@pytest.mark.parametrize("side", ["source", "destination"])
def test_missing_endpoint_table(tmp_path: Path, side: str) -> None:
    start = EXAMPLE.index(f"[{side}]")
    end = EXAMPLE.index("\n\n", start)
    text = EXAMPLE[:start] + EXAMPLE[end:]
    config_error(tmp_path, text, side, "missing", f"a [{side}] table with host and user")


def test_missing_filesystem(tmp_path: Path) -> None:
    text = EXAMPLE[:EXAMPLE.index("[[filesystem]]")]
    config_error(tmp_path, text, "filesystem", "missing", "one or more [[filesystem]] tables")


def test_empty_filesystem_list(tmp_path: Path) -> None:
    text = EXAMPLE[:EXAMPLE.index("[[filesystem]]")].replace(
        'retries = 5', 'filesystem = []\nretries = 5')
    config_error(tmp_path, text, "filesystem", "[[filesystem]]")


def test_endpoint_not_a_table(tmp_path: Path) -> None:
    text = 'source = "solaris10src"\n' + EXAMPLE[:EXAMPLE.index("[source]")] + \
        EXAMPLE[EXAMPLE.index("[destination]"):]
    config_error(tmp_path, text, "[source]", "must be a table with host and user")


def test_filesystem_entry_not_a_table(tmp_path: Path) -> None:
    text = variant("interval = 60", 'filesystem = ["rpool/src/testfs1"]\ninterval = 60',
                   EXAMPLE[:EXAMPLE.index("[[filesystem]]")])
    config_error(tmp_path, text, "filesystem[1]", "is not a table",
                 "[[filesystem]] with source and destination")


def test_unknown_top_level_key_suggests_nearest(tmp_path: Path) -> None:
    msg = config_error(tmp_path, variant("interval =", "intervall ="), "intervall",
                       "unknown key", "did you mean 'interval'?")
    assert msg.endswith("did you mean 'interval'?")


def test_unknown_key_without_near_name_lists_valid_keys(tmp_path: Path) -> None:
    config_error(tmp_path, variant("interval =", "colour = 1\ninterval ="), "colour",
                 "unknown key", "valid keys here:", "interval", "keep_source")


def test_unknown_key_in_source(tmp_path: Path) -> None:
    config_error(tmp_path, variant('host = "solaris10src"', 'hostname = "solaris10src"'),
                 "source.hostname", "unknown key", "did you mean 'host'?")


def test_unknown_key_in_filesystem(tmp_path: Path) -> None:
    config_error(tmp_path, variant('destination = "rpool/dst/testfs2"',
                                   'destinaton = "rpool/dst/testfs2"'),
                 "filesystem[2].destinaton", "unknown key", "did you mean 'destination'?")


@pytest.mark.parametrize("line,key,expected", [
    ('interval = "60"', "interval", "an integer >= 1"),
    ("retries = true", "retries", "an integer >= 1"),
    ("keep = 1.5", "keep", "an integer >= 1"),
    ("interval = 0", "interval", "an integer >= 1"),
    ("retries = 0", "retries", "an integer >= 1"),
    ("keep = 0", "keep", "an integer >= 1"),
    ("keep = -3", "keep", "an integer >= 1"),
    ("keep_source = 0", "keep_source", "an integer >= 1"),
    ("keep_destination = 0", "keep_destination", "an integer >= 1"),
    ("hook_timeout = 0", "hook_timeout", "an integer >= 1"),
    ('retry_delay = "5"', "retry_delay", "a number >= 0"),
    ("retry_delay = -1.0", "retry_delay", "a number >= 0"),
    ("retry_delay = true", "retry_delay", "a number >= 0"),
])
def test_wrong_type_or_out_of_range(tmp_path: Path, line: str, key: str, expected: str) -> None:
    config_error(tmp_path, set_top(line), key, "is not valid", expected)


@pytest.mark.parametrize("value", ["nan", "inf", "-nan"])
def test_retry_delay_must_be_a_finite_number(tmp_path: Path, value: str) -> None:
    """TOML has nan and inf; time.sleep() raises ValueError or OverflowError on them,
    so a cycle's first retry would end in a traceback instead of a clean error."""
    config_error(tmp_path, set_top(f"retry_delay = {value}"),
                 "retry_delay", "a number >= 0")


@pytest.mark.parametrize("value", ["70000", "-1", '"22"', "22.0"])
def test_port_out_of_range(tmp_path: Path, value: str) -> None:
    config_error(tmp_path, variant('user = "dst"', f'user = "dst"\nport = {value}'),
                 "destination.port", "is not valid", "an integer from 0 to 65535")


@pytest.mark.parametrize("key", ["pre_snapshot", "post_snapshot", "on_alarm"])
def test_hook_not_a_full_path(tmp_path: Path, key: str) -> None:
    config_error(tmp_path, set_top(f'{key} = "backup.sh --freeze"'), key,
                 "'backup.sh --freeze' is not a full path",
                 '"none" or the full path of an executable')


def test_hook_not_a_string(tmp_path: Path) -> None:
    config_error(tmp_path, variant('pre_snapshot = "none"', "pre_snapshot = 1"),
                 "pre_snapshot", "not a non-empty string", '"none" or the full path')


def test_host_starting_with_dash(tmp_path: Path) -> None:
    config_error(tmp_path, variant('host = "solaris10src"', 'host = "-oProxyCommand"'),
                 "source.host", "starts with '-'", "a host name or address")


@pytest.mark.parametrize("host", ["solaris 10", "a;b", "", "h$(x)"])
def test_host_with_bad_characters(tmp_path: Path, host: str) -> None:
    config_error(tmp_path, variant('host = "solaris10src"', f'host = "{host}"'),
                 "source.host", "a host name or address")


@pytest.mark.parametrize("host", ["[2001:db8::1]", "fe80::1%eth0"])
def test_destination_host_must_fit_a_snapshot_name(tmp_path: Path, host: str) -> None:
    config_error(tmp_path, variant('host = "solaris10dest"', f'host = "{host}"'),
                 "destination.host", "cannot be part of a snapshot name",
                 "letters, digits and '_-.:'")


@pytest.mark.parametrize("user", ["-root", "ro ot", "root;id", "a" * 33, "", "r@h"])
def test_bad_user(tmp_path: Path, user: str) -> None:
    config_error(tmp_path, variant('user = "dst"', f'user = "{user}"'), "destination.user",
                 "a user name (letters, digits, '_.-')")


def test_identity_not_a_full_path(tmp_path: Path) -> None:
    config_error(tmp_path, variant('user = "src"', 'user = "src"\nidentity = "keys/id"'),
                 "source.identity", "is not a full path", "the full path of a private key")


@pytest.mark.parametrize("value", ['"Compression=no"', '["Compression no"]', '["-oX=y"]',
                                   "[1]"])
def test_bad_ssh_options(tmp_path: Path, value: str) -> None:
    config_error(tmp_path, variant('user = "src"', f'user = "src"\nssh_options = {value}'),
                 "source.ssh_options", "is not valid", "a list of ssh -o options")


@pytest.mark.parametrize("value", ['"sudo \\"zfs"', '"   "'])
def test_zfs_command_not_a_command(tmp_path: Path, value: str) -> None:
    config_error(tmp_path, variant('user = "src"', f'user = "src"\nzfs_command = {value}'),
                 "source.zfs_command", "is not a command", "expected")


@pytest.mark.parametrize("dataset,problem", [
    ("rpool/dst/testfs2@snap", "names a snapshot or bookmark"),
    ("rpool/dst/testfs2#mark", "names a snapshot or bookmark"),
    ("rpool", "is a whole pool"),
    ("rpool/dst//testfs2", "has an empty path component"),
    ("rpool/dst/testfs2/", "has an empty path component"),
    ("/rpool/dst/testfs2", "has an empty path component"),
    ("rpool/dst/test;fs2", "component 'test;fs2' may only hold"),
    ("rpool/dst/$HOME", "component '$HOME' may only hold"),
    ("rpool/dst/tëst", "component 'tëst' may only hold"),
    ("rpool/../etc", "component '..' may only hold"),
    ("1pool/dst/testfs2", "pool names start with a letter"),
    ("_pool/dst/testfs2", "pool names start with a letter"),
    ("rpool/" + "x" * 250, "is longer than 255 characters"),
])
def test_invalid_dataset_name(tmp_path: Path, dataset: str, problem: str) -> None:
    text = variant('destination = "rpool/dst/testfs2"', f'destination = "{dataset}"')
    config_error(tmp_path, text, "filesystem[2].destination", repr(dataset), problem,
                 EXPECTED_DATASET)


def test_invalid_source_dataset_name(tmp_path: Path) -> None:
    text = variant('source = "rpool/src/testfs1"', 'source = "rpool"')
    config_error(tmp_path, text, "filesystem[1].source", "is a whole pool", EXPECTED_DATASET)


@pytest.mark.parametrize("attr,side", [("source", "src"), ("destination", "dst")])
def test_duplicate_filesystem(tmp_path: Path, attr: str, side: str) -> None:
    text = variant(f'{attr} = "rpool/{side}/testfs2"', f'{attr} = "rpool/{side}/testfs1"')
    config_error(tmp_path, text, f"filesystem[2].{attr}",
                 f"'rpool/{side}/testfs1' appears twice", "each once")


def test_a_destination_inside_another_is_refused(tmp_path: Path) -> None:
    text = variant('destination = "rpool/dst/testfs2"', 'destination = "rpool/dst/testfs1/in"')
    config_error(tmp_path, text, "filesystem[2].destination",
                 "'rpool/dst/testfs1/in' lies inside the destination 'rpool/dst/testfs1'",
                 "none inside another")
    # a name that merely starts the same is no nesting
    side = variant('destination = "rpool/dst/testfs2"', 'destination = "rpool/dst/testfs10"')
    assert load_service_file(write(tmp_path, side)).filesystems[1].destination == \
        "rpool/dst/testfs10"


def test_name_differs_from_file_name(tmp_path: Path) -> None:
    config_error(tmp_path, EXAMPLE, "name", "'testrepl' differs from the file name 'other'",
                 'name = "other"', name="other")


def test_invalid_service_name_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, variant('name = "testrepl"', 'name = "test repl"'))
    with pytest.raises(ConfigError) as info:
        load_service_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: name: 'test repl' is not valid"), msg
    assert "expected 1-64 letters, digits" in msg


def test_invalid_toml(tmp_path: Path) -> None:
    config_error(tmp_path, variant("interval = 60", "interval = = 60"), "", "not valid TOML",
                 "line 2")


def test_not_utf8(tmp_path: Path) -> None:
    config_error(tmp_path, EXAMPLE.encode("utf-8").replace(b"src", b"sr\xe9", 1), "",
                 "not UTF-8 text")


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "services" / "testrepl.toml"
    path.mkdir(parents=True)
    with pytest.raises(ConfigError) as info:
        load_service_file(path)
    assert str(info.value) == f"{path}: cannot read: Is a directory"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "services" / "gone.toml"
    with pytest.raises(ConfigError) as info:
        load_service_file(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_load_service_names_the_services_that_exist(tmp_path: Path) -> None:
    write(tmp_path, EXAMPLE, "testrepl")
    write(tmp_path, EXAMPLE, "alpha")
    with pytest.raises(UsageError) as info:
        load_service(tmp_path, "tsetrepl")
    msg = str(info.value)
    assert msg == (f"no service 'tsetrepl': {tmp_path / 'services' / 'tsetrepl.toml'} does not"
                   " exist; defined services: alpha, testrepl")
    assert info.value.exit_code == 2


def test_load_service_without_any_services(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^no service 'x': .* does not exist$"):
        load_service(tmp_path, "x")


@pytest.mark.parametrize("name", ["../etc/passwd", "", "-x", ".hidden", "a b", "a/b",
                                  "a" * 65, "é"])
def test_bad_service_name_on_the_command_line(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError) as info:
        check_service_name(name)
    assert repr(name) in str(info.value)
    assert "use 1-64 letters, digits" in str(info.value)
    with pytest.raises(UsageError):
        load_service(tmp_path, name)


@pytest.mark.parametrize("name", ["a", "A" * 64, "web-1.db_2", "0day"])
def test_good_service_names(name: str) -> None:
    check_service_name(name)


def test_service_name_with_final_newline_on_the_command_line() -> None:
    """SERVICE_NAME_RE ends in '$', which also matches before a final newline."""
    with pytest.raises(UsageError):
        check_service_name("testrepl\n")


@pytest.mark.parametrize("old,new,key", [
    ('name = "testrepl"', 'name = "testrepl\\n"', "name"),
    ('user = "src"', 'user = "src\\n"', "source.user"),
    ('host = "solaris10dest"', 'host = "solaris10dest\\n"', "destination.host"),
    ('destination = "rpool/dst/testfs2"', 'destination = "rpool/dst/testfs2\\n"',
     "filesystem[2].destination"),
])
def test_value_with_final_newline_is_refused(tmp_path: Path, old: str, new: str,
                                             key: str) -> None:
    """The patterns end in '$', which also matches before a final newline, so
    "src\\n" passed as a user, a host, a dataset and a service name."""
    path = write(tmp_path, variant(old, new))
    with pytest.raises(ConfigError) as info:
        load_service_file(path)
    assert f"{key}:" in str(info.value)


# ---------------------------------------------------------------- values that reach root


@pytest.mark.parametrize("value", [
    "sudo -n ALL",  # would render the sudo rule `NOPASSWD: ALL`
    "/usr/sbin/zfs,/bin/sh",  # a second command in the sudo rule
    "sudo -n /usr/sbin/zfs,/bin/sh",
    "sudo /usr/sbin/zfs",  # sudo that may ask a password: the service would hang
    "sudo -n zfs",  # a sudo rule needs the full path
    "sudo -n -u root /usr/sbin/zfs",
    "/usr/sbin/zfs allow",
    "/usr/sbin/zfsx",
    "bin/zfs",
    "/usr/../bin/zfs",
    "'/opt/my zfs/zfs'",
    "pfexec /sbin/zfs",
])
def test_zfs_command_that_could_reach_further_is_refused(tmp_path: Path, value: str) -> None:
    config_error(tmp_path, variant('user = "dst"', f'user = "dst"\nzfs_command = "{value}"'),
                 "destination.zfs_command", repr(value), "ending in /zfs", '"sudo -n"')


@pytest.mark.parametrize("value", ["zfs", "/usr/sbin/zfs", "sudo -n /usr/sbin/zfs",
                                   "/opt/zfs-2.2.1/bin/zfs"])
def test_zfs_command_forms_that_are_accepted(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, variant('user = "dst"', f'user = "dst"\nzfs_command = "{value}"'))
    assert load_service_file(path).destination.zfs_command == value


@pytest.mark.parametrize("option,why", [
    ("ProxyCommand=sh -c 'id > /tmp/x'", "runs a command"),
    ("proxycommand=nc %h %p", "runs a command"),
    ("LocalCommand=id", "runs a command"),
    ("PermitLocalCommand=yes", "runs a command"),
    ("KnownHostsCommand=/bin/cat", "runs a command"),
    ("Match=exec id", "runs a command"),
    ("PKCS11Provider=/tmp/evil.so", "loads a library"),
    ("SecurityKeyProvider=/tmp/evil.so", "loads a library"),
    ("RemoteCommand=id", "the agent"),
    ("ControlPath=/tmp/sock", "connection"),
    ("ControlMaster=yes", "connection"),
    ("Include=/tmp/ssh_config", "reads"),
    ("ForwardAgent=yes", "keys"),
    ("ForwardX11=yes", "runs a command"),
    ("ControlPersist=600", "connection"),
    ("XAuthLocation=/tmp/evil", "runs a command"),
    ("ProxyJump=-oProxyCommand=id", "ProxyJump"),
    ("ProxyJump=jump host", "ProxyJump"),
])
def test_ssh_options_that_run_code_are_refused(tmp_path: Path, option: str, why: str) -> None:
    text = variant('user = "src"', f'user = "src"\nssh_options = ["{option}"]'.replace(
        "'", "\\u0027"))
    config_error(tmp_path, text, "source.ssh_options", "is refused", why,
                 option.split("=", 1)[0])


@pytest.mark.parametrize("option", ["ProxyJump=bastion", "ProxyJump=me@bastion:2222,jump2",
                                    "Compression=no", "ServerAliveInterval=15"])
def test_ssh_options_that_tune_the_connection_are_accepted(tmp_path: Path,
                                                           option: str) -> None:
    path = write(tmp_path, variant('user = "src"', f'user = "src"\nssh_options = ["{option}"]'))
    assert load_service_file(path).source.ssh_options == (option,)


def test_buffers_of_all_parallel_streams_are_bounded(tmp_path: Path) -> None:
    # 16 streams of 1G: 16G the receiving host would be asked to allocate at once
    config_error(tmp_path, set_top('parallel = 16', set_top('buffer = "1G"')),
                 "buffer", "'1G'", "parallel = 16", "4G in all")
    path = write(tmp_path, set_top('parallel = 4', set_top('buffer = "1G"')))
    svc = load_service_file(path)
    assert (svc.parallel, svc.buffer) == (4, 1 << 30)
