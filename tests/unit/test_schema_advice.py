"""Seed 003's schema advice: accepted, with warnings."""

from __future__ import annotations

from shared.codes import Advice
from shared.schema_advice import MAX_WARNINGS, advise


def test_each_finding_is_a_warning_with_a_pointer() -> None:
    schema = {
        "type": "object",
        "properties": {
            "first_name": {"type": "string", "title": "First Name", "description": "given"},
            "meta": {"type": "object", "title": "Meta", "description": "free-form"},
            "tags": {"type": "array", "title": "Tags"},
            "address": {
                "type": "object",
                "title": "Address",
                "description": "where",
                "properties": {"city": {"type": "string"}},
            },
        },
    }
    got = [(w["code"], w["pointer"]) for w in advise(schema)]
    assert got == [
        (Advice.OBJECT_WITHOUT_PROPERTIES, "/schema/properties/meta"),
        (Advice.UNDESCRIBED_ATTRIBUTE, "/schema/properties/tags"),
        (Advice.ARRAY_WITHOUT_ITEMS, "/schema/properties/tags"),
        (Advice.UNDESCRIBED_ATTRIBUTE, "/schema/properties/address/properties/city"),
    ]
    tags = advise(schema)[1]
    assert "description" in tags["message"] and "title" not in tags["message"].split(":")[0]


def test_a_well_described_schema_has_no_warnings_and_many_are_capped() -> None:
    good = {
        "type": "object",
        "properties": {"a": {"type": "array", "title": "A", "description": "d", "items": {}}},
    }
    assert advise(good) == []
    many = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(150)}}
    out = advise(many)
    assert len(out) == MAX_WARNINGS and "50 more" in out[-1]["message"]
