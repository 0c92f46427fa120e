"""Bulk snapshot decisions (pure): the seed example, all-or-nothing, partial, fast extraction."""

from __future__ import annotations

import random
from typing import Any

import pytest

from services.worker.slices import frame, unframe
from shared.bulk import (
    FastExtractor,
    Tally,
    classify,
    diff_snapshot,
    parse_index_value,
    scan_item,
)
from shared.events import Change, RawMeta
from shared.schema_rules import CompiledSchema, content_hash, prepare_schema
from tests.conftest import EMPLOYEE_SCHEMA

SCHEMA = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
META = RawMeta("ev_1", "bulk", "i", "employee", "_d_employee", "", "sync", "hr", 0)


def emp(rid: str, **extra: Any) -> dict[str, Any]:
    return {"employeeId": rid, **extra}


def state_of(*docs: dict[str, Any], version: int = 1) -> dict[str, tuple[str, int]]:
    return {d["employeeId"]: (content_hash(d), version) for d in docs}


def ops(change: Change) -> list[tuple[str, str, int]]:
    return sorted((e.op, e.resource_id, e.version) for e in change.effects)


# ---- the decision ---------------------------------------------------------------------------


def test_seed_example_c_deleted_ab_updated_or_unchanged_d_created() -> None:
    current = state_of(emp("a"), emp("b"), emp("c"))
    change, updates = diff_snapshot(META, [emp("a"), emp("b", active=True), emp("d")], SCHEMA,
                                    current)  # fmt: skip
    assert change.status == "applied" and change.last
    assert ops(change) == [("created", "d", 1), ("deleted", "c", 2), ("updated", "b", 2)]
    assert change.counts() == {
        "created": 1, "updated": 1, "deleted": 1, "unchanged": 1, "rejected": 0, "skipped": 0
    }  # fmt: skip
    assert updates["c"] == ("", 2) and updates["b"][1] == 2 and "a" not in updates


def test_first_snapshot_creates_everything_and_empty_snapshot_deletes_everything() -> None:
    change, _ = diff_snapshot(META, [emp("a"), emp("b")], SCHEMA, {})
    assert ops(change) == [("created", "a", 1), ("created", "b", 1)]
    change, _ = diff_snapshot(META, [], SCHEMA, state_of(emp("a"), emp("b")))
    assert ops(change) == [("deleted", "a", 2), ("deleted", "b", 2)]


def test_tombstones_are_not_deleted_again_and_recreation_continues_the_version() -> None:
    current = {"a": ("", 4), **state_of(emp("b"))}
    change, _ = diff_snapshot(META, [emp("a"), emp("b")], SCHEMA, current)
    assert ops(change) == [("created", "a", 5)]
    change, _ = diff_snapshot(META, [emp("b")], SCHEMA, current)
    assert ops(change) == []  # a is already deleted


def test_invalid_item_rejects_everything_with_specific_issues() -> None:
    items = [emp("a"), {"active": True}, emp("c", active="no"), "not an object", emp("d")]
    change, updates = diff_snapshot(META, items, SCHEMA, state_of(emp("x")))
    assert change.status == "rejected" and change.effects == [] and updates == {}
    assert change.counts() == {
        "created": 0, "updated": 0, "deleted": 0, "unchanged": 0, "rejected": 3, "skipped": 0
    }  # fmt: skip
    first = {}
    for i in change.issues:
        first.setdefault(i["index"], i)
    assert first[1]["code"] == "missing_id" and "resourceId" not in first[1]
    assert first[2]["resourceId"] == "c" and first[2]["pointer"] == "/active"
    assert first[3]["code"] == "not_an_object"
    assert change.issues_total == len(change.issues)


def test_duplicate_ids_reject_everything() -> None:
    change, _ = diff_snapshot(META, [emp("a"), emp("b"), emp("a", active=True)], SCHEMA, {})
    assert change.status == "rejected" and change.rejected == 2
    (issue,) = change.issues
    assert issue["code"] == "duplicate_id" and issue["index"] == 2
    assert issue["resourceId"] == "a" and issue["pointer"] == "/employeeId"
    assert "index 0" in issue["message"]


def test_integer_and_string_ids_that_print_alike_are_duplicates() -> None:
    schema = dict(
        EMPLOYEE_SCHEMA,
        properties={**EMPLOYEE_SCHEMA["properties"], "employeeId": {"type": ["string", "integer"]}},
    )
    compiled = CompiledSchema(prepare_schema(schema))
    change, _ = diff_snapshot(META, [{"employeeId": 7}, {"employeeId": "7"}], compiled, {})
    assert change.status == "rejected" and change.issues[0]["code"] == "duplicate_id"


def test_issue_list_is_capped_but_counted() -> None:
    change, _ = diff_snapshot(META, [{"x": i} for i in range(600)], SCHEMA, {})
    assert len(change.issues) == 1000 and change.issues_total == 1800
    assert change.rejected == 600


