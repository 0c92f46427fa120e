"""JSON is taken exactly or refused: integers beyond 64 bits and duplicate keys, which
orjson would change silently, are issues with a pointer (pure; no I/O)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shared.bulk import FastExtractor, Unsound, diff_snapshot, load_items, scan_chunk
from shared.errors import ApiError
from shared.events import RawMeta
from shared.jsontext import document_issues, faults, item_faults, lossless, refuse_lossy
from shared.processing import prepare_single
from shared.schema_rules import CompiledSchema, content_hash, prepare_schema
from tests.conftest import EMPLOYEE_SCHEMA

SCHEMA = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
FX = FastExtractor(SCHEMA)
BIG = b"123456789012345678901234567890"


def codes(issues: Any) -> list[tuple[str, str | None]]:
    return [(i.code, i.pointer) for i in issues]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"employeeId": "e1", "employee": {"age": ' + BIG + b"}}",
        b'{"employeeId": "e1", "employee": {"age": 18446744073709551616}}',
        b'{"employeeId": "e1", "employee": {"age": -9223372036854775809}}',
    ],
)
def test_single_event_with_an_integer_beyond_64_bits_is_rejected(raw: bytes) -> None:
    assert isinstance(orjson.loads(raw)["employee"]["age"], float)  # what orjson does
    prep = prepare_single(raw, SCHEMA)
    assert prep.extracted is None
    assert codes(prep.issues) == [("number_out_of_range", "/employee/age")]
    assert "64-bit" in prep.issues[0].message


def test_the_64_bit_range_itself_is_kept() -> None:
    raw = b'{"employeeId": "e1", "n": [18446744073709551615, -9223372036854775808, 1e-400]}'
    assert document_issues(raw, orjson.loads(raw)) == []


@pytest.mark.parametrize(
    ("raw", "pointer", "key"),
    [
        (b'{"employeeId": "a", "employeeId": "b"}', "", "employeeId"),
        (b'{"employeeId": "a", "employee": {"email": "x", "email": "y"}}', "/employee", "email"),
        (b'{"employeeId": "a", "employee": {"a": [{"k": 1, "\\u006b": 2}]}}', "/employee/a/0", "k"),
        (b'{"employeeId": "a", "a/b": {"x~": 1, "x~": 1}}', "/a~1b", "x~"),
    ],
)
def test_single_event_with_a_duplicate_key_is_rejected(raw: bytes, pointer: str, key: str) -> None:
    prep = prepare_single(raw, SCHEMA)
    assert prep.extracted is None
    assert codes(prep.issues) == [("duplicate_key", pointer)]
    assert repr(key) in prep.issues[0].message


def test_messages_stay_short_whatever_the_input() -> None:
    key = "k" * 100_000
    raw = b'{"%s": 1, "%s": 2, "n": 1%s}' % (key.encode(), key.encode(), b"0" * 300)
    issues = document_issues(raw, orjson.loads(raw))
    assert [i.code for i in issues] == ["duplicate_key", "number_out_of_range"]
    assert all(len(i.message) < 500 for i in issues)


def test_the_gateway_check_raises_400_with_the_first_issue() -> None:
    raw = b'{"employeeId": "a", "employeeId": "b", "n": ' + BIG + b"}"
    with pytest.raises(ApiError) as e:
        refuse_lossy(raw, orjson.loads(raw))
    assert (e.value.status, e.value.code, e.value.pointer) == (400, "duplicate_key", "")
    assert "1 more" in e.value.message
    refuse_lossy(b'{"a": 1}', {"a": 1})  # nothing to refuse


@pytest.mark.parametrize(
    ("raw", "cheap"),
    [
        (b'{"a": "x:y", "b": {"c": [1, 2.5, null, true]}}', True),
        (b'{"k\\u003a": "v\\u003A:", "n": "\\n"}', True),  # escaped colons count too
        (b'{"\\\\u003a": 1}', False),  # an escaped backslash, then u003a: over-counted
        (b'{ "spaced" : 1 ,\n "out" : [ ] }', True),
        (b'{"f": 1.0e2, "g": 100.0}', True),
        (b"[]", True),
        (b'"just a string: yes"', True),
    ],
)
def test_lossless_text_passes_the_cheap_check_or_the_exact_one(raw: bytes, cheap: bool) -> None:
    value = orjson.loads(raw)
    assert lossless(raw, value) is cheap
    assert document_issues(raw, value) == []
    assert faults(raw) == {}


def test_the_cheap_check_passes_the_common_document() -> None:
    raw = orjson.dumps({"employeeId": "e1", "employee": {"email": "a:b@c", "age": 30}})
    assert lossless(raw, orjson.loads(raw))
    dup = b'{"employeeId": "e1", "employeeId": "e1"}'  # even identical values are refused
    assert not lossless(dup, orjson.loads(dup))


def test_deeply_nested_text_is_checked_without_recursion() -> None:
    raw = b'{"a":' * 900 + b'{"k": 1, "k": 2}' + b"}" * 900
    ((_, fault),) = faults(raw).items()
    assert fault.issues[0].code == "duplicate_key"
    assert fault.issues[0].pointer == "/a" * 900


# ---- bulk items -------------------------------------------------------------------------


def bulk(*items: bytes) -> bytes:
    return b"[" + b",".join(items) + b"]"


def test_bulk_items_that_orjson_would_change_are_at_fault_with_index_and_pointer() -> None:
    raw = bulk(
        b'{"employeeId": "a"}',
        b'{"employeeId": "b", "employee": {"age": ' + BIG + b"}}",
        b'{"employeeId": "c", "active": true, "active": false}',
        b'{"employeeId": "d"}',
    )
    items = load_items(raw)
    assert [type(i).__name__ for i in items] == ["dict", "Unsound", "Unsound", "dict"]
    chunk = scan_chunk(items, 0, FX)
    assert [(s.index, s.rid, codes(s.issues)) for s in chunk.invalid] == [
        (1, "b", [("number_out_of_range", "/employee/age")]),
        (2, "c", [("duplicate_key", "")]),
    ]
    assert [i.resource_id for s in chunk.invalid for i in s.issues] == ["b", "c"]
    assert chunk.ids == [b"a", b"b", b"c", b"d"]  # b and c are known ids, at fault
    assert chunk.hashes[1] is None and chunk.hashes[2] is None


@pytest.mark.parametrize(
    "item",
    [
        b'{"employeeId": "a", "employeeId": "b"}',  # which one is the id?
        b'{"employeeId": ' + BIG + b"}",
        BIG,  # the item itself
    ],
)
def test_a_fault_on_the_id_leaves_the_item_without_an_id(item: bytes) -> None:
    (s,) = scan_chunk(load_items(bulk(item)), 0, FX).invalid
    assert s.rid is None and s.issues[0].code in ("duplicate_key", "number_out_of_range")


def test_partial_snapshot_never_deletes_an_ambiguous_id() -> None:
    meta = RawMeta("ev", "bulk", "i", "employee", "_t", "", None, None, 0)
    current = {"a": (content_hash({"employeeId": "a"}), 1), "b": ("h", 1), "c": ("h", 1)}
    items = load_items(bulk(b'{"employeeId": "a"}', b'{"employeeId": "b", "employeeId": "c"}'))
    change, _ = diff_snapshot(meta, items, SCHEMA, current, partial=True)
    # an item at fault without an id: nothing is deleted, the valid item is unchanged
    assert (change.status, change.unchanged, change.rejected) == ("applied", 1, 1)
    assert [e.op for e in change.effects] == []
    assert [i["code"] for i in change.issues] == ["duplicate_key", "deletions_skipped"]


def test_item_faults_is_empty_for_a_lossless_array() -> None:
    raw = orjson.dumps([{"employeeId": str(i), "n": 2**63} for i in range(100)])
    assert item_faults(raw, orjson.loads(raw)) == {}
    assert not any(isinstance(i, Unsound) for i in load_items(raw))
