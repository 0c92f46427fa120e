"""Safe schema evolution (issue 14): ``POST …/schemas/{table}/check`` answers what a
candidate version would refuse among the table's live resources (every groupKey) and how
it differs from the current version, storing nothing; ``PUT …?mode=strict`` refuses a
version live resources would fail."""

from __future__ import annotations

import copy
import time
from typing import Any

import asyncpg
import pytest

from shared.compat import MAX_LISTED
from shared.pg.live import LiveResourceStore
from tests.conftest import ADMIN, EMPLOYEE_SCHEMA, InlinePipeline, Seeded
from tests.helpers import emp, post_bulk, wait_receipt
from tests.integration.test_admin_api import error
from tests.integration.test_sources_admin import ok

Client = Any
G = "/admin/v1/schema-groups"


def requiring_active() -> dict[str, Any]:
    s = copy.deepcopy(EMPLOYEE_SCHEMA)
    s["required"] = ["employeeId", "active"]
    return s


def with_phone() -> dict[str, Any]:
    s = copy.deepcopy(EMPLOYEE_SCHEMA)
    s["properties"]["employee"]["properties"]["phone"] = {"type": "string"}
    return s


def doc(n: int) -> dict[str, Any]:
    """Every 7th employee lacks ``active``; every other one has a username."""
    extra: dict[str, Any] = {} if n % 7 == 0 else {"active": n % 2 == 0}
    if n % 2:
        extra["employee"] = {"username": f"u{n}"}
    return emp(f"{n:05d}", **extra)


async def load(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, sizes: dict[str, int]
) -> None:
    """The table's resources through the bulk path: ``sizes[groupKey]`` of them each."""
    start, events = 0, []
    for gk, n in sizes.items():
        out = await post_bulk(
            client, seeded, [doc(i) for i in range(start, start + n)], f"groupKey={gk}"
        )
        events.append(out["eventId"])
        start += n
    await pipeline.run()
    for eid in events:
        rc = await wait_receipt(client, seeded, eid)
        assert rc["status"] == "applied", rc


async def check(
    client: Client, gid: str, table: str, body: dict[str, Any], status: int = 200
) -> Any:
    r = await client.post(f"{G}/{gid}/schemas/{table}/check", json=body, headers=ADMIN)
    return await ok(r, status)


async def versions(client: Client, gid: str) -> list[int]:
    r = await client.get(f"{G}/{gid}/schemas/employee/versions", headers=ADMIN)
    return [v["version"] for v in (await ok(r))["items"]]


def missing_active(n: int) -> bool:
    return n % 7 == 0


