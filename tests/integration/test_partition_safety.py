"""No input stops a partition, end to end in one process (gateway → worker → projector,
real Redis and PostgreSQL): a costly pattern, integers beyond 64 bits, duplicate keys,
an id too long for PostgreSQL's index, and characters XML cannot carry in a receipt."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from defusedxml import ElementTree as SafeET

from shared import jsontext
from shared.pg.registry import RegistryStore
from shared.schema_rules import MAX_ID_LENGTH
from tests.conftest import ADMIN, InlinePipeline, Seeded, seed_directory
from tests.helpers import counts, emp, employee_schema, only, poll, post, post_bulk, receipt

Client = TestClient[Any, Any]
EVENT = "/integration/custom-data/event/employee"
BIG = "123456789012345678901234567890"
A_MILLION = "a" * 1_000_000 + "!"  # the issue's items: ~3.5 s per check when backtracking
CATASTROPHIC = "^(a+)+\\1$"


def with_v(pattern: str) -> dict[str, Any]:
    schema = employee_schema()
    schema["properties"] = {**schema["properties"], "v": {"type": "string", "pattern": pattern}}
    return schema


async def post_raw(c: Client, who: Seeded, body: bytes, query: str = "") -> Any:
    return await c.post(f"{EVENT}?{query}", data=body, headers=who.headers)


async def stored(pool: asyncpg.Pool, rt: str = "_directory_employee") -> dict[str, Any]:
    rows = await pool.fetch("SELECT * FROM resources WHERE resource_type = $1", rt)
    return {r["resource_id"]: r for r in rows}


# ---- 1. a backtracking pattern ---------------------------------------------------------------


async def test_the_issue_pattern_is_refused_when_the_table_is_created(
    client: Client, seeded: Seeded
) -> None:
    r = await client.post(
        f"/admin/v1/schema-groups/{seeded.group_id}/schemas",
        json={"table": "costly", "schema": with_v(CATASTROPHIC)},
        headers=ADMIN,
    )
    body = await r.json()
    assert (r.status, body["code"]) == (400, "invalid_schema"), body
    assert body["pointer"] == "/schema/properties/v/pattern"
    assert repr(CATASTROPHIC) in body["message"]


async def test_nested_quantifiers_on_a_million_characters_are_rejected_and_the_partition_moves(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    # ^(a+)+$ alone is accepted: the linear engine decides it in milliseconds
    r = await client.put(
        f"/admin/v1/schema-groups/{seeded.group_id}/schemas/employee",
        json={"schema": with_v("^(a+)+$")},
        headers=ADMIN,
    )
    assert r.status == 200, await r.text()  # the worker reads version 2 at its next drain
    bad = await post_bulk(client, seeded, [emp(f"x{i}", v=A_MILLION) for i in range(3)])
    ok = await post(client, seeded, emp("after", v="aaa"))
    await pipeline.run()
    rc = await receipt(client, seeded, bad["eventId"])
    assert rc["status"] == "rejected"
    assert [(i["index"], i["code"], i["pointer"]) for i in rc["issues"]] == [
        (n, "schema_violation", "/v") for n in range(3)
    ]
    assert counts(await receipt(client, seeded, ok)) == only("created")
    assert sorted(await stored(pool)) == ["after"]


async def test_a_version_stored_before_the_rule_rejects_costly_items_fast(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    registry_store: RegistryStore,
) -> None:
    """The issue's table and a bulk of its items, through the real pipeline: the version
    predates the linear-time rule (stored without prepare_schema, as older releases
    did), so it runs on the backtracking engine under its limit."""
    body = with_v(CATASTROPHIC)
    body["unevaluatedProperties"] = False
    await registry_store.create_schema(seeded.group_id, "legacy", body, None)
    legacy = "/integration/custom-data/bulk-event/legacy"

    async def known() -> bool:
        r = await client.get(f"{legacy}/sessions/probe", headers=seeded.headers)
        return r.status != 404 or (await r.json())["code"] != "table_not_found"

    await poll("the gateway to know the table", known, 10, every=0.05)
    items = [emp(f"x{i}", v=A_MILLION) for i in range(3)] + [emp("fine", v="aa"), emp("no", v="a")]
    r = await client.post(
        f"{legacy}?partial=true", data=orjson.dumps(items), headers=seeded.headers
    )
    assert r.status == 202, await r.text()
    bad = (await r.json())["eventId"]
    # an unrelated event on the same partition (same scope), behind the costly bulk
    r = await client.post(
        "/integration/custom-data/event/legacy",
        json=emp("after", v="aaaa"),  # matches ^(a+)+\1$ (aa + aa)
        headers=seeded.headers,
    )
    assert r.status == 202
    ok = (await r.json())["eventId"]
    await pipeline.run()
    rc = await receipt(client, seeded, bad)
    assert (rc["status"], rc["created"], rc["rejected"]) == ("applied", 1, 4)
    issues = [(i["index"], i["code"], i["pointer"]) for i in rc["issues"]]
    assert issues == [(n, "pattern_too_costly", "/v") for n in range(3)] + [
        (4, "schema_violation", "/v")  # "a" does not match: decided, not too costly
    ]
    assert "too costly to check" in rc["issues"][0]["message"]
    assert counts(await receipt(client, seeded, ok)) == only("created")
    assert sorted(await stored(pool, "_directory_legacy")) == ["after", "fine"]


# ---- 2, 3. integers beyond 64 bits, duplicate keys ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "pointer"),
    [
        (b'{"employeeId": "e1", "employee": {"age": ' + BIG.encode() + b"}}", "number_out_of_range",
         "/employee/age"),
        (b'{"employeeId": "a", "employeeId": "b"}', "duplicate_key", ""),
    ],
)  # fmt: skip
async def test_the_gateway_refuses_a_single_event_orjson_would_change(
    client: Client, seeded: Seeded, body: bytes, code: str, pointer: str
) -> None:
    r = await post_raw(client, seeded, body)
    out = await r.json()
    assert (r.status, out["code"], out["pointer"]) == (400, code, pointer)


@pytest.mark.parametrize(
    ("body", "code", "pointer"),
    [
        (b'{"employeeId": "e1", "employee": {"age": ' + BIG.encode() + b"}}", "number_out_of_range",
         "/employee/age"),
        (b'{"employeeId": "a", "employeeId": "b"}', "duplicate_key", ""),
    ],
)  # fmt: skip
async def test_the_worker_rejects_a_single_event_an_older_gateway_let_through(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    body: bytes,
    code: str,
    pointer: str,
) -> None:
    monkeypatch.setattr(jsontext, "refuse_lossy", lambda raw, value: None)
    r = await post_raw(client, seeded, body)
    assert r.status == 202, await r.text()
    bad = (await r.json())["eventId"]
    ok = await post(client, seeded, emp("ok"))
    await pipeline.run()
    rc = await receipt(client, seeded, bad)
    assert rc["status"] == "rejected"
    assert [(i["code"], i["pointer"]) for i in rc["issues"]] == [(code, pointer)]
    assert counts(await receipt(client, seeded, ok)) == only("created")
    assert sorted(await stored(pool)) == ["ok"]  # 1.2345678901234568e+29 was never stored
    r = await client.get("/api/v1/sync-issues", headers=ADMIN)
    assert [i["code"] for i in (await r.json())["items"]] == [code]


def bulk_body(*items: bytes) -> bytes:
    return b"[" + b",".join(items) + b"]"


BULK_ITEMS = bulk_body(
    b'{"employeeId": "a"}',
    b'{"employeeId": "b", "employee": {"age": ' + BIG.encode() + b"}}",
    b'{"employeeId": "c", "active": true, "active": false}',
    b'{"employeeId": "d"}',
)


async def test_bulk_items_orjson_would_change_reject_the_snapshot(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post_bulk(client, seeded, [emp("b"), emp("c"), emp("z")])
    await pipeline.run()
    before = {k: v["version"] for k, v in (await stored(pool)).items()}
    r = await post_bulk(client, seeded, BULK_ITEMS)
    await pipeline.run()
    rc = await receipt(client, seeded, r["eventId"])
    assert (rc["status"], rc["rejected"]) == ("rejected", 2)
    assert [(i["index"], i["code"], i["pointer"], i["resourceId"]) for i in rc["issues"]] == [
        (1, "number_out_of_range", "/employee/age", "b"),
        (2, "duplicate_key", "", "c"),
    ]
    assert {k: v["version"] for k, v in (await stored(pool)).items()} == before


async def test_partial_bulk_applies_the_rest_and_keeps_the_faulty_ids(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post_bulk(client, seeded, [emp("b"), emp("c"), emp("z")])
    await pipeline.run()
    r = await post_bulk(client, seeded, BULK_ITEMS, "partial=true")
    await pipeline.run()
    rc = await receipt(client, seeded, r["eventId"])
    assert rc["status"] == "applied"
    assert (rc["created"], rc["deleted"], rc["rejected"]) == (2, 1, 2)  # a, d; z deleted
    state = await stored(pool)
    assert sorted(state) == ["a", "b", "c", "d"]  # b and c: at fault, never deleted
    assert state["b"]["data"] == emp("b") and state["c"]["data"] == emp("c")


async def test_xml_integer_beyond_64_bits_is_refused(client: Client, seeded: Seeded) -> None:
    r = await client.post(
        EVENT,
        data=f"<employee><employeeId>e1</employeeId><employee><age>{BIG}</age></employee>"
        "</employee>",
        headers={**seeded.headers, "Content-Type": "application/xml"},
    )
    out = await r.json()
    assert (r.status, out["code"]) == (400, "number_out_of_range") and "<age>" in out["message"]


# ---- 4. an id too long for the index -----------------------------------------------------------


async def test_an_id_too_long_is_rejected_and_the_partition_moves(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    long_id = "x" * 3000  # PostgreSQL: index row size 3048 exceeds btree maximum 2704
    bad = await post(client, seeded, emp(long_id))
    snap = await post_bulk(client, seeded, [emp("a"), emp(long_id)], "groupKey=g")
    ok = await post(client, seeded, emp("ok"))
    await pipeline.run()
    rc = await receipt(client, seeded, bad)
    assert rc["status"] == "rejected"
    assert [(i["code"], i["pointer"]) for i in rc["issues"]] == [("invalid_id", "/employeeId")]
    assert f"at most {MAX_ID_LENGTH}" in rc["issues"][0]["message"]
    rc = await receipt(client, seeded, snap["eventId"])
    assert rc["status"] == "rejected"
    assert [(i["index"], i["code"]) for i in rc["issues"]] == [(1, "invalid_id")]
    assert counts(await receipt(client, seeded, ok)) == only("created")
    assert sorted(await stored(pool)) == ["ok"]


async def test_the_longest_id_in_the_widest_key_is_stored(
    client: Client, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    """The worst case of the bound: a 65-character resource type, a groupKey of 100
    four-byte characters and an id of MAX_ID_LENGTH four-byte characters fit both
    btree indexes (resources' key and resource_changes' key with the version)."""
    prefix, table = "_p" + "a" * 30, "_t" + "b" * 30
    who = await seed_directory(client, prefix=prefix, table=table)
    rt = f"{prefix}_{table}"
    assert len(rt) == 65
    rid, group = "\U0001f600" * MAX_ID_LENGTH, "\U0001f680" * 100
    eid = await post(client, who, emp(rid), group, table)
    await pipeline.run()
    await post(client, who, emp(rid, active=True), group, table)  # a second history row
    await pipeline.run()
    assert counts(await receipt(client, who, eid)) == only("created")
    row = await pool.fetchrow(
        "SELECT version, octet_length(resource_id) AS n FROM resources WHERE resource_type = $1",
        rt,
    )
    assert row is not None and (row["version"], row["n"]) == (2, 4 * MAX_ID_LENGTH)
    assert (
        await pool.fetchval("SELECT count(*) FROM resource_changes WHERE resource_type = $1", rt)
        == 2
    )


# ---- 5. characters XML cannot carry ------------------------------------------------------------


async def test_a_receipt_with_control_characters_is_well_formed_xml(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    key = "\u0001\u001b[31m"
    eid = await post(client, seeded, {"employeeId": "e1", key: 1})
    await pipeline.run()
    r = await client.get(
        f"/integration/custom-data/events/{eid}",
        headers={**seeded.headers, "Accept": "application/xml"},
    )
    assert r.status == 200 and r.content_type == "application/xml"
    raw = await r.read()
    assert re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]", raw) is None
    root = SafeET.fromstring(raw, forbid_dtd=True)  # expat: a strict XML 1.0 parser
    issue = root.find("issues")
    assert issue is not None
    assert issue.findtext("code") == "unknown_field"
    ptr = issue.find("pointer")
    assert ptr is not None and ptr.get("escaped") == "true"
    assert ptr.text == "/\\u0001\\u001b[31m"
