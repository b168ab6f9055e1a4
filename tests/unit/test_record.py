"""zfsrepl.record: the frozen value classes of the agent's modules behave as the
dataclasses they replace."""

from __future__ import annotations

from typing import Any

import pytest

from zfsrepl import record
from zfsrepl.agent import RunZfs
from zfsrepl.capabilities import Capabilities


@record.record
class Pair:
    name: str
    count: int = 0
    tags: tuple[str, ...] = ()


def test_fields_in_order_with_defaults_positional_or_by_keyword() -> None:
    assert record.fields(Pair) == ("name", "count", "tags")
    assert Pair("a") == Pair(name="a", count=0, tags=())
    assert Pair("a", 2) == Pair("a", count=2)
    assert Pair("a", 2) != Pair("a", 3)
    assert repr(Pair("a", tags=("x",))) == "Pair(name='a', count=0, tags=('x',))"


def test_equal_values_hash_alike_and_other_classes_are_never_equal() -> None:
    assert hash(Pair("a", 1)) == hash(Pair("a", 1))
    assert len({Pair("a", 1), Pair("a", 1), Pair("b", 1)}) == 2
    assert Pair("a") != ("a", 0, ())


@pytest.mark.parametrize("args, kwargs, words", [
    ((), {}, "missing name"),
    (("a", 1, (), 4), {}, "takes 3 arguments, 4 given"),
    (("a",), {"name": "b"}, "'name' twice"),
    (("a",), {"colour": "red"}, "no field 'colour'"),
])
def test_wrong_construction_names_what_is_wrong(args: tuple[Any, ...], kwargs: dict[str, Any],
                                                words: str) -> None:
    untyped: Any = Pair  # what mypy refuses already, at run time
    with pytest.raises(TypeError, match=words):
        untyped(*args, **kwargs)


def test_no_assignment_after_construction() -> None:
    pair = Pair("a")
    with pytest.raises(AttributeError, match="cannot assign to field 'name' of Pair"):
        pair.name = "b"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="cannot delete"):
        del pair.count
    assert pair == Pair("a")


def test_replace_and_asdict() -> None:
    run = RunZfs(("receive", "-u", "p/a"), must_exist="p/a", changes=("p/a",))
    assert record.replace(run, changes=()) == RunZfs(("receive", "-u", "p/a"),
                                                     must_exist="p/a")
    assert run.changes == ("p/a",)  # the original is untouched
    assert record.asdict(Capabilities(resume=True))["resume"] is True
    assert Capabilities(resume=True, holds=True).names() == ["resume", "holds"]
