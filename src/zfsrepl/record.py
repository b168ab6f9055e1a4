"""`record`: a frozen value class made from its annotated fields, as
`dataclasses.dataclass(frozen=True)` makes one, for the modules the remote agent
imports.

The agent is a new Python for every command a cycle sends to the destination (one
for each receive), and `dataclasses` imports `inspect`, `ast`, `dis` and `tokenize`:
together with `typing` they were a third of the agent's start beyond the
interpreter's own. This keeps what those classes use: fields in the order they are
annotated, defaults (immutable ones), positional or keyword construction, equality,
hashing, `repr`, no assignment after construction, `fields`, `asdict` (shallow) and
`replace`. Everything else in zfsrepl uses `dataclasses`.

Like the rest of the agent's imports, this runs on a bare Python 3.9.
"""

from __future__ import annotations

# `typing` itself is one of the imports the agent avoids; mypy reads this name as
# typing.TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar, dataclass_transform

    RecordType = TypeVar("RecordType", bound=type)
    Instance = TypeVar("Instance")
else:
    def dataclass_transform(**_kwargs):
        return lambda decorator: decorator


@dataclass_transform(frozen_default=True)
def record(cls: RecordType) -> RecordType:
    """Make `cls` a frozen value class of its own annotated fields."""
    # Its own annotations (a record has no annotated base); read as an attribute,
    # which Python 3.14 computes on first access.
    names = tuple(getattr(cls, "__annotations__", {}))
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    required = [name for name in names if name not in defaults]
    title = cls.__qualname__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{title}() takes {len(names)} arguments, {len(args)} given")
        values = dict(zip(names, args))
        for name, value in kwargs.items():
            if name not in names:
                raise TypeError(f"{title}() has no field {name!r}")
            if name in values:
                raise TypeError(f"{title}() got {name!r} twice")
            values[name] = value
        missing = [name for name in required if name not in values]
        if missing:
            raise TypeError(f"{title}() is missing {', '.join(missing)}")
        for name in names:
            object.__setattr__(self, name, values[name] if name in values else defaults[name])

    def _values(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in names)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(_values(self) == _values(other))

    def __hash__(self: Any) -> int:
        return hash(_values(self))

    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{title}({shown})"

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of {title}")

    def __delattr__(self: Any, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of {title}")

    methods: list[Any] = [__init__, __eq__, __hash__, __repr__, __setattr__, __delattr__]
    for method in methods:
        method.__qualname__ = f"{title}.{method.__name__}"
        setattr(cls, method.__name__, method)
    cls._record_fields = names  # type: ignore[attr-defined]
    return cls


def fields(value: object) -> tuple[str, ...]:
    """The field names of a record (class or instance), in order."""
    cls = value if isinstance(value, type) else type(value)
    names: tuple[str, ...] = cls._record_fields  # type: ignore[attr-defined]
    return names


def asdict(value: object) -> dict[str, Any]:
    """A record's fields and their values (not copied: the fields are values)."""
    return {name: getattr(value, name) for name in fields(value)}


def replace(value: Instance, **changes: Any) -> Instance:
    """A copy of the record `value` with `changes`."""
    return type(value)(**{**asdict(value), **changes})
