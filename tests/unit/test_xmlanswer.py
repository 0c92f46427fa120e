"""XML answers (pure): every JSON value is written by one rule and reads back exactly.

The reader is tests/xmlread.py, which follows the rules the README documents; it takes
the JSON value only for the types XML text cannot carry."""

from __future__ import annotations

import random
from typing import Any

import pytest

from shared.xmlanswer import dumps
from tests.xmlread import answer, parse

EDGES: list[dict[str, Any]] = [
    {"ignored": [], "issues": []},  # a receipt with nothing ignored and no issue
    {"a": [""], "b": [{}], "c": [[]], "d": [None], "e": [[], [[]], [1, [2]]]},
    {"empty": "", "obj": {}, "null": None, "f": 1.5, "t": True, "n": -3, "big": 2**63},
    {"$.employee.email": ["x"], "xmlish": {"xml": 1}, "item": [{"item": []}]},
    {"\u0001key": ["\u0007", "a\\b"], "k": "\ufffe"},
    {"patch": [{"op": "add", "path": "/tags", "value": ["a", []]}]},
]


@pytest.mark.parametrize("data", EDGES)
def test_edge_values_read_back_exactly(data: dict[str, Any]) -> None:
    assert answer(dumps(data, "receipt"), data, "receipt") == data


def test_empty_arrays_and_null_are_written_not_dropped() -> None:
    xml = dumps({"ignored": [], "issues": [], "pointer": None, "s": ""})
    assert b'<ignored array="empty"/>' in xml and b'<issues array="empty"/>' in xml
    assert b'<pointer xsi:nil="true"/>' in xml and b"<s></s>" in xml


def test_the_arrays_that_look_alike_are_written_apart() -> None:
    # an array property: [] and [""] and [None] and [[]] each have their own XML (and
    # a scalar property's null and "" too); a member's type is the shape's to say
    arrays = {dumps({"v": v}) for v in ([], [""], [None], [[]])}
    assert len(arrays) == 4 and dumps({"v": None}) != dumps({"v": ""})


def test_arrays_of_arrays_keep_their_structure() -> None:
    root = parse(dumps({"m": [[1, 2], []]}))
    rows = root.findall("m")
    assert [[(i.text, i.get("array")) for i in r] for r in rows] == [
        [("1", None), ("2", None)],
        [(None, "empty")],
    ]
    assert all(i.tag == "item" for r in rows for i in r)


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(9 if depth < 4 else 5)
    scalars: list[Any] = [None, True, False, 0, -7, 2.5, "", "x", 'a <&> "b"', "\u0001\\"]
    if kind < 5:
        return rng.choice(scalars)
    if kind < 7:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["a", "b", "item", "$odd key", "xmlns", "\u001b"]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_random_documents_read_back_exactly() -> None:
    rng = random.Random(12)
    for _ in range(2000):
        data = {f"p{n}": _value(rng, 0) for n in range(rng.randrange(1, 5))}
        assert answer(dumps(data), data) == data, data
