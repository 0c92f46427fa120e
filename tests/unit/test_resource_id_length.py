"""A resource id is at most MAX_ID_LENGTH characters: longer ones are ``invalid_id`` in
single events and bulk items alike, so no id can exceed PostgreSQL's index row (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.bulk import FastExtractor, scan_chunk, scan_item
from shared.processing import prepare_item
from shared.schema_rules import MAX_ID_LENGTH, CompiledSchema, prepare_schema
from tests.conftest import EMPLOYEE_SCHEMA
from tests.helpers import employee_schema

FLAT = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
NESTED = CompiledSchema(
    prepare_schema(
        employee_schema(
            properties={"meta": {"type": "object"}}, required=None, resmo={"id": "$.meta.id"}
        )
    )
)
BRACKET = CompiledSchema(  # the same id in bracket notation
    prepare_schema(employee_schema(required=None, resmo={"id": "$['employeeId']"}))
)
LONGEST = "\U0001f600" * MAX_ID_LENGTH  # 4 bytes of UTF-8 each: the worst case


def doc(schema: CompiledSchema, rid: Any) -> dict[str, Any]:
    return {"meta": {"id": rid}} if schema is NESTED else {"employeeId": rid}


def test_the_bound_keeps_the_key_under_the_btree_row_limit() -> None:
    # resource type <= 65 ASCII, groupKey <= 100 characters, headers: see the README
    worst = 65 + 100 * 4 + MAX_ID_LENGTH * 4
    assert worst + 64 < 2704


@pytest.mark.parametrize("schema", [FLAT, NESTED, BRACKET], ids=["flat", "nested", "bracket"])
def test_an_id_of_the_maximum_length_is_accepted(schema: CompiledSchema) -> None:
    ex = schema.extract(doc(schema, LONGEST))
    assert not hasattr(ex, "code") and ex.id == LONGEST  # type: ignore[union-attr]
    s = scan_item(doc(schema, LONGEST), 0, FastExtractor(schema))
    assert (s.rid, s.issues) == (LONGEST, [])


@pytest.mark.parametrize("schema", [FLAT, NESTED, BRACKET], ids=["flat", "nested", "bracket"])
def test_a_longer_id_is_invalid_in_single_events(schema: CompiledSchema) -> None:
    prep = prepare_item(doc(schema, "x" * (MAX_ID_LENGTH + 1)), schema)
    assert prep.extracted is None
    (issue,) = prep.issues
    assert issue.code == "invalid_id"
    assert issue.pointer == ("/meta/id" if schema is NESTED else "/employeeId")
    assert f"at most {MAX_ID_LENGTH}" in issue.message and str(MAX_ID_LENGTH + 1) in issue.message


@pytest.mark.parametrize("schema", [FLAT, NESTED, BRACKET], ids=["flat", "nested", "bracket"])
def test_a_longer_id_is_invalid_in_bulk_items(schema: CompiledSchema) -> None:
    items = [doc(schema, "ok"), doc(schema, "x" * 3000), doc(schema, LONGEST + "!")]
    chunk = scan_chunk(items, 10, FastExtractor(schema))
    assert chunk.ids == [b"ok"]
    assert [(s.index, s.rid, [i.code for i in s.issues]) for s in chunk.invalid] == [
        (11, None, ["invalid_id"]),
        (12, None, ["invalid_id"]),
    ]


def test_integer_ids_are_unaffected() -> None:
    assert FLAT.extract({"employeeId": 2**63}).id == str(2**63)  # type: ignore[union-attr]
