"""An item resent exactly as before skips shaping and validation (shared/bulk.py's
cache of what shaping gave): the answer is the one a fresh scan gives, per schema
version, and what was refused is refused again."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from shared import bulk
from shared.bulk import FastExtractor, load_items, scan_chunk
from shared.schema_rules import CompiledSchema, prepare_schema
from tests.helpers import employee_schema


def schema(default: str = "active") -> CompiledSchema:
    props = {
        "employeeId": {"type": "string"},
        "mail": {"type": "string", "format": "email"},
        "status": {"type": "string", "default": default},
    }
    body = employee_schema(properties=props, resmo={"id": "employeeId"})
    return CompiledSchema(prepare_schema(body))


ITEMS: list[Any] = [
    {"employeeId": "a", "mail": " A@EXAMPLE.com "},
    {"employeeId": "b", "mail": "b@example.com", "status": "gone"},
    {"employeeId": "c", "mail": "not an email"},
    {"employeeId": "d", "mail": 7},
]


def scan(s: CompiledSchema, items: list[Any]) -> tuple[Any, ...]:
    out = scan_chunk(load_items(orjson.dumps(items)), 0, FastExtractor(s))
    return out.ids, out.hashes, [(i.index, [x.code for x in i.issues]) for i in out.invalid]


def test_a_resent_item_gets_the_answer_a_fresh_scan_gives() -> None:
    s = schema()
    bulk._shaped.clear()
    first = scan(s, ITEMS)
    assert len(bulk._shaped) == 2  # the two valid items; refused ones are never kept
    assert scan(s, ITEMS) == first  # answered from the cache
    assert first[2] == [(2, ["invalid_format"]), (3, ["schema_violation"])]
    bulk._shaped.clear()
    assert scan(s, ITEMS) == first  # and exactly what shaping gives without it


def test_another_schema_version_never_uses_its_answers() -> None:
    old, new = schema("active"), schema("retired")
    bulk._shaped.clear()
    a = scan(old, ITEMS[:1])
    b = scan(new, ITEMS[:1])
    assert a[0] == b[0] and a[1] != b[1]  # the default differs, so does the hash


def test_a_changed_item_is_shaped_again() -> None:
    s = schema()
    bulk._shaped.clear()
    before = scan(s, ITEMS[:1])
    changed = copy.deepcopy(ITEMS[:1])
    changed[0]["mail"] = "z@example.com"
    assert scan(s, changed)[1] != before[1]


def test_the_cache_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(bulk, "SHAPED_CACHE_ITEMS", 3)
    s = schema()
    bulk._shaped.clear()
    items = [{"employeeId": f"e{i}", "mail": f"e{i}@x.org"} for i in range(10)]
    assert scan(s, items) == scan(s, items)
    assert len(bulk._shaped) <= 3