def test_partial_applies_valid_items_and_never_deletes_ids_of_invalid_items() -> None:
    current = state_of(emp("a"), emp("b"), emp("c"))
    items = [emp("a", active=True), emp("b", active="bad"), emp("d")]
    change, updates = diff_snapshot(META, items, SCHEMA, current, partial=True)
    assert change.status == "applied"
    assert ops(change) == [("created", "d", 1), ("deleted", "c", 2), ("updated", "a", 2)]
    assert change.rejected == 1 and "b" not in updates


def test_partial_with_an_item_without_id_deletes_nothing_and_says_so() -> None:
    current = state_of(emp("a"), emp("b"))
    change, _ = diff_snapshot(META, [emp("a", active=True), {"active": 1}], SCHEMA, current,
                              partial=True)  # fmt: skip
    assert ops(change) == [("updated", "a", 2)]
    assert change.issues[-1]["code"] == "deletions_skipped"
    assert change.issues_total == len(change.issues)


def test_an_upsert_batch_deletes_nothing_and_needs_no_deletions_skipped_issue() -> None:
    current = state_of(emp("a"), emp("b"), emp("c"))
    items = [emp("a", active=True), {"active": 1}, emp("d")]
    change, _ = diff_snapshot(META, items, SCHEMA, current, partial=True, upsert=True)
    assert ops(change) == [("created", "d", 1), ("updated", "a", 2)]
    assert change.rejected == 1
    assert all(i["code"] != "deletions_skipped" for i in change.issues)


def test_partial_duplicates_are_neither_applied_nor_deleted() -> None:
    current = state_of(emp("a"), emp("b"), emp("c"))
    items = [emp("a"), emp("b", active=True), emp("a", active=True), emp("b"), emp("e")]
    change, _ = diff_snapshot(META, items, SCHEMA, current, partial=True)
    assert ops(change) == [("created", "e", 1), ("deleted", "c", 2)]
    # a was unchanged and b changed at first sight; both are rejected in the end
    assert change.unchanged == 0 and change.rejected == 4


def test_duplicate_of_an_invalid_item_counts_each_item_once() -> None:
    items = [emp("a", active="bad"), emp("a"), emp("a")]
    change, _ = diff_snapshot(META, items, SCHEMA, {}, partial=True)
    assert change.rejected == 3 and change.effects == []


@pytest.mark.parametrize("partial", [False, True])
def test_random_snapshots_keep_the_invariants(partial: bool) -> None:
    rng = random.Random(5)
    for _ in range(50):
        current = state_of(*(emp(f"r{i}", active=bool(i % 2)) for i in range(rng.randint(0, 30))))
        items: list[Any] = []
        for _ in range(rng.randint(0, 30)):
            roll = rng.random()
            if roll < 0.05:
                items.append({"active": True})
            elif roll < 0.1:
                items.append(emp(f"r{rng.randint(0, 40)}", active="bad"))
            else:
                items.append(emp(f"r{rng.randint(0, 40)}", active=rng.random() < 0.5))
        change, updates = diff_snapshot(META, items, SCHEMA, current, partial=partial)
        c = change.counts()
        ids = [e.resource_id for e in change.effects]
        assert len(ids) == len(set(ids))
        if change.status == "rejected":
            assert not partial and not change.effects and not updates
            continue
        assert c["created"] + c["updated"] + c["unchanged"] + c["rejected"] <= len(items)
        for e in change.effects:
            cur = current.get(e.resource_id)
            assert e.version == (cur[1] + 1 if cur else 1)
            assert updates[e.resource_id][1] == e.version


# ---- pieces -------------------------------------------------------------------------------


def test_classify_compares_with_the_write_model() -> None:
    h = content_hash(emp("a"))
    assert classify((h, 3), h) == "u"
    assert classify((h, 3), "0" * 64) == "c"
    assert classify(("", 3), h) == "c" and classify(None, h) == "c"


def test_index_values() -> None:
    assert parse_index_value(b"c12") == ("c", 12, False)
    assert parse_index_value("Du7") == ("u", 7, True)


def test_tally_counts_a_duplicated_first_occurrence_once() -> None:
    t = Tally(partial=True)
    t.unchanged = 1
    item = scan_item(emp("a"), 5, FastExtractor(SCHEMA))
    t.duplicate(item, b"u0", "/employeeId", None)
    t.duplicate(scan_item(emp("a"), 6, FastExtractor(SCHEMA)), b"Du0", "/employeeId", None)
    assert (t.unchanged, t.rejected, t.issues_total) == (0, 3, 2)


def test_staged_slice_frames_round_trip() -> None:
    change = b'{"m":"x"}'
    raw = frame(change, {"a": ("h", 2), "b": ("", 3)})
    entry, state = unframe(raw)
    assert (entry, state[:3]) == (change, ["a", "h|2", "b"])
    assert state[3].startswith("|3|")  # a tombstone, with the time it was written