async def test_check_of_a_table_with_10000_resources(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await load(client, seeded, pipeline, {"a": 6000, "b": 4000})
    assert await pool.fetchval("SELECT count(*) FROM resources") == 10_000
    t0 = time.monotonic()
    got = await check(client, seeded.group_id, "employee", {"schema": requiring_active()})
    took = time.monotonic() - t0
    want = sorted(
        ("a" if i < 6000 else "b", f"{i:05d}") for i in range(10_000) if missing_active(i)
    )
    assert (got["checked"], got["refused"], got["compatible"]) == (10_000, len(want), False)
    listed = got["refusedResources"]
    assert len(listed) == MAX_LISTED
    assert [(r["groupKey"], r["id"]) for r in listed] == want[:MAX_LISTED]
    assert all(
        [i["code"] for i in r["issues"]] == ["missing_field"] and r["issues"][0]["pointer"] == ""
        for r in listed
    )
    assert got["differences"] == [
        {"change": "required_added", "pointer": "/required", "property": "active"}
    ]
    assert (got["table"], got["resourceType"], got["version"]) == (
        "employee",
        "_directory_employee",
        1,
    )
    assert took < 5, f"the check of 10,000 resources took {took:.2f} s"
    assert await versions(client, seeded.group_id) == [1]


async def test_a_compatible_candidate_and_an_empty_table(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    got = await check(client, seeded.group_id, "employee", {"schema": requiring_active()})
    assert (got["checked"], got["refused"], got["compatible"]) == (0, 0, True)
    await load(client, seeded, pipeline, {"": 50})
    got = await check(client, seeded.group_id, "employee", {"schema": with_phone()})
    assert (got["checked"], got["refused"], got["refusedResources"]) == (50, 0, [])
    assert got["differences"] == [
        {
            "change": "property_added",
            "pointer": "/properties/employee/properties/phone",
            "type": ["string"],
        }
    ]


async def test_only_the_tables_own_resources_count(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    r = await client.post(
        f"{G}/{seeded.group_id}/schemas",
        json={"table": "person", "schema": EMPLOYEE_SCHEMA},
        headers=ADMIN,
    )
    assert r.status == 201
    out = await post_bulk(client, seeded, [emp("p1")], table="person")
    await load(client, seeded, pipeline, {"": 14})
    assert (await wait_receipt(client, seeded, out["eventId"]))["created"] == 1
    got = await check(client, seeded.group_id, "employee", {"schema": requiring_active()})
    assert (got["checked"], got["refused"]) == (14, 2)


async def test_a_changed_id_path_is_reported(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await load(client, seeded, pipeline, {"": 4})
    s = copy.deepcopy(EMPLOYEE_SCHEMA)
    s["resmo"] = {"id": "$.employee.username"}
    got = await check(client, seeded.group_id, "employee", {"schema": s})
    codes = {r["id"]: [i["code"] for i in r["issues"]] for r in got["refusedResources"]}
    assert codes == {
        "00000": ["missing_id"],
        "00001": ["id_changed"],
        "00002": ["missing_id"],
        "00003": ["id_changed"],
    }
    assert got["differences"] == [
        {"change": "constraints_changed", "pointer": "", "keywords": ["resmo"]}
    ]


async def test_the_check_takes_the_title_and_stores_nothing(
    client: Client, seeded: Seeded, pool: asyncpg.Pool
) -> None:
    gid = seeded.group_id
    r = await client.put(
        f"{G}/{gid}/schemas/employee",
        json={"schema": EMPLOYEE_SCHEMA, "title": "Staff Members"},
        headers=ADMIN,
    )
    assert r.status == 200
    r = await client.post(
        f"{G}/{gid}/schemas", json={"table": "person", "schema": EMPLOYEE_SCHEMA}, headers=ADMIN
    )
    assert r.status == 201
    gen = await pool.fetchval("SELECT generation FROM registry_state")
    got = await check(client, gid, "Staff%20Members", {"schema": with_phone(), "title": "Staff"})
    assert (got["table"], got["title"], got["version"]) == ("employee", "Staff Members", 2)
    r = await client.post(
        f"{G}/{gid}/schemas/employee/check",
        json={"schema": with_phone(), "title": "person"},
        headers=ADMIN,
    )
    await error(r, 409, "ambiguous_title")
    assert await pool.fetchval("SELECT generation FROM registry_state") == gen
    r = await client.get(f"{G}/{gid}/schemas/employee", headers=ADMIN)
    current = await ok(r)
    assert (current["version"], current["title"]) == (2, "Staff Members")


async def test_check_refusals(client: Client, seeded: Seeded) -> None:
    gid = seeded.group_id
    r = await client.post(f"{G}/{gid}/schemas/employee/check", json={"schema": {}}, headers=ADMIN)
    await error(r, 400, "schema_not_object")
    r = await client.post(
        f"{G}/{gid}/schemas/nobody/check", json={"schema": EMPLOYEE_SCHEMA}, headers=ADMIN
    )
    await error(r, 404, "schema_not_found")
    r = await client.post(f"{G}/{gid}/schemas/employee/check", json={"schema": EMPLOYEE_SCHEMA})
    await error(r, 401, "unauthorized")


# ---- PUT ?mode=strict ------------------------------------------------------------------


async def test_strict_put_refuses_what_live_resources_would_fail(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    gid = seeded.group_id
    await load(client, seeded, pipeline, {"x": 30, "y": 20})
    report = await check(client, gid, "employee", {"schema": requiring_active()})
    r = await client.put(
        f"{G}/{gid}/schemas/employee?mode=strict",
        json={"schema": requiring_active()},
        headers=ADMIN,
    )
    assert r.status == 409, await r.text()
    body = await r.json()
    assert body["code"] == "incompatible_schema"
    assert "8 of the table's 50" in body["message"]
    assert body["report"] == report
    assert await versions(client, gid) == [1]
    r = await client.put(
        f"{G}/{gid}/schemas/employee?mode=strict", json={"schema": with_phone()}, headers=ADMIN
    )
    assert (await ok(r))["version"] == 2
    for mode in ("?mode=lenient", ""):
        r = await client.put(
            f"{G}/{gid}/schemas/employee{mode}", json={"schema": requiring_active()}, headers=ADMIN
        )
        await ok(r)
    assert await versions(client, gid) == [1, 2, 3, 4]


@pytest.mark.parametrize("mode", ["Strict", "", "yes"])
async def test_an_unknown_mode_is_400(client: Client, seeded: Seeded, mode: str) -> None:
    r = await client.put(
        f"{G}/{seeded.group_id}/schemas/employee?mode={mode}",
        json={"schema": EMPLOYEE_SCHEMA},
        headers=ADMIN,
    )
    body = await error(r, 400, "invalid_parameter")
    assert body["pointer"] == "/query/mode"


# ---- the store reads in bounded batches ----------------------------------------------


async def test_the_scan_hands_over_bounded_batches_in_key_order(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await load(client, seeded, pipeline, {"b": 130, "a": 120})
    sizes: list[int] = []
    keys: list[tuple[str, str]] = []

    async def consume(rows: list[tuple[str, str, str]]) -> None:
        sizes.append(len(rows))
        keys.extend((gk, rid) for gk, rid, _ in rows)

    await LiveResourceStore(pool).scan("_directory_employee", consume, batch=100)
    assert sizes == [100, 100, 50]
    assert keys == sorted(keys) and len(set(keys)) == 250


async def test_the_refusal_and_the_check_answer_xml_too(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await load(client, seeded, pipeline, {"": 8})
    xml = {**ADMIN, "Accept": "application/xml"}
    gid = seeded.group_id
    body = {"schema": requiring_active()}
    r = await client.put(f"{G}/{gid}/schemas/employee?mode=strict", json=body, headers=xml)
    assert (r.status, r.content_type) == (409, "application/xml")
    text = await r.text()
    assert "incompatible_schema" in text and "00007" in text and "missing_field" in text
    r = await client.post(f"{G}/{gid}/schemas/employee/check", json=body, headers=xml)
    assert (r.status, r.content_type) == (200, "application/xml")
    assert "required_added" in await r.text()
