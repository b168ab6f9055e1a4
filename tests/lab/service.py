"""zfsrepl service definitions and command lines, for e2e tests."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

from .base import DEFAULT_TIMEOUT, Lab, LabHost

Filesystem = Union[Tuple[str, str], Mapping[str, Any]]


def toml_dumps(data: Mapping[str, Any]) -> str:
    """TOML text for ``data``: strings, ints, floats, bools, lists of those, tables
    (mappings) and arrays of tables (lists of mappings). Enough for service files."""
    return "\n".join(_table(data, ())).lstrip("\n") + "\n"


def _table(data: Mapping[str, Any], path: tuple[str, ...]) -> list[str]:
    lines, subtables = [], []
    for key, value in data.items():
        if isinstance(value, Mapping):
            subtables.append(("[{}]", key, value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            subtables.extend(("[[{}]]", key, item) for item in value)
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    # plain keys first: after a [header], every key belongs to that table
    for header, key, value in subtables:
        sub = (*path, key)
        lines += ["", header.format(".".join(_key(k) for k in sub)), *_table(value, sub)]
    return lines


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"
}


def _string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def service_definition(
    lab: Lab, filesystems: Iterable[Filesystem], *, name: str = "testrepl", **settings: Any
) -> dict[str, Any]:
    """A service definition between the lab's hosts, as a dict for :func:`toml_dumps`.

    ``filesystems`` are ``(source, destination)`` pairs or ``[[filesystem]]`` tables.
    ``settings`` override the defaults; a mapping is merged into the table of the same
    name (``source={"port": 2222}``), and ``None`` removes a key.
    """
    data: dict[str, Any] = {
        "name": name,
        "interval": 60,
        "retries": 5,
        "keep": 3,
        "pre_snapshot": "none",
        "post_snapshot": "none",
        "source": {"host": lab.src.address, "user": lab.src.user},
        "destination": {"host": lab.dst.address, "user": lab.dst.user},
    }
    for key, value in settings.items():
        if value is None:
            data.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = _without_none({**data[key], **value})
        else:
            data[key] = value
    data["filesystem"] = [
        dict(fs) if isinstance(fs, Mapping) else {"source": fs[0], "destination": fs[1]}
        for fs in filesystems
    ]
    return data


def _without_none(table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if v is not None}


class ZfsreplCli:
    """A config dir and a state dir for one test, and ``zfsrepl`` run against them as
    the source host's user (the way the service runs there)."""

    def __init__(self, lab: Lab, name: str, host: Optional[LabHost] = None) -> None:
        self.lab = lab
        self.host = host or lab.src
        self.base = lab.work_dir / name
        self.config_dir = self.base / "config"
        self.state_dir = self.base / "state"

    def create(self) -> None:
        """Make the (empty) dirs, owned by the host's user."""
        self.destroy()
        self.host.root(["install", "-d", "-o", self.host.user, "-m", "0755", str(self.base)])
        self.host.run(["mkdir", "-p", str(self.config_dir / "services"), str(self.state_dir)])

    def destroy(self) -> None:
        self.host.root(["rm", "-rf", str(self.base)])

    def write_service(self, service: Optional[Mapping[str, Any]] = None, /, **fields: Any) -> Path:
        """Write ``services/NAME.toml``: ``service`` as given (updated with ``fields``), or
        :func:`service_definition` of ``fields`` (``filesystems=[(src, dst)]``, ...)."""
        data = service_definition(self.lab, **fields) if service is None else {**service, **fields}
        path = self.config_dir / "services" / f"{data['name']}.toml"
        self.put(path, toml_dumps(data).encode())
        return path

    def put(self, path: Path, content: bytes) -> None:
        """Write a file as the host's user (so it owns it)."""
        self.host.run(["sh", "-c", 'cat > "$1"', "sh", str(path)], input=content)

    def argv(self, *args: str) -> list[str]:
        dirs = ["--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir)]
        return ["zfsrepl", *dirs, *args]

    def run(
        self,
        *args: str,
        input: Optional[bytes] = None,
        env: Optional[Mapping[str, str]] = None,
        check: bool = True,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[bytes]:
        """``zfsrepl --config-dir C --state-dir S ARGS`` as the host's user."""
        return self.host.run(self.argv(*args), input=input, env=env, check=check, timeout=timeout)

    def popen(
        self, *args: str, env: Optional[Mapping[str, str]] = None
    ) -> subprocess.Popen[bytes]:
        """The same in the background (a daemon); its pid is zfsrepl's own."""
        return self.host.popen(self.argv(*args), env=env)