# ---- fast extraction equals the JSONPath engine --------------------------------------------


PATH_SCHEMAS = [
    {"id": "employeeId", "name": "$.employee.username",
     "importantFields": ["employeeId", "$.employee.email", "active"]},
    {"id": "$['employee']['email']", "name": "$.tags[0]", "importantFields": ["$.tags[-1]"]},
    {"id": "$.nums[1]", "name": "$.employee", "importantFields": ["$.tags[*]", "$..email"]},
    {"id": "$['0']", "name": "$.n", "importantFields": ["$['a b']", "$.x.y.z"]},
    {"id": "$.employee.age"},
]  # fmt: skip
DOCS: list[Any] = [
    {"employeeId": "a", "active": True, "employee": {"username": "u", "email": "e@x"}},
    {"employeeId": 7, "employee": {"username": 5, "email": None}, "tags": ["t1", "t2"]},
    {"employeeId": "", "employee": {"email": "m@x", "age": 3}, "tags": [], "nums": [1, "2"]},
    {"employeeId": True, "employee": {"username": None}, "nums": [0, 9], "0": "zero"},
    {"employeeId": 1.5, "employee": "flat", "tags": "str", "n": [1], "a b": {"c": 1}},
    {"employee": {"age": 12, "username": {"o": 1}}, "0": 4, "x": {"y": {"z": [1]}}},
    {"tags": ["only"], "nums": {"1": "keyed"}, "employee": {"email": "q@x"}},
]


@pytest.mark.parametrize("resmo", PATH_SCHEMAS)
def test_fast_extractor_matches_compiled_schema(resmo: dict[str, Any]) -> None:
    compiled = CompiledSchema({"type": "object", "resmo": resmo})
    fx = FastExtractor(compiled)
    for d in DOCS:
        assert fx.extract(d) == compiled.extract(d), d
        slow = compiled.extract(d)
        assert fx.resource_id(d) == (slow.id if hasattr(slow, "id") else None)


def test_scan_item_reports_index_and_id() -> None:
    fx = FastExtractor(SCHEMA)
    ok = scan_item(emp("a"), 3, fx)
    assert (ok.rid, ok.content_hash, ok.issues) == ("a", content_hash(emp("a")), [])
    bad = scan_item(emp("b", extra=1), 4, fx)
    assert bad.rid == "b" and bad.content_hash is None
    assert bad.issues[0].index == 4 and bad.issues[0].resource_id == "b"
    none = scan_item([], 5, fx)
    assert none.rid is None and none.issues[0].code == "not_an_object"


def test_items_that_could_never_be_stored_are_rejected_not_crashing() -> None:
    fx = FastExtractor(SCHEMA)
    nul = scan_item(emp("a", employee={"username": "x\u0000y"}), 0, fx)
    assert [i.code for i in nul.issues] == ["invalid_character"] and nul.rid == "a"
    text = scan_item(emp("a", employee={"username": "\\u0000 is fine"}), 0, fx)
    assert text.issues == [] and text.content_hash
    deep: Any = "leaf"
    for _ in range(300):
        deep = {"d": deep}
    loose = FastExtractor(CompiledSchema({"type": "object", "resmo": {"id": "id"}}))
    item = scan_item({"id": "x", "deep": deep}, 4, loose)
    assert [i.code for i in item.issues] == ["too_deep"] and item.issues[0].index == 4


def test_scan_chunk_agrees_with_scan_item_on_every_kind_of_item() -> None:
    """The fast path of scan_chunk must decide exactly as scan_item does."""
    from shared.bulk import FastExtractor, scan_chunk, scan_item

    fx = FastExtractor(SCHEMA)
    rng = random.Random(7)
    kinds: list[Any] = [
        {"employeeId": "a", "active": True},
        {"employeeId": 42, "active": False},  # a number id: taken as "42"
        {"employeeId": ""},
        {"active": True},
        {"employeeId": "b", "active": "no"},
        {"employeeId": "c", "employee": {"username": "nul\x00"}},
        {"employeeId": "d", "employee": {"username": "ünï", "age": 3}},
        "not an object",
        [1],
        None,
    ]
    items = [rng.choice(kinds) for _ in range(300)]
    chunk = scan_chunk(items, 1000, fx)
    want = [scan_item(x, 1000 + i, fx) for i, x in enumerate(items)]
    keyed = [s for s in want if s.rid is not None]
    assert chunk.ids == [s.rid.encode() for s in keyed if s.rid]
    assert chunk.indexes == [s.index for s in keyed]
    assert chunk.hashes == [s.content_hash.encode() if s.content_hash else None for s in keyed]
    assert [chunk.item(i) for i in range(len(keyed))] == keyed
    assert chunk.invalid == [s for s in want if s.issues]
    assert {s.index for s in chunk.invalid} != set()
