"""The worker's pure step: decisions from (raw event, current state) with no I/O."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shared.events import Change, RawMeta
from shared.processing import (
    ScopeState,
    decide_delete,
    decide_single,
    prepare_item,
    prepare_single,
)
from shared.redis import writemodel
from shared.schema_rules import CompiledSchema, content_hash, prepare_schema
from tests.conftest import EMPLOYEE_SCHEMA

SCHEMA = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))


def meta(kind: str = "single", ids: list[str] | None = None) -> RawMeta:
    return RawMeta(
        "ev_1",
        kind,
        "00000000-0000-0000-0000-000000000001",
        "employee",  # type: ignore[arg-type]
        "_d_employee",
        "g",
        "hired",
        {"n": 1},
        1_700_000_000_000,
        ids,
    )


def single(doc: Any, state: ScopeState) -> Change:
    return decide_single(meta(), prepare_single(orjson.dumps(doc), SCHEMA), state)


def test_new_resource_is_created_at_version_1() -> None:
    st = ScopeState()
    ch = single({"employeeId": "a", "employee": {"username": "u", "email": "e"}}, st)
    assert ch.status == "applied" and ch.counts()["created"] == 1
    (e,) = ch.effects
    assert (e.op, e.resource_id, e.version, e.name) == ("created", "a", 1, "u")
    assert e.important == {"employeeId": "a", "$.employee.email": "e"}
    assert st.dirty == {"a": (e.content_hash, 1)}


def test_same_content_is_unchanged_and_leaves_state_clean() -> None:
    doc = {"employeeId": "a", "active": True}
    st = ScopeState(known={"a": (content_hash(doc), 4)})
    ch = single({"active": True, "employeeId": "a"}, st)
    assert ch.effects == [] and ch.unchanged == 1 and st.dirty == {}
    assert ch.counts() == {
        "created": 0, "updated": 0, "deleted": 0, "unchanged": 1, "rejected": 0, "skipped": 0
    }  # fmt: skip


def test_different_content_is_updated_with_next_version() -> None:
    st = ScopeState(known={"a": ("oldhash", 4)})
    ch = single({"employeeId": "a"}, st)
    assert [(e.op, e.version) for e in ch.effects] == [("updated", 5)]
    assert st.get("a") == (ch.effects[0].content_hash, 5)


def test_tombstone_recreate_continues_versions() -> None:
    st = ScopeState(known={"a": ("", 7)})
    ch = single({"employeeId": "a"}, st)
    assert [(e.op, e.version) for e in ch.effects] == [("created", 8)]


def test_sequence_in_one_state_object() -> None:
    st = ScopeState()
    ops = [single({"employeeId": "a", "active": b}, st).effects for b in (True, True, False)]
    assert [[(e.op, e.version) for e in x] for x in ops] == [
        [("created", 1)],
        [],
        [("updated", 2)],
    ]
    d = decide_delete(meta("delete", ["a", "a", "b"]), st)
    assert [(e.op, e.resource_id, e.version) for e in d.effects] == [("deleted", "a", 3)]
    assert d.ignored == ["b"]  # duplicates collapse
    assert st.get("a") == ("", 3)
    assert decide_delete(meta("delete", ["a"]), st).ignored == ["a"]


@pytest.mark.parametrize(
    ("doc", "code", "pointer"),
    [
        ({"employeeId": "a", "x": 1}, "unknown_field", "/x"),
        ({"employeeId": "a", "active": "yes"}, "schema_violation", "/active"),
        ({"employeeId": ""}, "invalid_id", "/employeeId"),
        ({"employeeId": {"k": "v"}}, "invalid_id", "/employeeId"),
        ({"active": True}, "missing_id", ""),  # the object it is missing from, like missing_field
    ],
)
def test_rejections_leave_state_untouched(doc: Any, code: str, pointer: str) -> None:
    st = ScopeState(known={"a": ("h", 1)})
    ch = single(doc, st)
    assert ch.status == "rejected" and ch.rejected == 1 and ch.effects == []
    assert (code, pointer) in [(i["code"], i["pointer"]) for i in ch.issues], ch.issues
    assert ch.issues_total == len(ch.issues)
    assert st.dirty == {} and st.known == {"a": ("h", 1)}


def test_issue_names_resource_when_id_is_known() -> None:
    ch = single({"employeeId": "a", "active": 1}, ScopeState())
    assert ch.issues == [
        {
            "code": "schema_violation",
            "message": ch.issues[0]["message"],
            "pointer": "/active",
            "resourceId": "a",
        }
    ]


def test_invalid_json_body_is_rejected_not_raised() -> None:
    ch = decide_single(meta(), prepare_single(b"{nope", SCHEMA), ScopeState())
    assert ch.status == "rejected" and ch.issues[0]["code"] == "invalid_json"


def test_non_object_item_is_rejected() -> None:
    prep = prepare_item([1, 2], SCHEMA)
    assert prep.extracted is None and prep.issues[0].code == "not_an_object"


def test_integer_id_accepted_when_schema_allows_it() -> None:
    body = dict(EMPLOYEE_SCHEMA, properties={"employeeId": {"type": "integer"}})
    schema = CompiledSchema(prepare_schema(body))
    ch = decide_single(meta(), prepare_single(b'{"employeeId": 42}', schema), ScopeState())
    assert [(e.op, e.resource_id) for e in ch.effects] == [("created", "42")]


def test_change_round_trips_through_its_encoding() -> None:
    st = ScopeState()
    ch = single({"employeeId": "a"}, st)
    back = Change.decode(ch.encode())
    assert back.counts() == ch.counts() and back.meta == ch.meta
    assert [e.as_list() for e in back.effects] == [e.as_list() for e in ch.effects]


@pytest.mark.parametrize("value", [(content_hash({"a": 1}), 1), ("", 12)])
def test_state_value_encoding(value: tuple[str, int]) -> None:
    assert writemodel.decode(writemodel.encode(value)) == value
    assert writemodel.decode(writemodel.encode(value).decode()) == value
    assert writemodel.decode(None) is None
    assert writemodel.is_tombstone(writemodel.encode(value)) == (value[0] == "")
    if value[0]:
        assert writemodel.encode(value).startswith(writemodel.live_prefix(value[0].encode()))


def test_live_and_dead_deltas_follow_every_transition() -> None:
    """The write model's live/dead counts move by exactly these deltas."""
    st = ScopeState(known={"gone": ("", 3), "here": ("h", 2)})
    single({"employeeId": "new"}, st)  # nothing -> live
    single({"employeeId": "here", "active": True}, st)  # live -> live (updated)
    single({"employeeId": "gone"}, st)  # tombstone -> live (re-created)
    assert (st.live_delta, st.dead_delta) == (2, -1)
    decide_delete(meta("delete", ["new", "here", "never"]), st)  # 2 live -> dead
    assert (st.live_delta, st.dead_delta) == (0, 1)
    single({"employeeId": "new", "active": False}, st)  # deleted in this batch, re-created
    assert (st.live_delta, st.dead_delta) == (1, 0)
    assert sum(1 for h, _ in st.known.values() if h) == 1 + st.live_delta
