"""Issue 14: format normalisation, defaults, skip-on-missing-required, resmo settings."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shared import formats
from shared.bulk import FastExtractor, diff_snapshot, scan_item
from shared.errors import SchemaRuleError
from shared.events import RawMeta
from shared.processing import ScopeState, decide_single, prepare_item
from shared.schema_rules import CompiledSchema, prepare_schema
from tests.helpers import employee_schema

META = RawMeta("ev_1", "bulk", "i", "employee", "_directory_employee", "", None, None, 0)

ACCEPTED: dict[str, list[tuple[Any, Any]]] = {
    "email": [
        (" User1@EXAMPLE.com ", "User1@example.com"),
        ("a@BÜCHER.DE", "a@bücher.de"),
        ("a@xn--bcher-kva.de", "a@bücher.de"),
        ("Ünï@x.com", "Ünï@x.com"),
    ],
    "uri": [
        (
            "HTTP://Example.COM:80/a/../b/%7euser/x y?q=a b#F",
            "http://example.com/b/~user/x%20y?q=a%20b#F",
        ),
        ("https://EXAMPLE.com:443/a/./b/../c", "https://example.com/a/c"),
        ("http://a.com/%c3%a9", "http://a.com/%C3%A9"),
        ("mailto:A@B.com", "mailto:A@B.com"),
        ("https://endgrate.com", "https://endgrate.com"),
    ],
    "date": [
        ("2000-01-01", "2000-01-01"),
        ("2000-1-1", "2000-01-01"),
        ("01/02/2000", "2000-02-01"),  # resmo.dateOrder DMY
        ("2000-01-01T23:30:00-02:00", "2000-01-02"),  # its UTC date
        ("2000-01-01 00:00:00", "2000-01-01"),
    ],
    "time": [
        ("00:00", "00:00:00"),
        ("00:00:00", "00:00:00"),
        ("12:30:15.123", "12:30:15"),
        ("23:30:00-02:00", "01:30:00"),
        ("01:00+01:00", "00:00:00"),
        ("10:00Z", "10:00:00"),
    ],
    "date-time": [
        ("2000-01-01T00:00:00Z", "2000-01-01 00:00:00"),
        ("2000-01-01 00:00:00", "2000-01-01 00:00:00"),
        ("2000-01-01T01:00:00+01:00", "2000-01-01 00:00:00"),
        ("1999-12-31T19:00:00.123-05:00", "2000-01-01 00:00:00"),
        ("2000-01-01t00:00:00z", "2000-01-01 00:00:00"),
        ("2000-01-01T00:00+0000", "2000-01-01 00:00:00"),
        (946684800, "2000-01-01 00:00:00"),  # epoch seconds
        (946684800000, "2000-01-01 00:00:00"),  # epoch milliseconds
        (946684800.9, "2000-01-01 00:00:00"),
    ],
    "phone": [
        ("(555) 123-4567", "+15551234567"),  # resmo.defaultRegion US
        ("+1 555 123 4567", "+15551234567"),
        ("+15551234567", "+15551234567"),
        ("+31 (0)20-123 4567", "+31201234567"),
    ],
}
REFUSED: dict[str, list[Any]] = {
    "email": ["not-an-email", "a@localhost", "a@example.test", "a b@example.com", "@x.com"],
    "uri": ["foo", "/relative/path", "http://exa mple.com/", "1http://a", "http://a:99999/"],
    "date": ["2000-02-30", "x", "2000-13-01", "1/2/00", "20000101"],
    "time": ["24:00", "1:5", "12:60", "noon", "10:00+25:00"],
    "date-time": ["x", "2000-01-01", "2000-02-30T00:00:00Z", 1e30, "2000-01-01T00:00:00+99:00"],
    "phone": ["12", "call me", "+999 1234 5678"],
}
OPTIONS = formats.Options(default_region="US", date_order="DMY")


@pytest.mark.parametrize(
    ("fmt", "value", "canonical"), [(f, v, c) for f, cases in ACCEPTED.items() for v, c in cases]
)
def test_accepted_forms_normalise_to_the_canonical_one(
    fmt: str, value: Any, canonical: Any
) -> None:
    normalise = formats.normaliser(fmt, OPTIONS)
    assert normalise(value) == canonical
    assert normalise(canonical) == canonical  # idempotent


@pytest.mark.parametrize(("fmt", "value"), [(f, v) for f, vs in REFUSED.items() for v in vs])
def test_bad_values_are_refused(fmt: str, value: Any) -> None:
    with pytest.raises(formats.NotNormalisable):
        formats.normaliser(fmt, OPTIONS)(value)


def test_without_a_date_order_or_region_ambiguous_forms_are_refused() -> None:
    none = formats.Options()
    with pytest.raises(formats.NotNormalisable, match="dateOrder"):
        formats.normaliser("date", none)("01/02/2000")
    with pytest.raises(formats.NotNormalisable, match="defaultRegion"):
        formats.normaliser("phone", none)("(555) 123-4567")
    assert formats.normaliser("phone", none)("+1 555 123 4567") == "+15551234567"
    mdy = formats.Options(date_order="MDY")
    assert formats.normaliser("date", mdy)("01/02/2000") == "2000-01-02"
    ymd = formats.Options(date_order="YMD")
    assert formats.normaliser("date", ymd)("2000/01/02") == "2000-01-02"


def test_email_fast_path_agrees_with_email_validator() -> None:
    import email_validator

    for s in ["a.b+c@Example.COM", "x@sub.EXAMPLE.org", "o'neil@x.io", "a..b@x.com", "a@-x.com"]:
        try:
            want: Any = email_validator.validate_email(s, check_deliverability=False).normalized
        except email_validator.EmailNotValidError:
            want = formats.NotNormalisable
        if want is formats.NotNormalisable:
            with pytest.raises(formats.NotNormalisable):
                formats.normalise_email(s)
        else:
            assert formats.normalise_email(s) == want


def shaped_schema(**resmo: Any) -> CompiledSchema:
    props = {
        "employeeId": {"type": "string"},
        "mail": {"type": "string", "format": "email"},
        "born": {"type": "string", "format": "date"},
        "seen": {"type": "string", "format": "date-time"},
        "tags": {"type": "array", "items": {"type": "string", "format": "uri"}},
        "employee": {
            "type": "object",
            "properties": {
                "phone": {"type": "string", "format": "phone"},
                "level": {"type": "integer", "default": 1},
                "address": {
                    "type": "object",
                    "properties": {"country": {"type": "string", "default": "NL"}},
                },
            },
        },
        "status": {"type": "string", "default": "active", "enum": ["active", "gone"]},
        "shirt_size": {
            "type": "string",
            "oneOf": [{"const": "S", "title": "Small"}, {"const": "L", "title": "Large"}],
        },
    }
    body = employee_schema(properties=props, resmo={"id": "employeeId", **resmo})
    return CompiledSchema(prepare_schema(body))


def test_a_record_is_shaped_before_it_is_validated_and_hashed() -> None:
    schema = shaped_schema(defaultRegion="US")
    raw = {
        "employeeId": "e1",
        "mail": " A@X.COM ",
        "born": "2000-1-1",
        "seen": "2000-01-01T01:00:00+01:00",
        "tags": ["HTTPS://X.COM:443/a/../b"],
        "employee": {"phone": "(555) 123-4567", "address": {}},
    }
    prep = prepare_item(copy.deepcopy(raw), schema)
    assert prep.issues == []
    assert prep.data == {
        "employeeId": "e1",
        "mail": "A@x.com",
        "born": "2000-01-01",
        "seen": "2000-01-01 00:00:00",
        "tags": ["https://x.com/b"],
        "employee": {"phone": "+15551234567", "level": 1, "address": {"country": "NL"}},
        "status": "active",
    }
    # the canonical form is not refused by JSON Schema's own format assertion
    again = prepare_item(copy.deepcopy(prep.data), schema)
    assert again.issues == [] and again.extracted and prep.extracted
    assert again.extracted.content_hash == prep.extracted.content_hash


def test_defaults_go_only_into_objects_that_are_present() -> None:
    schema = shaped_schema()
    data: dict[str, Any] = {"employeeId": "e1"}
    assert schema.shape(data) == []
    assert data == {"employeeId": "e1", "status": "active"}  # no employee object invented
    data = {"employeeId": "e1", "employee": {"level": 3}, "status": "gone"}
    schema.shape(data)
    assert data == {"employeeId": "e1", "employee": {"level": 3}, "status": "gone"}


def test_a_default_container_is_never_shared_between_records() -> None:
    props = {"employeeId": {"type": "string"}, "tags": {"type": "array", "default": []}}
    schema = CompiledSchema(prepare_schema(employee_schema(properties=props)))
    a: dict[str, Any] = {"employeeId": "a"}
    b: dict[str, Any] = {"employeeId": "b"}
    schema.shape(a)
    schema.shape(b)
    a["tags"].append("x")
    assert b["tags"] == [] and schema.body["properties"]["tags"]["default"] == []


def test_a_value_that_cannot_be_normalised_is_invalid_format_with_its_pointer() -> None:
    schema = shaped_schema()
    raw = {"employeeId": "e1", "tags": ["ok:x", "nope"], "employee": {"phone": "12345"}}
    issues = prepare_item(raw, schema).issues
    got = {(i.code, i.pointer) for i in issues}
    assert got == {("invalid_format", "/tags/1"), ("invalid_format", "/employee/phone")}
    assert all("uri" in i.message or "phone" in i.message for i in issues)
    assert all(i.resource_id == "e1" for i in issues)


def test_normalize_false_stores_values_as_sent_and_json_schema_checks_formats() -> None:
    schema = shaped_schema(normalize=False)
    prep = prepare_item({"employeeId": "e1", "mail": " A@X.COM "}, schema)
    assert [i.code for i in prep.issues] == ["schema_violation"]
    prep = prepare_item({"employeeId": "e1", "mail": "A@X.COM", "born": "2000-01-01"}, schema)
    assert prep.issues == [] and prep.data["mail"] == "A@X.COM"


def test_enums_store_the_const_and_a_title_is_not_a_value() -> None:
    schema = shaped_schema()
    assert prepare_item({"employeeId": "e1", "shirt_size": "S"}, schema).issues == []
    bad = prepare_item({"employeeId": "e1", "shirt_size": "Small"}, schema).issues
    assert [(i.code, i.pointer) for i in bad] == [("schema_violation", "/shirt_size")]
    bad = prepare_item({"employeeId": "e1", "status": "retired"}, schema).issues
    assert [(i.code, i.pointer) for i in bad] == [("schema_violation", "/status")]


def required_schema(mode: str | None) -> CompiledSchema:
    props = {
        "employeeId": {"type": "string"},
        "name": {"type": "string"},
        "my_object": {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
            "required": ["a"],
        },
    }
    resmo: dict[str, Any] = {"id": "employeeId"}
    if mode is not None:
        resmo["onMissingRequired"] = mode
    body = employee_schema(properties=props, required=["employeeId", "name"], resmo=resmo)
    return CompiledSchema(prepare_schema(body))


def test_skip_leaves_out_a_record_missing_a_required_property_at_any_depth() -> None:
    schema = required_schema("skip")
    meta = RawMeta("ev_2", "single", "i", "employee", "_directory_employee", "", None, None, 0)
    prep = prepare_item({"employeeId": "e1", "name": "n", "my_object": {"b": "x"}}, schema)
    assert prep.skipped
    assert [(i.code, i.pointer, i.resource_id) for i in prep.issues] == [
        ("skipped_missing_required", "/my_object/a", "e1")
    ]
    change = decide_single(meta, prep, ScopeState())
    assert change.status == "applied" and change.effects == []
    assert change.counts()["skipped"] == 1 and change.counts()["rejected"] == 0
    # the default mode rejects it, as before
    prep = prepare_item({"employeeId": "e1", "name": "n", "my_object": {"b": "x"}},
                        required_schema(None))  # fmt: skip
    assert not prep.skipped and [i.code for i in prep.issues] == ["missing_field"]


def test_a_snapshot_with_skipped_records_applies_the_rest_and_keeps_theirs() -> None:
    schema = required_schema("skip")
    full = {"employeeId": "a", "name": "A"}
    current = {"a": ("h", 1), "b": ("h", 1), "c": ("h", 1)}
    items = [full, {"employeeId": "b"}, {"employeeId": "d", "name": "D"}]
    change, updates = diff_snapshot(META, items, schema, current)
    assert change.status == "applied"
    counts = change.counts()
    assert (counts["skipped"], counts["rejected"], counts["deleted"]) == (1, 0, 1)
    assert sorted(e.resource_id for e in change.effects if e.op == "deleted") == ["c"]
    assert "b" not in updates  # the skipped record's resource is kept as it is
    assert [i["code"] for i in change.issues] == ["skipped_missing_required"]
    assert change.issues[0]["index"] == 1 and change.issues[0]["resourceId"] == "b"
    # a skipped record without an id might be any resource: nothing is deleted
    change, _ = diff_snapshot(META, [full, {"name": "x"}], schema, current)
    assert change.status == "applied" and change.counts()["deleted"] == 0
    assert [i["code"] for i in change.issues] == ["skipped_missing_required", "deletions_skipped"]
    # reject mode: the same snapshot is rejected whole
    change, _ = diff_snapshot(META, items, required_schema(None), current)
    assert change.status == "rejected"


def test_a_normalised_id_is_the_id() -> None:
    props = {"mail": {"type": "string", "format": "email"}}
    body = employee_schema(properties=props, required=["mail"], resmo={"id": "mail"})
    schema = CompiledSchema(prepare_schema(body))
    item = scan_item({"mail": " Ann@EXAMPLE.com"}, 0, FastExtractor(schema))
    assert item.rid == "Ann@example.com" and item.issues == []


@pytest.mark.parametrize(
    ("resmo", "at"),
    [
        ({"normalize": "yes"}, "/schema/resmo/normalize"),
        ({"defaultRegion": "XX"}, "/schema/resmo/defaultRegion"),
        ({"defaultRegion": "us"}, "/schema/resmo/defaultRegion"),
        ({"dateOrder": "DDMMYY"}, "/schema/resmo/dateOrder"),
        ({"onMissingRequired": "drop"}, "/schema/resmo/onMissingRequired"),
    ],
)
def test_shaping_settings_are_checked_at_create(resmo: dict[str, Any], at: str) -> None:
    with pytest.raises(SchemaRuleError) as e:
        prepare_schema(employee_schema(resmo={"id": "employeeId", **resmo}))
    assert (e.value.code, e.value.pointer) == ("invalid_resmo", at)


def test_with_defaults_reports_where_it_filled_and_leaves_the_row() -> None:
    schema = shaped_schema()
    stored = {"employeeId": "e1", "employee": {"address": {}}, "tags": []}
    data, applied = schema.plan.with_defaults(stored)
    assert applied == ["/status", "/employee/level", "/employee/address/country"]
    assert data["employee"] == {"address": {"country": "NL"}, "level": 1}
    assert stored == {"employeeId": "e1", "employee": {"address": {}}, "tags": []}
    assert schema.plan.with_defaults(data) == (data, [])


def test_uri_fast_path_is_exactly_what_the_full_normaliser_leaves_unchanged() -> None:
    import random

    import yarl

    rng = random.Random(7)
    chars = "abcAZ09-_~!$&'()*+,;=:@/?.#"
    matched = 0
    for _ in range(50_000):
        host = rng.choice(["a.com", "x-y.example.org", "b"])
        tail = "".join(rng.choice(chars) for _ in range(rng.randint(0, 8)))
        s = f"http{rng.choice(['', 's'])}://{host}{rng.choice(['', '/', '/p'])}{tail}"
        if formats._CANONICAL_URI.fullmatch(s):
            matched += 1
            assert str(yarl.URL(s)) == s, s
    assert matched > 10_000


def test_utc_date_times_without_a_fraction_take_the_short_path_and_stay_strict() -> None:
    from shared.formats import NotNormalisable, normalise_date_time

    assert normalise_date_time("2024-05-01T10:20:30Z") == "2024-05-01 10:20:30"
    assert normalise_date_time("2024-05-01t10:20:30z") == "2024-05-01 10:20:30"
    for bad in ("2024-13-01T10:20:30Z", "2024-05-01T10:20.30Z", "2024/05/01T10:20:30Z"):
        with pytest.raises(NotNormalisable):
            normalise_date_time(bad)
