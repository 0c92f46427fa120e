"""The structural diff of two schema versions (shared/schema_diff.py)."""

from __future__ import annotations

import copy
from typing import Any

from shared.schema_diff import diff, types_of
from tests.conftest import EMPLOYEE_SCHEMA


def changes(old: Any, new: Any) -> list[dict[str, Any]]:
    return [d.as_dict() for d in diff(old, new)]


def test_the_same_schema_has_no_differences() -> None:
    assert changes(EMPLOYEE_SCHEMA, copy.deepcopy(EMPLOYEE_SCHEMA)) == []


def test_annotations_are_no_difference() -> None:
    new = copy.deepcopy(EMPLOYEE_SCHEMA)
    new["title"] = "Employees"
    new["properties"]["active"]["description"] = "still employed"
    new["properties"]["active"]["examples"] = [True]
    assert changes(EMPLOYEE_SCHEMA, new) == []


def test_properties_added_removed_and_retyped_at_depth() -> None:
    new = copy.deepcopy(EMPLOYEE_SCHEMA)
    emp = new["properties"]["employee"]["properties"]
    emp["phone"] = {"type": "string", "format": "phone"}
    del emp["email"]
    emp["age"] = {"type": ["string", "integer"]}
    del new["properties"]["active"]
    assert changes(EMPLOYEE_SCHEMA, new) == [
        {"change": "property_removed", "pointer": "/properties/active", "type": ["boolean"]},
        {
            "change": "property_removed",
            "pointer": "/properties/employee/properties/email",
            "type": ["string"],
        },
        {
            "change": "property_added",
            "pointer": "/properties/employee/properties/phone",
            "type": ["string"],
        },
        {
            "change": "property_retyped",
            "pointer": "/properties/employee/properties/age",
            "before": ["integer"],
            "after": ["integer", "string"],
        },
    ]


def test_required_added_and_removed_point_at_the_keyword() -> None:
    new = copy.deepcopy(EMPLOYEE_SCHEMA)
    new["required"] = ["active"]
    new["properties"]["employee"]["required"] = ["username"]
    assert changes(EMPLOYEE_SCHEMA, new) == [
        {"change": "required_added", "pointer": "/required", "property": "active"},
        {"change": "required_removed", "pointer": "/required", "property": "employeeId"},
        {
            "change": "required_added",
            "pointer": "/properties/employee/required",
            "property": "username",
        },
    ]


def test_other_keywords_are_constraints_changed() -> None:
    new = copy.deepcopy(EMPLOYEE_SCHEMA)
    new["properties"]["employee"]["properties"]["email"]["format"] = "email"
    new["resmo"] = {"id": "employeeId"}
    assert changes(EMPLOYEE_SCHEMA, new) == [
        {"change": "constraints_changed", "pointer": "", "keywords": ["resmo"]},
        {
            "change": "constraints_changed",
            "pointer": "/properties/employee/properties/email",
            "keywords": ["format"],
        },
    ]


def test_array_items_and_definitions_are_walked() -> None:
    old = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
            "ref": {"$ref": "#/$defs/a"},
        },
        "$defs": {"a": {"type": "object", "properties": {"x": {"type": "string"}}}},
    }
    new = copy.deepcopy(old)
    new["properties"]["tags"]["items"] = {"type": "object", "properties": {"k": {}}}
    new["properties"]["pair"]["prefixItems"][1] = {"type": "number"}
    new["$defs"]["a"]["properties"]["y"] = {"type": "boolean"}
    new["properties"]["ref"]["$ref"] = "#/$defs/b"
    assert changes(old, new) == [
        {
            "change": "property_retyped",
            "pointer": "/properties/pair/prefixItems/1",
            "before": ["integer"],
            "after": ["number"],
        },
        {"change": "constraints_changed", "pointer": "/properties/ref", "keywords": ["$ref"]},
        {
            "change": "property_retyped",
            "pointer": "/properties/tags/items",
            "before": ["string"],
            "after": ["object"],
        },
        {
            "change": "property_added",
            "pointer": "/properties/tags/items/properties/k",
            "type": None,
        },
        {"change": "property_added", "pointer": "/$defs/a/properties/y", "type": ["boolean"]},
    ]


def test_pointers_escape_property_names() -> None:
    old: dict[str, Any] = {"type": "object", "properties": {}}
    new = {"type": "object", "properties": {"a/b~c": {"type": "string"}}}
    assert [d.pointer for d in diff(old, new)] == ["/properties/a~1b~0c"]


def test_boolean_schemas_and_types() -> None:
    assert [d.change for d in diff({"properties": {"a": True}}, {"properties": {"a": False}})] == [
        "constraints_changed"
    ]
    assert types_of({"type": "string"}) == ["string"]
    assert types_of({}) is None and types_of(True) is None


def test_a_deep_schema_does_not_exhaust_the_stack() -> None:
    old: dict[str, Any] = {"type": "object"}
    new: dict[str, Any] = {"type": "object"}
    a, b = old, new
    for _ in range(3000):
        a["properties"] = {"x": {"type": "object"}}
        b["properties"] = {"x": {"type": "object"}}
        a, b = a["properties"]["x"], b["properties"]["x"]
    b["properties"] = {"leaf": {"type": "string"}}
    found = diff(old, new)
    assert [d.change for d in found] == ["property_added"]
    assert found[0].pointer.endswith("/properties/x/properties/leaf")
