"""Seed 000's schema rules, as pure functions (no I/O): each rule accepted and refused."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import SchemaRuleError
from shared.schema_rules import (
    CompiledSchema,
    Extracted,
    Issue,
    check_identifier,
    content_hash,
    normalise_path,
    prepare_schema,
)
from tests.conftest import EMPLOYEE_SCHEMA
from tests.helpers import employee_schema


def refused(body: Any) -> SchemaRuleError:
    with pytest.raises(SchemaRuleError) as info:
        prepare_schema(body)
    assert info.value.status == 400
    assert info.value.message
    return info.value


# ---- accepted ---------------------------------------------------------------------------


def test_seed_schema_is_accepted_and_closed_at_the_root() -> None:
    stored = prepare_schema(EMPLOYEE_SCHEMA)
    assert stored["unevaluatedProperties"] is False
    assert stored["resmo"] == EMPLOYEE_SCHEMA["resmo"]
    assert "unevaluatedProperties" not in EMPLOYEE_SCHEMA  # the input is not mutated


@pytest.mark.parametrize(
    "dialect",
    [
        None,
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2020-12/schema#",
    ],
)
def test_absent_or_2020_12_dialect_is_accepted(dialect: str | None) -> None:
    assert prepare_schema(employee_schema(**{"$schema": dialect}))["type"] == "object"


def test_resmo_is_an_annotation_not_a_validation_error() -> None:
    c = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
    assert c.validate({"employeeId": "e1"}) == []


def test_unknown_property_is_refused_by_the_stored_schema() -> None:
    c = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
    issues = c.validate({"employeeId": "e1", "surprise": 1})
    assert [i.code for i in issues] == ["unknown_field"]
    assert issues[0].pointer == "/surprise"


def test_wildcard_important_fields_are_accepted_and_extract_lists() -> None:
    body = employee_schema(
        properties={"id": {"type": "string"}, "tags": {"type": "array"}, "a": {}},
        required=None,
        resmo={"id": "id", "importantFields": ["$.tags[*]", "$..x", "a"]},
    )
    c = CompiledSchema(prepare_schema(body))
    out = c.extract({"id": "r1", "tags": ["t1", "t2"], "a": {"x": 1}})
    assert isinstance(out, Extracted)
    assert out.important == {"$.tags[*]": ["t1", "t2"], "$..x": [1], "a": {"x": 1}}


def test_bare_path_means_root_member() -> None:
    assert normalise_path("employeeId") == "$.employeeId"
    assert normalise_path("employee.username") == "$.employee.username"
    assert normalise_path("['a b']") == "$['a b']"
    assert normalise_path("$.x") == "$.x"
    c = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
    out = c.extract({"employeeId": "e7", "active": True, "employee": {"username": "jdoe"}})
    assert isinstance(out, Extracted)
    assert (out.id, out.name) == ("e7", "jdoe")
    assert out.important == {"employeeId": "e7", "active": True}


def test_extract_reports_a_missing_or_unusable_id() -> None:
    c = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
    assert isinstance(c.extract({"active": True}), Issue)
    bad = c.extract({"employeeId": True})
    assert isinstance(bad, Issue) and bad.code == "invalid_id"
    numeric = c.extract({"employeeId": 42})
    assert isinstance(numeric, Extracted) and numeric.id == "42"


def test_content_hash_ignores_key_order() -> None:
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


# ---- refused, one per rule ----------------------------------------------------------------


@pytest.mark.parametrize("body", [None, [], "object", 1, {}])
def test_non_object_or_empty_schema_is_refused(body: Any) -> None:
    e = refused(body)
    assert (e.code, e.pointer) == ("schema_not_object", "/schema")


@pytest.mark.parametrize("root_type", [None, "array", ["object"], "string"])
def test_root_type_must_be_object(root_type: Any) -> None:
    e = refused(employee_schema(type=root_type))
    assert (e.code, e.pointer) == ("schema_root_not_object", "/schema/type")


@pytest.mark.parametrize(
    "dialect",
    [
        "http://json-schema.org/draft-07/schema#",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-04/schema#",
        7,
        ["https://json-schema.org/draft/2020-12/schema"],
    ],
)
def test_other_drafts_are_refused(dialect: Any) -> None:
    e = refused(employee_schema(**{"$schema": dialect}))
    assert (e.code, e.pointer) == ("unsupported_draft", "/schema/$schema")
    assert "2020-12" in e.message


@pytest.mark.parametrize(
    ("properties", "pointer"),
    [
        ({"a": {"type": "no-such-type"}}, "/schema/properties/a/type"),
        ({"a": {"pattern": "(["}}, "/schema/properties/a/pattern"),
        ({"a": {"minLength": -1}}, "/schema/properties/a/minLength"),
        ({"a": {"$ref": "#/$defs/missing"}}, "/schema"),
    ],
)
def test_schema_that_does_not_compile_is_refused(properties: Any, pointer: str) -> None:
    e = refused(employee_schema(properties=properties))
    assert (e.code, e.pointer) == ("invalid_schema", pointer)
    assert "2020-12" in e.message


def test_remote_ref_is_refused_without_fetching_it() -> None:
    # the registry compiles offline: an admin-supplied URL is never fetched
    e = refused(employee_schema(properties={"a": {"$ref": "http://127.0.0.1:9/remote.json"}}))
    assert e.code == "invalid_schema"
    assert "127.0.0.1:9/remote.json" in e.message


@pytest.mark.parametrize("resmo", [None, "employeeId", ["employeeId"]])
def test_missing_resmo_is_refused(resmo: Any) -> None:
    e = refused(employee_schema(resmo=resmo))
    assert (e.code, e.pointer) == ("missing_resmo", "/schema/resmo")


def test_missing_resmo_id_is_refused() -> None:
    e = refused(employee_schema(resmo={"name": "$.employee.username"}))
    assert (e.code, e.pointer) == ("missing_resmo_id", "/schema/resmo/id")


@pytest.mark.parametrize("value", ["", "   ", 5, None])
def test_empty_or_non_string_resmo_id_is_refused(value: Any) -> None:
    e = refused(employee_schema(resmo={"id": value}))
    assert (e.code, e.pointer) == ("invalid_resmo_path", "/schema/resmo/id")


def test_unknown_resmo_key_is_refused() -> None:
    e = refused(employee_schema(resmo={"id": "employeeId", "idd": "x"}))
    assert e.code == "invalid_resmo"


@pytest.mark.parametrize(
    ("resmo", "pointer"),
    [
        ({"id": "$.a["}, "/schema/resmo/id"),
        ({"id": "employeeId", "name": "$[?"}, "/schema/resmo/name"),
        (
            {"id": "employeeId", "importantFields": ["active", "$.a[1:"]},
            "/schema/resmo/importantFields/1",
        ),
        ({"id": "$.a | $.b"}, "/schema/resmo/id"),
    ],
)
def test_unparseable_jsonpath_is_refused(resmo: Any, pointer: str) -> None:
    e = refused(employee_schema(resmo=resmo))
    assert (e.code, e.pointer) == ("invalid_resmo_path", pointer)


def test_important_fields_must_be_a_list() -> None:
    e = refused(employee_schema(resmo={"id": "employeeId", "importantFields": "active"}))
    assert (e.code, e.pointer) == ("invalid_resmo_path", "/schema/resmo/importantFields")


@pytest.mark.parametrize("path", ["$.a[*]", "$..a", "$.a[0:2]", "$.a[?@.b == 1]", "$.*"])
@pytest.mark.parametrize("field", ["id", "name"])
def test_id_and_name_must_be_singular(field: str, path: str) -> None:
    resmo = {"id": "employeeId", field: path}
    e = refused(employee_schema(resmo=resmo))
    assert (e.code, e.pointer) == ("resmo_path_not_singular", f"/schema/resmo/{field}")


@pytest.mark.parametrize("path", ["$.a[0]", "$['a']['b']", "a.b", "$.a[-1]"])
def test_singular_paths_are_accepted_for_id(path: str) -> None:
    assert prepare_schema(employee_schema(resmo={"id": path}))["resmo"]["id"] == path


# ---- identifiers ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["employee", "_directory", "a", "a1_b2", "_" + "a" * 31])
def test_safe_identifiers_are_accepted(value: str) -> None:
    assert check_identifier(value, "table") == value


@pytest.mark.parametrize(
    "value",
    ["", "Employee", "1abc", "a-b", "a b", "__a", "_" + "a" * 32, "employee\n", None, 3],
)
def test_unsafe_identifiers_are_refused(value: Any) -> None:
    with pytest.raises(SchemaRuleError) as info:
        check_identifier(value, "table")
    assert (info.value.code, info.value.pointer) == ("invalid_table", "/table")
