"""No input stops a partition, end to end in one process (gateway → worker → projector,
real Redis and PostgreSQL): a costly pattern, integers beyond 64 bits, duplicate keys,
an id too long for PostgreSQL's index, and characters XML cannot carry in a receipt."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from defusedxml import ElementTree as SafeET

from tests.conftest import InlinePipeline, Seeded
from tests.helpers import employee_schema, post

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
