"""A logical host name with an `address`: ssh connects to the address and checks the
host key under the logical name (HostKeyAlias); the snapshots carry the logical name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zfsrepl.config import Endpoint, dump_service, parse_service
from zfsrepl.errors import ConfigError
from zfsrepl.host import SshHost


def definition(**destination: Any) -> dict[str, Any]:
    return {
        "name": "r",
        "source": {"host": "src-cluster", "user": "src"},
        "destination": {"host": "dst-cluster", "user": "dst", **destination},
        "filesystem": [{"source": "tank/a", "destination": "backup/a"}],
    }


def options(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-o"]


def test_address_is_read_kept_and_written() -> None:
    svc = parse_service(definition(address="198.51.100.12"))
    assert svc.destination.address == "198.51.100.12"
    assert svc.destination.host == "dst-cluster"
    assert parse_service(_toml(dump_service(svc))) == svc


def _toml(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def test_snapshot_names_use_the_logical_name() -> None:
    svc = parse_service(definition(address="198.51.100.12"))
    assert svc.naming.format(7) == "zfsrepl-src-dst-dst-cluster-7"


@pytest.mark.parametrize("value", ["-oProxyCommand=x", "a b", "", 5])
def test_a_bad_address_is_refused_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_service(definition(address=value), Path("/etc/zfsrepl/services/r.toml"))
    assert "r.toml: destination.address:" in str(err.value)


def test_ssh_connects_to_the_address_and_checks_the_key_under_the_logical_name() -> None:
    host = SshHost(Endpoint("dst-cluster", "dst", address="198.51.100.12"))
    argv = host._base()
    assert "HostName=198.51.100.12" in options(argv)
    assert "HostKeyAlias=dst-cluster" in options(argv)
    assert "CheckHostIP=no" in options(argv)  # the address is each node's in turn
    # never a blind acceptance of whatever key answers
    assert not any(o.startswith("StrictHostKeyChecking") for o in options(argv))


def test_without_an_address_nothing_changes() -> None:
    argv = SshHost(Endpoint("dst", "dst", port=2222))._base()
    assert not any(o.startswith(("HostName=", "HostKeyAlias=")) for o in options(argv))


def test_the_definitions_own_ssh_options_still_win() -> None:
    # ssh keeps the first value of an option: the definition's come before ours
    argv = SshHost(Endpoint("dst-cluster", "dst", address="10.0.0.5",
                            ssh_options=("HostKeyAlias=other",)))._base()
    opts = options(argv)
    assert opts.index("HostKeyAlias=other") < opts.index("HostKeyAlias=dst-cluster")
