"""No input stops a partition, end to end in one process (gateway → worker → projector,
real Redis and PostgreSQL): a costly pattern, integers beyond 64 bits, duplicate keys,
an id too long for PostgreSQL's index, and characters XML cannot carry in a receipt."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from defusedxml import ElementTree as SafeET

from shared.schema_rules import MAX_ID_LENGTH
from tests.conftest import InlinePipeline, Seeded, seed_directory
from tests.helpers import counts, emp, employee_schema, only, post, post_bulk, receipt

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
