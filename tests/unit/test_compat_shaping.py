"""The compatibility check shapes a stored resource as the worker would before judging it."""

from __future__ import annotations

from shared.compat import refusal
from shared.schema_rules import CompiledSchema


def schema(**props: object) -> CompiledSchema:
    return CompiledSchema(
        {
            "type": "object",
            "properties": {"id": {"type": "string"}, **props},
            "required": ["id", *props],
            "resmo": {"id": "$.id"},
        }
    )


def test_a_new_required_property_with_a_default_refuses_nothing() -> None:
    stored = {"id": "a"}
    assert refusal(schema(level={"type": "integer", "default": 1}), "a", stored) == []
    assert stored == {"id": "a"}  # the stored value is judged on a copy
    assert [i.code for i in refusal(schema(level={"type": "integer"}), "a", stored)] == [
        "missing_field"
    ]


def test_a_value_that_cannot_be_normalised_is_refused_as_invalid_format() -> None:
    got = refusal(schema(mail={"type": "string", "format": "email"}), "a",
                  {"id": "a", "mail": "not-an-email"})  # fmt: skip
    assert [(i.code, i.pointer) for i in got] == [("invalid_format", "/mail")]


def test_a_stored_local_field_is_not_refused() -> None:
    local = {"type": "string", "x-ownership": "local"}
    compiled = CompiledSchema(
        {
            "type": "object",
            "properties": {"id": {"type": "string"}, "note": local},
            "required": ["id"],
            "resmo": {"id": "$.id"},
        }
    )
    assert refusal(compiled, "a", {"id": "a", "note": "kept by a user"}) == []
    assert [i.code for i in refusal(compiled, "a", {"id": "a", "note": 5})] == ["schema_violation"]
