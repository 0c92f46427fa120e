"""Issue 14 through the pipeline: normalised-equal inputs are unchanged (single and bulk),
skip vs reject, a skipped record's resource is kept, defaults on read, schema warnings."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN, InlinePipeline, seed_directory
from tests.helpers import employee_schema, post, post_bulk, receipt

Client = TestClient[Any, Any]
RT = "_directory_employee"
PROPS: dict[str, Any] = {
    "employeeId": {"type": "string"},
    "name": {"type": "string"},
    "mail": {"type": "string", "format": "email"},
    "seen": {"type": "string", "format": "date-time"},
    "site": {"type": "string", "format": "uri"},
    "employee": {
        "type": "object",
        "properties": {
            "phone": {"type": "string", "format": "phone"},
            "level": {"type": "integer", "default": 1},
        },
    },
    "status": {"type": "string", "default": "active"},
}


def schema(**resmo: Any) -> dict[str, Any]:
    return employee_schema(
        properties=PROPS, required=["employeeId", "name"], resmo={"id": "employeeId", **resmo}
    )


def doc(rid: str, **extra: Any) -> dict[str, Any]:
    return {"employeeId": rid, "name": rid.upper(), **extra}


async def rows(pool: asyncpg.Pool) -> dict[str, asyncpg.Record]:
    found = await pool.fetch("SELECT * FROM resources WHERE resource_type = $1", RT)
    return {r["resource_id"]: r for r in found}


async def test_single_events_that_normalise_equal_are_unchanged(
    client: Client, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    seeded = await seed_directory(client, schema=schema(defaultRegion="US"))
    first = doc("e1", mail=" Ann@EXAMPLE.com ", seen="2000-01-01T01:00:00+01:00",
                site="HTTPS://Example.com:443/a/../b",
                employee={"phone": "(555) 123-4567"})  # fmt: skip
    same = doc("e1", mail="Ann@example.com", seen=946684800, site="https://example.com/b",
               employee={"phone": "+1 555-123-4567", "level": 1}, status="active")  # fmt: skip
    e1 = await post(client, seeded, first)
    e2 = await post(client, seeded, same)
    await pipeline.run()
    r1, r2 = await receipt(client, seeded, e1), await receipt(client, seeded, e2)
    assert (r1["status"], r1["created"]) == ("applied", 1), r1
    assert (r2["status"], r2["unchanged"], r2["updated"]) == ("applied", 1, 0), r2
    row = (await rows(pool))["e1"]
    assert row["version"] == 1
    assert row["data"] == {
        "employeeId": "e1", "name": "E1", "mail": "Ann@example.com",
        "seen": "2000-01-01 00:00:00", "site": "https://example.com/b",
        "employee": {"phone": "+15551234567", "level": 1}, "status": "active",
    }  # fmt: skip

    bad = await post(client, seeded, doc("e2", mail="nope", seen="yesterday"))
    await pipeline.run()
    rb = await receipt(client, seeded, bad)
    assert rb["status"] == "rejected"
    assert sorted((i["code"], i["pointer"]) for i in rb["issues"]) == [
        ("invalid_format", "/mail"),
        ("invalid_format", "/seen"),
    ]
    assert any("date-time" in i["message"] for i in rb["issues"])


async def test_a_snapshot_that_normalises_equal_is_unchanged(
    client: Client, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    seeded = await seed_directory(client, schema=schema())
    sent = [doc(f"e{i}", mail=f"u{i}@EXAMPLE.com", seen=f"2000-01-0{i}T00:00:00Z")
            for i in range(1, 4)]  # fmt: skip
    again = [doc(f"e{i}", mail=f"u{i}@example.com ", seen=f"2000-01-0{i} 00:00:00",
                 status="active") for i in range(1, 4)]  # fmt: skip
    first = await post_bulk(client, seeded, sent)
    await pipeline.run()
    assert (await receipt(client, seeded, first["eventId"]))["created"] == 3
    second = await post_bulk(client, seeded, again, "partial=false")
    await pipeline.run()
    rc = await receipt(client, seeded, second["eventId"])
    assert (rc["status"], rc["unchanged"], rc["updated"]) == ("applied", 3, 0), rc
    state = await rows(pool)
    assert state["e2"]["data"]["mail"] == "u2@example.com"
    assert state["e2"]["data"]["seen"] == "2000-01-02 00:00:00"
    # a changed item is stored shaped too (it is re-read from the part as sent)
    third = await post_bulk(client, seeded, [*again[:2], doc("e3", mail="NEW@X.ORG")])
    await pipeline.run()
    rc = await receipt(client, seeded, third["eventId"])
    assert (rc["updated"], rc["unchanged"]) == (1, 2), rc
    e3 = (await rows(pool))["e3"]["data"]
    assert e3 == {"employeeId": "e3", "name": "E3", "mail": "NEW@x.org", "status": "active"}


async def test_skip_vs_reject_single_and_bulk(
    client: Client, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    seeded = await seed_directory(client, schema=schema(onMissingRequired="skip"))
    first = await post_bulk(client, seeded, [doc("a"), doc("b"), doc("c")])
    await pipeline.run()
    assert (await receipt(client, seeded, first["eventId"]))["created"] == 3

    eid = await post(client, seeded, {"employeeId": "a", "mail": "a@x.com"})  # no name
    await pipeline.run()
    rc = await receipt(client, seeded, eid)
    assert (rc["status"], rc["skipped"], rc["rejected"], rc["updated"]) == ("applied", 1, 0, 0)
    assert [(i["code"], i["pointer"], i.get("resourceId")) for i in rc["issues"]] == [
        ("skipped_missing_required", "/name", "a")
    ]
    # the snapshot: b is incomplete (skipped: kept as it is), c is absent (deleted)
    snap = await post_bulk(client, seeded, [doc("a", status="x"), {"employeeId": "b"}, doc("d")])
    await pipeline.run()
    rc = await receipt(client, seeded, snap["eventId"])
    assert rc["status"] == "applied", rc
    counts = tuple(rc[k] for k in ("created", "updated", "deleted", "skipped", "rejected"))
    assert counts == (1, 1, 1, 1, 0)
    state = await rows(pool)
    assert sorted(state) == ["a", "b", "d"]
    assert state["b"]["version"] == 1 and state["b"]["data"]["name"] == "B"
    issues = await pool.fetch("SELECT * FROM sync_issues WHERE event_id = $1", snap["eventId"])
    assert [(i["code"], i["resource_id"], i["item_index"], i["pointer"]) for i in issues] == [
        ("skipped_missing_required", "b", 1, "/name")
    ]
    event = await pool.fetchrow("SELECT * FROM ingest_events WHERE event_id = $1", snap["eventId"])
    assert event["skipped"] == 1

    # the default ("reject"): the same incomplete record rejects its snapshot
    other = await seed_directory(client, prefix="_strict", schema=schema())
    snap = await post_bulk(client, other, [doc("a"), {"employeeId": "b"}])
    eid = await post(client, other, {"employeeId": "a"})
    await pipeline.run()
    rc = await receipt(client, other, snap["eventId"])
    assert (rc["status"], rc["rejected"], rc["skipped"]) == ("rejected", 1, 0)
    rc = await receipt(client, other, eid)
    assert rc["status"] == "rejected" and rc["issues"][0]["code"] == "missing_field"


async def test_defaults_declared_later_are_applied_on_read(
    client: Client, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    plain = employee_schema()
    seeded = await seed_directory(client, schema=plain)
    eid = await post(client, seeded, {"employeeId": "e1", "employee": {"username": "u"}})
    await pipeline.run()
    assert (await receipt(client, seeded, eid))["created"] == 1
    later = employee_schema()
    later["properties"]["active"]["default"] = True
    later["properties"]["employee"]["properties"]["age"]["default"] = 30
    r = await client.put(f"/admin/v1/schema-groups/{seeded.group_id}/schemas/employee",
                         json={"schema": later}, headers=ADMIN)  # fmt: skip
    assert r.status == 200, await r.text()
    r = await client.get(f"/api/v1/resources/{RT}/e1", headers=ADMIN)
    body = await r.json()
    assert body["data"] == {"employeeId": "e1", "active": True,
                            "employee": {"username": "u", "age": 30}}  # fmt: skip
    assert body["_meta"]["defaultsApplied"] == ["/active", "/employee/age"]
    r = await client.get(f"/api/v1/resources/{RT}", headers=ADMIN)
    assert (await r.json())["items"][0]["_meta"]["defaultsApplied"] == ["/active", "/employee/age"]
    row = (await rows(pool))["e1"]  # the stored row is not rewritten
    assert row["data"] == {"employeeId": "e1", "employee": {"username": "u"}}


async def test_schema_warnings_and_checked_shaping_settings(client: Client) -> None:
    r = await client.post("/admin/v1/schema-groups", json={"name": "g", "prefix": "g"},
                          headers=ADMIN)  # fmt: skip
    gid = (await r.json())["id"]
    url = f"/admin/v1/schema-groups/{gid}/schemas"
    loose = employee_schema(
        properties={"employeeId": {"type": "string"}, "tags": {"type": "array"}}
    )
    r = await client.post(url, json={"table": "t", "schema": loose}, headers=ADMIN)
    assert r.status == 201
    warnings = (await r.json())["warnings"]
    assert [(w["code"], w["pointer"]) for w in warnings] == [
        ("undescribed_attribute", "/schema/properties/employeeId"),
        ("undescribed_attribute", "/schema/properties/tags"),
        ("array_without_items", "/schema/properties/tags"),
    ]
    described = {"type": "string", "title": "Id", "description": "the employee id"}
    r = await client.put(f"{url}/t", json={"schema": employee_schema(
        properties={"employeeId": described})}, headers=ADMIN)  # fmt: skip
    assert r.status == 200 and (await r.json())["warnings"] == []
    bad = employee_schema(resmo={"id": "employeeId", "defaultRegion": "Mars"})
    r = await client.post(url, json={"table": "u", "schema": bad}, headers=ADMIN)
    body = await r.json()
    assert r.status == 400 and body["code"] == "invalid_resmo", body
    assert body["pointer"] == "/schema/resmo/defaultRegion"
