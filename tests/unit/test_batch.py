"""The batch decision (pure): items as single events, in order, each rejected alone."""

from __future__ import annotations

from typing import Any

from shared.batch import MAX_ITEMS_LISTED, decide_batch, prepare_items
from shared.events import RawMeta
from shared.processing import ScopeState
from shared.schema_rules import CompiledSchema, content_hash, prepare_schema
from tests.conftest import EMPLOYEE_SCHEMA

SCHEMA = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
META = RawMeta("ev_1", "batch", "i", "employee", "_d_employee", "", None, None, 0)


def decide(items: list[Any], state: ScopeState | None = None) -> Any:
    return decide_batch(META, prepare_items(items, SCHEMA), state or ScopeState())


def test_items_take_effect_in_order_against_what_the_earlier_ones_left() -> None:
    same = {"employeeId": "u"}
    state = ScopeState(known={"u": (content_hash(same), 3), "gone": ("", 5)})
    ch = decide([{"employeeId": "a"}, {"employeeId": "a", "active": True}, same,
                 {"employeeId": "gone"}, {"employeeId": "a", "active": True}], state)  # fmt: skip
    assert [(e.op, e.resource_id, e.version) for e in ch.effects] == [
        ("created", "a", 1), ("updated", "a", 2), ("created", "gone", 6),
    ]  # fmt: skip
    assert [i["outcome"] for i in ch.items] == [
        "created", "updated", "unchanged", "created", "unchanged",
    ]  # fmt: skip
    assert (ch.status, ch.unchanged, ch.rejected, ch.items_total) == ("applied", 2, 0, 5)
    assert state.dirty == {
        "a": (ch.effects[1].content_hash, 2),
        "gone": (ch.effects[2].content_hash, 6),
    }


def test_an_item_at_fault_is_rejected_alone_with_its_index_and_id() -> None:
    ch = decide([{"employeeId": "ok"}, {"employeeId": "bad", "active": 1}, []])
    assert ch.status == "applied" and len(ch.effects) == 1 and ch.rejected == 2
    bad, notobj = ch.items[1], ch.items[2]
    assert (bad["id"], bad["outcome"], bad["issues"][0]["code"]) == (
        "bad",
        "rejected",
        "schema_violation",
    )
    assert (notobj["id"], notobj["issues"][0]["code"]) == (None, "not_an_object")
    assert [(i["index"], i.get("resourceId")) for i in ch.issues] == [(1, "bad"), (2, None)]
    assert ch.issues_total == 2


def test_all_rejected_rejects_the_batch_and_an_empty_one_applies() -> None:
    assert decide([{"x": 1}]).status == "rejected"
    empty = decide([])
    assert (empty.status, empty.items, empty.items_total) == ("applied", [], 0)


def test_the_listed_outcomes_are_capped_and_counted() -> None:
    n = MAX_ITEMS_LISTED + 1
    ch = decide([{"employeeId": f"m{i}"} for i in range(n)])
    assert len(ch.items) == MAX_ITEMS_LISTED and ch.items_total == n and len(ch.effects) == n


def test_the_change_round_trips_with_its_items() -> None:
    from shared.events import Change

    ch = decide([{"employeeId": "a"}, {"x": 1}])
    back = Change.decode(ch.encode())
    assert (back.items, back.items_total) == (ch.items, 2)
