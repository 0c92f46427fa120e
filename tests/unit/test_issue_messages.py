"""Messages and pointers read well and follow one rule (pure).

The rule (README, "Codes in receipts"): an issue about a place in a resource has a string
pointer: the value at fault, or for something missing, the object it is missing from
(``""`` is the resource itself); for U+0000, the string holding it (for a key, the object
holding the key). Only issues about no place in a resource have ``null``."""

from __future__ import annotations

from typing import Any

import pytest

from shared.bulk import diff_snapshot
from shared.errors import SchemaRuleError
from shared.events import RawMeta
from shared.processing import prepare_item
from shared.schema_rules import CompiledSchema, check_identifier, prepare_schema
from tests.conftest import EMPLOYEE_SCHEMA
from tests.helpers import employee_schema

EMPLOYEES = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
META = RawMeta("ev_1", "bulk", "i", "employee", "_d_employee", "", "sync", "hr", 0)


def issues(doc: Any, schema: CompiledSchema = EMPLOYEES) -> list[tuple[str, Any]]:
    return [(i.code, i.pointer) for i in prepare_item(doc, schema).issues]


@pytest.mark.parametrize("field", ["prefix", "table"])
def test_a_missing_identifier_says_it_is_missing(field: Any) -> None:
    with pytest.raises(SchemaRuleError) as e:
        check_identifier(None, field)
    assert "None" not in e.value.message and e.value.message.startswith(f"{field} is missing")
    assert e.value.pointer == f"/{field}"


def test_a_wrong_identifier_is_shown_as_json() -> None:
    with pytest.raises(SchemaRuleError) as e:
        check_identifier("Bad Name", "prefix")
    assert '"Bad Name" does not' in e.value.message


def test_a_format_failure_reads_well() -> None:
    props = {**EMPLOYEE_SCHEMA["properties"], "mail": {"type": "string", "format": "email"},
             "at": {"format": "date-time"}}  # fmt: skip
    schema = CompiledSchema(prepare_schema(employee_schema(properties=props)))
    out = prepare_item({"employeeId": "a", "mail": "not-an-email", "at": "x"}, schema).issues
    assert {(i.code, i.pointer, i.message) for i in out} == {
        ("invalid_format", "/mail",
         '"not-an-email" is not a valid email: An email address must have an @-sign.'),
        ("invalid_format", "/at",
         '"x" is not a valid date-time: expected a date-time such as 2000-01-01T00:00:00Z'),
    }  # fmt: skip
    # with normalisation off, JSON Schema's own format assertion says it
    body = employee_schema(properties=props)
    body["resmo"] = {**body["resmo"], "normalize": False}
    plain = CompiledSchema(prepare_schema(body))
    out = prepare_item({"employeeId": "a", "mail": "x"}, plain).issues
    assert [(i.code, i.message) for i in out] == [("schema_violation", '"x" is not a valid email')]


def test_missing_id_points_where_missing_field_points() -> None:
    assert issues({"active": True}) == [("missing_id", ""), ("missing_field", "")]


def test_a_missing_nested_id_points_at_the_deepest_object_there_is() -> None:
    schema = employee_schema(required=None, resmo={"id": "$.employee.username"})
    c = CompiledSchema(prepare_schema(schema))
    assert issues({"employee": {"age": 3}}, c) == [("missing_id", "/employee")]
    assert issues({"active": True}, c) == [("missing_id", "")]


@pytest.mark.parametrize(
    ("doc", "at"),
    [
        ({"employeeId": "a", "employee": {"username": "a\x00b"}}, "/employee/username"),
        ({"employeeId": "a\x00"}, "/employeeId"),
        ({"employeeId": "a", "employee": {"email": "ok", "x\x00": 1}}, "/employee"),
    ],
)
def test_nul_points_at_the_field(doc: dict[str, Any], at: str) -> None:
    schema = CompiledSchema(prepare_schema(employee_schema(unevaluatedProperties=None)))
    assert issues(doc, schema) == [("invalid_character", at)]


def test_nul_inside_an_array_points_at_the_member() -> None:
    props = {**EMPLOYEE_SCHEMA["properties"], "tags": {"type": "array"}}
    c = CompiledSchema(prepare_schema(employee_schema(properties=props)))
    assert issues({"employeeId": "a", "tags": ["ok", "n\x00"]}, c) == [
        ("invalid_character", "/tags/1")
    ]


def test_bulk_issues_about_a_resource_have_string_pointers() -> None:
    items = [{"active": True}, {"employeeId": "a", "x": 1}, {"employeeId": "a"}, "no"]
    change, _ = diff_snapshot(META, items, EMPLOYEES, {})
    codes = {i["code"] for i in change.issues}
    assert {"missing_id", "unknown_field", "duplicate_id", "not_an_object"} <= codes
    assert all(isinstance(i["pointer"], str) for i in change.issues), change.issues
