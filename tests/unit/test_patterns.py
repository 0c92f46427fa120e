"""Patterns are checked in linear time: what prepare_schema refuses, what still works, and
how a version stored before the rule is handled (pure; no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import SchemaRuleError
from shared.patterns import BACKTRACK_LIMIT, MAX_PATTERN_POSITIONS, pattern_positions
from shared.schema_rules import CompiledSchema, prepare_schema
from tests.helpers import employee_schema

CATASTROPHIC = "^(a+)+\\1$"  # the issue's example: ~3.5 s per check on fancy-regex
MILLION_AS = "a" * 1_000_000 + "!"


def with_props(**props: Any) -> dict[str, Any]:
    schema = employee_schema()
    schema["properties"] = {**schema["properties"], **props}
    return schema


def refused(schema: dict[str, Any]) -> SchemaRuleError:
    with pytest.raises(SchemaRuleError) as info:
        prepare_schema(schema)
    assert info.value.code == "invalid_schema"
    return info.value


@pytest.mark.parametrize(
    "pattern",
    [
        CATASTROPHIC,
        "^(?=.*[A-Z])(?=.*\\d).{8,}$",  # lookahead
        "^(?!admin$).*",  # negative lookahead
        "(?<=a)b",  # lookbehind
        "(?<!a)b",
        "^(\\w)\\1*$",  # backreference
    ],
)
def test_lookaround_and_backreferences_are_refused_naming_the_pattern(pattern: str) -> None:
    e = refused(with_props(v={"type": "string", "pattern": pattern}))
    assert e.pointer == "/schema/properties/v/pattern"
    assert repr(pattern) in e.message and "linear time" in e.message


def test_pattern_properties_keys_are_checked_with_their_pointer() -> None:
    e = refused(with_props(m={"type": "object", "patternProperties": {"^(?=x)": {}}}))
    assert e.pointer == "/schema/properties/m/patternProperties/^(?=x)"
    e = refused(with_props(m={"patternProperties": {"a/b~(?!c)": {}}}))
    assert e.pointer == "/schema/properties/m/patternProperties/a~1b~0(?!c)"


@pytest.mark.parametrize(
    ("where", "pointer"),
    [
        ({"items": {"pattern": "(?=a)"}}, "/schema/properties/v/items/pattern"),
        ({"anyOf": [{}, {"pattern": "(?=a)"}]}, "/schema/properties/v/anyOf/1/pattern"),
        ({"propertyNames": {"pattern": "(?=a)"}}, "/schema/properties/v/propertyNames/pattern"),
    ],
)
def test_patterns_anywhere_in_the_schema_are_checked(where: dict[str, Any], pointer: str) -> None:
    assert refused(with_props(v=where)).pointer == pointer


def test_unused_defs_are_checked_too() -> None:
    # jsonschema-rs itself only compiles what is referenced; a later $ref must not
    # turn a stored schema into one the linear engine cannot run
    schema = employee_schema(**{"$defs": {"x": {"pattern": "(?!a)"}}})
    assert refused(schema).pointer == "/schema/$defs/x/pattern"


@pytest.mark.parametrize("name", ["enum", "const", "pattern", "default"])
def test_a_property_named_like_a_keyword_is_still_a_schema(name: str) -> None:
    e = refused(with_props(**{name: {"type": "string", "pattern": "(?=a)"}}))
    assert e.pointer == f"/schema/properties/{name}/pattern" and "linear time" in e.message


def test_pattern_as_data_is_not_a_regex() -> None:
    schema = with_props(
        v={"const": {"pattern": "(?=a)"}, "default": {"pattern": "(?=a)"}},
        pattern={"type": "string"},  # a property named "pattern"
    )
    prepare_schema(schema)


def test_invalid_regex_is_refused() -> None:
    e = refused(with_props(v={"pattern": "(["}))
    assert e.pointer == "/schema/properties/v/pattern" and "2020-12" in e.message


@pytest.mark.parametrize(
    ("pattern", "positions"),
    [
        ("a{5000}b", 5001),
        ("(x{100}){20}", 2000),
        ("(ab|c){500}", 1500),
        ("[a-z]{1001}", 1001),
        ("a{1001,}", 1002),
    ],
)
def test_repetitions_that_unroll_too_far_are_refused(pattern: str, positions: int) -> None:
    assert pattern_positions(pattern) == positions > MAX_PATTERN_POSITIONS
    e = refused(with_props(v={"type": "string", "pattern": pattern}))
    assert str(positions) in e.message and e.pointer == "/schema/properties/v/pattern"


@pytest.mark.parametrize(
    "pattern",
    [
        "^(a+)+$",  # nested quantifiers: exponential on a backtracker, linear here
        "^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$",
        "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        "^\\+?[1-9]\\d{1,14}$",
        "^.{1,255}$",
        "^.{1,1000}$",
        "^[\\p{L} .'-]{1,100}$",
        "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        "^(0|[1-9]\\d*)\\.(0|[1-9]\\d*)\\.(0|[1-9]\\d*)(?:-[0-9A-Za-z.-]+)?$",
        "(?i)^abc$",
        "\\x{41}{3}",
    ],
)
def test_common_patterns_are_accepted(pattern: str) -> None:
    prepare_schema(with_props(v={"type": "string", "pattern": pattern}))


def test_password_rule_rewritten_without_lookahead_checks_the_same() -> None:
    # the README's rewrite of ^(?=.*[A-Z])(?=.*\d).{8,}$
    rule = {"allOf": [{"pattern": "[A-Z]"}, {"pattern": "\\d"}], "minLength": 8}
    c = CompiledSchema(prepare_schema(with_props(pw={"type": "string", **rule})))
    assert [c.is_valid({"employeeId": "e", "pw": pw}) for pw in ("Passw0rd", "password")] == [
        True,
        False,
    ]
    assert not c.is_valid({"employeeId": "e", "pw": "Pa0"})


def test_nested_quantifiers_are_linear_on_a_million_characters() -> None:
    c = CompiledSchema(prepare_schema(with_props(v={"type": "string", "pattern": "^(a+)+$"})))
    issues = c.validate({"employeeId": "e", "v": MILLION_AS})
    assert [(i.code, i.pointer) for i in issues] == [("schema_violation", "/v")]


@pytest.mark.parametrize(
    ("pattern", "positions"),
    [
        ("^.{1,255}$", 255),
        ("[]a]{10}", 10),
        ("(?P<n>ab){2}", 4),
        ("(?:a){500}", 500),
        ("\\p{L}{3}", 3),
        ("^(?=.*[A-Z]).{8,}$", 11),
    ],
)
def test_pattern_positions(pattern: str, positions: int) -> None:
    assert pattern_positions(pattern) == positions


# ---- versions stored before the rule -----------------------------------------------------


def legacy(pattern: str) -> CompiledSchema:
    """A stored body that prepare_schema would refuse today (no prepare_schema here)."""
    body = with_props(v={"type": "string", "pattern": pattern})
    body["unevaluatedProperties"] = False
    return CompiledSchema(body)


def test_a_stored_version_with_lookahead_still_validates() -> None:
    c = legacy("^(?=.*[A-Z])(?=.*\\d).{8,}$")
    assert c.backtracking
    assert c.validate({"employeeId": "e", "v": "Passw0rd"}) == []
    assert [i.code for i in c.validate({"employeeId": "e", "v": "password"})] == [
        "schema_violation"
    ]


def test_a_stored_catastrophic_pattern_rejects_the_value_as_too_costly() -> None:
    c = legacy(CATASTROPHIC)
    assert not c.is_valid({"employeeId": "e", "v": MILLION_AS})  # bounded: no 3.5 s hang
    (issue,) = c.validate({"employeeId": "e", "v": MILLION_AS})
    assert (issue.code, issue.pointer) == ("pattern_too_costly", "/v")
    assert "/properties/v/pattern" in issue.message and str(BACKTRACK_LIMIT) in issue.message
    # a short value is still decided normally
    assert [i.code for i in c.validate({"employeeId": "e", "v": "aa!"})] == ["schema_violation"]


def test_new_versions_never_use_the_backtracking_engine() -> None:
    assert not CompiledSchema(prepare_schema(with_props(v={"pattern": "^a+$"}))).backtracking
