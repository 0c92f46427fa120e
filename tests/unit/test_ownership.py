"""Field ownership, the pure parts: finding local fields, refusing them in payloads, PATCH
checks, and the projector's merge (shared/ownership.py, shared/patching.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.bulk import diff_snapshot
from shared.codes import Code
from shared.errors import SchemaRuleError
from shared.events import Change, Effect, RawMeta
from shared.ownership import Ownership, apply_patch, keep_local
from shared.patching import decide_patch
from shared.processing import ScopeState, decide_single, prepare_item
from shared.projection import build_rows
from shared.schema_rules import CompiledSchema, content_hash, prepare_schema


def schema(**extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "note": {"type": "string", "maxLength": 5, "x-ownership": "local"},
            "addr": {
                "type": "object",
                "properties": {
                    "street": {"type": "string"},
                    "tag": {"type": "object", "x-ownership": "local"},
                },
            },
            **extra,
        },
        "required": ["id"],
        "resmo": {"id": "id", "name": "name"},
    }


def meta(kind: str = "single", ids: list[str] | None = None) -> RawMeta:
    return RawMeta("ev_1", kind, "i", "t", "rt", "", None, None, 0, ids)  # type: ignore[arg-type]


COMPILED = CompiledSchema(prepare_schema(schema()))


def test_local_fields_are_found_at_any_depth_through_properties() -> None:
    own = COMPILED.ownership
    assert own.local == (("addr", "tag"), ("note",))
    assert own.pointers == ["/addr/tag", "/note"]
    assert Ownership.of(prepare_schema(schema(note={"type": "string"}))).local == (("addr", "tag"),)


@pytest.mark.parametrize(
    ("body", "code", "pointer"),
    [
        (schema(note={"x-ownership": "mine"}), Code.INVALID_SCHEMA, "/schema/properties/note"),
        (
            schema(xs={"type": "array", "items": {"x-ownership": "local"}}),
            Code.INVALID_SCHEMA,
            "/schema/properties/xs/items",
        ),
        ({**schema(), "x-ownership": "local"}, Code.INVALID_SCHEMA, "/schema"),
        ({**schema(), "required": ["id", "note"]}, Code.INVALID_SCHEMA, "/schema/required"),
        (
            schema(name={"type": "string", "x-ownership": "local"}),
            Code.INVALID_RESMO_PATH,
            "/schema/resmo/name",
        ),
    ],
)
def test_misplaced_ownership_is_refused(body: dict[str, Any], code: Code, pointer: str) -> None:
    with pytest.raises(SchemaRuleError) as e:
        prepare_schema(body)
    assert e.value.code == code and (e.value.pointer or "").startswith(pointer)


def test_an_annotation_in_data_keywords_is_data() -> None:
    prepare_schema(schema(c={"const": {"x-ownership": "local"}}))


def test_a_payload_carrying_local_fields_has_field_not_owned_issues() -> None:
    issues = COMPILED.validate({"id": "a", "note": "n", "addr": {"tag": {}}})
    assert [(i.code, i.pointer) for i in issues] == [
        (Code.FIELD_NOT_OWNED, "/note"),
        (Code.FIELD_NOT_OWNED, "/addr/tag"),
    ]
    assert COMPILED.validate({"id": "a", "addr": {"street": "s"}}) == []
    # a resource with its local fields is valid as a whole (a PATCH's result)
    assert COMPILED.validate_merged({"id": "a", "note": "n", "addr": {"tag": {}}}) == []


def test_a_user_written_false_schema_stays_a_schema_violation() -> None:
    c = CompiledSchema(prepare_schema(schema(never=False)))
    (issue,) = c.validate({"id": "a", "never": 1})
    assert issue.code == Code.SCHEMA_VIOLATION


def test_a_schema_without_local_fields_validates_as_before() -> None:
    c = CompiledSchema(prepare_schema(schema(note={"type": "string"}, addr={"type": "object"})))
    assert c.ownership.local == () and c._full is c._validator


def test_check_patch() -> None:
    own = COMPILED.ownership
    assert own.check_patch({"note": None, "addr": {"tag": {"a": 1}}}) is None
    for patch, code, at in (
        ({"name": "x"}, Code.FIELD_NOT_OWNED, "/name"),
        ({"addr": {"street": "x"}}, Code.FIELD_NOT_OWNED, "/addr/street"),
        ({"addr": None}, Code.FIELD_NOT_OWNED, "/addr"),
        ({"nope": 1}, Code.UNKNOWN_FIELD, "/nope"),
    ):
        wrong = own.check_patch(patch)
        assert wrong is not None and (wrong.code, wrong.pointer) == (code, at)


def test_keep_local_and_apply_patch() -> None:
    before = {"id": "a", "note": "n", "addr": {"street": "old", "tag": {"t": 1}}}
    pointers = COMPILED.ownership.pointers
    assert keep_local({"id": "a", "addr": {"street": "new"}}, before, pointers) == {
        "id": "a",
        "note": "n",
        "addr": {"street": "new", "tag": {"t": 1}},
    }
    data = {"id": "a"}
    assert keep_local(data, before, pointers) == {"id": "a", "note": "n", "addr": {"tag": {"t": 1}}}
    assert data == {"id": "a"}  # not changed in place
    assert keep_local({"id": "a"}, {"id": "a"}, pointers) == {"id": "a"}
    patched = apply_patch(before, {"note": None, "addr": {"tag": {"u": 2}}})
    assert patched == {"id": "a", "addr": {"street": "old", "tag": {"t": 1, "u": 2}}}
    assert before["note"] == "n"  # not changed in place


def test_the_content_hash_covers_the_payload_only() -> None:
    prep = prepare_item({"id": "a", "name": "x"}, COMPILED)
    state = ScopeState(known={"a": (content_hash({"id": "a", "name": "x"}), 2)})
    assert decide_single(meta(), prep, state).unchanged == 1


def test_decide_patch() -> None:
    h = content_hash({"id": "a"})
    current = {"id": "a", "note": "n"}
    state = ScopeState(known={"a": (h, 3)})
    ch = decide_patch(meta("patch", ["a"]), b'{"note": "m"}', COMPILED, state, current)
    assert ch.status == "applied" and ch.local == ["/addr/tag", "/note"]
    (e,) = ch.effects
    assert (e.op, e.version, e.content_hash, e.data) == ("updated", 4, h, {"note": "m"})
    assert state.dirty == {"a": (h, 4)}  # the hash stays: a sync of the same data is unchanged

    same = decide_patch(meta("patch", ["a"]), b'{"note": "n"}', COMPILED, state, current)
    assert same.unchanged == 1 and not same.effects
    bad = decide_patch(meta("patch", ["a"]), b'{"note": "toolong"}', COMPILED, state, current)
    assert bad.status == "rejected" and bad.issues[0]["pointer"] == "/note"
    gone = decide_patch(meta("patch", ["b"]), b'{"note": "m"}', COMPILED, state, None)
    assert gone.issues[0]["code"] == Code.RESOURCE_NOT_FOUND
    ext = decide_patch(meta("patch", ["a"]), b'{"name": "m"}', COMPILED, state, current)
    assert ext.issues[0]["code"] == Code.FIELD_NOT_OWNED


NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = ("rt", "", "a")


def test_the_projector_keeps_local_fields_and_applies_patches() -> None:
    before = {"id": "a", "name": "x", "note": "n"}
    sync = Change(meta(), "applied", [Effect("updated", "a", 2, "h", None, {}, {"id": "a"})])
    sync.local = ["/note"]
    rows = build_rows([sync], {KEY: before}, NOW)
    assert rows.final[KEY] is not None and rows.final[KEY][2] == {"id": "a", "note": "n"}
    assert rows.history[0][7] == [{"op": "remove", "path": "/name"}]

    edit = Change(meta("patch", ["a"]), "applied")
    edit.effects = [Effect("updated", "a", 3, "h", None, {}, {"note": None})]
    rows = build_rows([sync, edit], {KEY: before}, NOW)
    assert rows.final[KEY] is not None and rows.final[KEY][2] == {"id": "a"}
    assert rows.history[1][7] == [{"op": "remove", "path": "/note"}]

    # without local fields a sync's data is stored as it is
    plain = Change(meta(), "applied", [Effect("updated", "a", 2, "h", None, {}, {"id": "a"})])
    assert build_rows([plain], {KEY: before}, NOW).final[KEY][2] == {"id": "a"}  # type: ignore[index]


def test_a_snapshot_lists_local_fields_and_refuses_them_per_item() -> None:
    final, _ = diff_snapshot(meta("bulk"), [{"id": "a"}], COMPILED, {})
    assert final.local == ["/addr/tag", "/note"]
    final, _ = diff_snapshot(meta("bulk"), [{"id": "a", "note": "x"}], COMPILED, {})
    assert final.status == "rejected"
    assert [(i["code"], i["pointer"], i["index"]) for i in final.issues] == [
        ("field_not_owned", "/note", 0)
    ]
