"""Field ownership end to end (issue 14, seed 002): local fields refused in every kind of
payload, edited only by PATCH through the pipeline, kept by every sync."""

from __future__ import annotations

import copy
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN, EMPLOYEE_SCHEMA, InlinePipeline, Seeded, seed_directory
from tests.helpers import INGEST, counts, emp, only, post, post_bulk, receipt

RT = "_directory_employee"
Client = TestClient[Any, Any]


def owned_schema() -> dict[str, Any]:
    """EMPLOYEE_SCHEMA with two local fields at the top and one nested."""
    s = copy.deepcopy(EMPLOYEE_SCHEMA)
    s["properties"]["notes"] = {"type": "string", "maxLength": 20, "x-ownership": "local"}
    s["properties"]["tags"] = {
        "type": "array",
        "items": {"type": "string"},
        "default": [],  # never filled in by a sync: it would carry a local field
        "x-ownership": "local",
    }
    s["properties"]["contact"] = {"type": "string", "format": "email", "x-ownership": "local"}
    s["properties"]["employee"]["properties"]["remark"] = {
        "type": "string",
        "x-ownership": "local",
    }
    return s


@pytest.fixture
async def owned(client: Client) -> Seeded:
    return await seed_directory(client, schema=owned_schema())


async def patch(
    client: Client, rid: str, body: Any, status: int = 202, **params: str
) -> dict[str, Any]:
    r = await client.patch(
        f"/api/v1/resources/{RT}/{rid}",
        json=body,
        params=params,
        headers={**ADMIN, "Content-Type": "application/merge-patch+json"},
    )
    out = dict(await r.json())
    assert r.status == status, out
    return out


async def admin_receipt(client: Client, eid: str) -> dict[str, Any]:
    r = await client.get(f"{INGEST}/events/{eid}", headers=ADMIN)
    assert r.status == 200, await r.text()
    return dict(await r.json())


async def row(pool: asyncpg.Pool, rid: str, group_key: str = "") -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT * FROM resources WHERE resource_type = $1 AND group_key = $2 AND resource_id = $3",
        RT,
        group_key,
        rid,
    )


async def changes(pool: asyncpg.Pool, rid: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT * FROM resource_changes WHERE resource_type = $1 AND resource_id = $2"
            " ORDER BY version",
            RT,
            rid,
        )
    )


DOC = emp("e1", active=False, employee={"username": "jdoe", "email": "j@x.io"})


async def _created_and_patched(client: Client, owned: Seeded, pipeline: InlinePipeline) -> str:
    await post(client, owned, DOC)
    await pipeline.run()
    eid = (await patch(client, "e1", {"notes": "hi", "employee": {"remark": "kind"}}))["eventId"]
    await pipeline.run()
    return str(eid)


# ---- local fields are refused in synced payloads ---------------------------------------


async def test_a_single_event_carrying_local_fields_is_rejected(
    client: Client, owned: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    eid = await post(client, owned, {**DOC, "notes": "x", "employee": {"remark": "r"}})
    await pipeline.run()
    rc = await receipt(client, owned, eid)
    assert rc["status"] == "rejected" and counts(rc) == only("rejected")
    found = {(i["code"], i["pointer"]) for i in rc["issues"]}
    assert found == {("field_not_owned", "/notes"), ("field_not_owned", "/employee/remark")}
    assert await row(pool, "e1") is None
    issues = await pool.fetch("SELECT code, pointer FROM sync_issues WHERE event_id = $1", eid)
    assert {(i["code"], i["pointer"]) for i in issues} == found


async def test_an_xml_body_carrying_a_local_field_is_rejected(
    client: Client, owned: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    xml = b"<employee><employeeId>x1</employeeId><notes>mine</notes></employee>"
    r = await client.post(
        f"{INGEST}/event/employee",
        data=xml,
        headers={**owned.headers, "Content-Type": "application/xml"},
    )
    assert r.status == 202, await r.text()
    await pipeline.run()
    rc = await receipt(client, owned, (await r.json())["eventId"])
    assert rc["status"] == "rejected"
    assert [(i["code"], i["pointer"]) for i in rc["issues"]] == [("field_not_owned", "/notes")]
    assert await row(pool, "x1") is None


async def test_a_bulk_item_carrying_a_local_field_rejects_the_snapshot(
    client: Client, owned: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    r = await post_bulk(client, owned, [emp("a"), emp("b", tags=["t"])])
    await pipeline.run()
    rc = await receipt(client, owned, r["eventId"])
    assert rc["status"] == "rejected" and rc["rejected"] == 1
    (issue,) = rc["issues"]
    assert (issue["code"], issue["pointer"], issue["index"], issue["resourceId"]) == (
        "field_not_owned",
        "/tags",
        1,
        "b",
    )
    assert await row(pool, "a") is None
    # with partial, only that item is refused
    r = await post_bulk(client, owned, [emp("a"), emp("b", tags=["t"])], "partial=true")
    await pipeline.run()
    rc = await receipt(client, owned, r["eventId"])
    assert (rc["status"], rc["created"], rc["rejected"]) == ("applied", 1, 1)


# ---- PATCH edits local fields only -----------------------------------------------------


async def test_patch_changes_local_fields_through_the_pipeline(
    client: Client, owned: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    eid = await _created_and_patched(client, owned, pipeline)
    rc = await admin_receipt(client, eid)
    assert rc["status"] == "applied" and rc["kind"] == "patch" and counts(rc) == only("updated")
    stored = await row(pool, "e1")
    assert stored is not None and stored["version"] == 2
    assert stored["data"] == {
        **DOC,
        "notes": "hi",
        "employee": {**DOC["employee"], "remark": "kind"},
    }
    assert stored["name"] == "jdoe"
    # the content hash covers external fields only: the patch leaves it as it was
    first = (await changes(pool, "e1"))[0]
    assert first["after"] == DOC
    h = await changes(pool, "e1")
    assert [(c["version"], c["op"]) for c in h] == [(1, "created"), (2, "updated")]
    assert h[1]["actor"] == {"admin": True} and h[1]["event_id"] == eid
    assert sorted((p["op"], p["path"]) for p in h[1]["patch"]) == [
        ("add", "/employee/remark"),
        ("add", "/notes"),
    ]
    assert h[1]["after"] == stored["data"]
    event = await pool.fetchrow("SELECT * FROM ingest_events WHERE event_id = $1", eid)
    assert event["kind"] == "patch" and event["integration_id"] is None
    # the ingest key does not read the admin's receipt
    r = await client.get(f"{INGEST}/events/{eid}", headers=owned.headers)
    assert r.status == 404

    # null removes a local field (RFC 7396); the event and actor parameters are kept
    body = await patch(client, "e1", {"notes": None}, event="cleanup", actor='"ops"')
    await pipeline.run()
    assert (await admin_receipt(client, body["eventId"]))["updated"] == 1
    stored = await row(pool, "e1")
    assert stored is not None and "notes" not in stored["data"] and stored["version"] == 3
    last = (await changes(pool, "e1"))[-1]
    assert last["event"] == "cleanup" and last["actor"] == {"admin": True, "actor": "ops"}
    assert last["patch"] == [{"op": "remove", "path": "/notes"}]


async def test_patch_refuses_external_and_unknown_fields(
    client: Client, owned: Seeded, pipeline: InlinePipeline
) -> None:
    await post(client, owned, DOC)
    await pipeline.run()
    for body, pointer in (
        ({"active": True}, "/active"),
        ({"employee": {"username": "x"}}, "/employee/username"),
        ({"employee": None}, "/employee"),
        ({"notes": "ok", "employeeId": "e2"}, "/employeeId"),
    ):
        out = await patch(client, "e1", body, 409)
        assert (out["code"], out["pointer"]) == ("field_not_owned", pointer), out
    out = await patch(client, "e1", {"nickname": "x"}, 400)
    assert (out["code"], out["pointer"]) == ("unknown_field", "/nickname")
    out = await patch(client, "e1", ["notes"], 400)
    assert out["code"] == "body_not_object"
    out = await patch(client, "nope", {"notes": "x"}, 404)
    assert out["code"] == "resource_not_found"
    r = await client.patch(f"/api/v1/resources/{RT}/e1", json={"notes": "x"}, headers=owned.headers)
    assert r.status == 401


async def test_a_patch_whose_result_is_invalid_is_a_rejected_receipt(
    client: Client, owned: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post(client, owned, DOC)
    await pipeline.run()
    eid = (await patch(client, "e1", {"notes": "x" * 21}))["eventId"]
    await pipeline.run()
    rc = await admin_receipt(client, eid)
    assert rc["status"] == "rejected"
    assert [(i["code"], i["pointer"]) for i in rc["issues"]] == [("schema_violation", "/notes")]
    stored = await row(pool, "e1")
    assert stored is not None and stored["version"] == 1 and stored["data"] == DOC


async def test_a_patch_of_a_resource_deleted_before_it_is_processed_is_rejected(
    client: Client, owned: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post(client, owned, DOC)
    await pipeline.run()
    r = await client.delete(f"{INGEST}/employee?resourceIds=e1", headers=owned.headers)
    assert r.status == 202
    # PostgreSQL still holds e1, so the PATCH is accepted; the delete goes first
    eid = (await patch(client, "e1", {"notes": "x"}))["eventId"]
    await pipeline.run()
    rc = await admin_receipt(client, eid)
    assert rc["status"] == "rejected" and rc["rejected"] == 1
    assert [(i["code"], i["resourceId"]) for i in rc["issues"]] == [("resource_not_found", "e1")]
    assert await row(pool, "e1") is None
    assert (await patch(client, "e1", {"notes": "y"}, 404))["code"] == "resource_not_found"


async def test_patched_local_values_are_normalised_like_synced_ones(
    client: Client, owned: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post(client, owned, DOC)
    await pipeline.run()
    stored = await row(pool, "e1")
    assert stored is not None and stored["data"] == DOC  # no local default filled in
    eid = (await patch(client, "e1", {"contact": " Ann@EXAMPLE.COM "}))["eventId"]
    await pipeline.run()
    assert (await admin_receipt(client, eid))["updated"] == 1
    stored = await row(pool, "e1")
    assert stored is not None and stored["data"]["contact"] == "Ann@example.com"
    last = (await changes(pool, "e1"))[-1]
    assert last["patch"] == [{"op": "add", "path": "/contact", "value": "Ann@example.com"}]
    # the same value in another spelling changes nothing
    eid = (await patch(client, "e1", {"contact": "Ann@Example.com"}))["eventId"]
    await pipeline.run()
    assert counts(await admin_receipt(client, eid)) == only("unchanged")
    eid = (await patch(client, "e1", {"contact": "not an email"}))["eventId"]
    await pipeline.run()
    rc = await admin_receipt(client, eid)
    assert rc["status"] == "rejected"
    assert [(i["code"], i["pointer"]) for i in rc["issues"]] == [("invalid_format", "/contact")]


# ---- syncs keep local fields -----------------------------------------------------------


async def test_single_syncs_keep_local_fields_and_stay_unchanged(
    client: Client, owned: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await _created_and_patched(client, owned, pipeline)
    before = await row(pool, "e1")
    assert before is not None
    # the same external data after a local edit: unchanged (no version, no history)
    eid = await post(client, owned, DOC)
    await pipeline.run()
    rc = await receipt(client, owned, eid)
    assert counts(rc) == only("unchanged")
    same = await row(pool, "e1")
    assert same is not None and same["version"] == 2 and same["data"] == before["data"]

    # a changed sync: the external fields change, the local ones stay
    changed = {**DOC, "active": True, "employee": {"username": "jdoe"}}
    eid = await post(client, owned, changed)
    await pipeline.run()
    assert counts(await receipt(client, owned, eid)) == only("updated")
    after = await row(pool, "e1")
    assert after is not None and after["version"] == 3
    assert after["data"] == {
        **changed,
        "notes": "hi",
        "employee": {"username": "jdoe", "remark": "kind"},
    }
    last = (await changes(pool, "e1"))[-1]
    assert sorted((p["op"], p["path"]) for p in last["patch"]) == [
        ("remove", "/employee/email"),
        ("replace", "/active"),
    ]
    assert last["after"] == after["data"]

    # a sync without the object that holds a local field keeps the field (and the object)
    eid = await post(client, owned, emp("e1", active=True))
    await pipeline.run()
    kept = await row(pool, "e1")
    assert kept is not None
    assert kept["data"] == {**emp("e1", active=True), "notes": "hi", "employee": {"remark": "kind"}}


async def test_bulk_syncs_keep_local_fields_and_stay_unchanged(
    client: Client, owned: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post_bulk(client, owned, [DOC, emp("e2")])
    await pipeline.run()
    await patch(client, "e1", {"tags": ["vip"]})
    await patch(client, "e2", {"notes": "two"})
    await pipeline.run()
    r = await post_bulk(client, owned, [DOC, emp("e2")])
    await pipeline.run()
    rc = await receipt(client, owned, r["eventId"])
    assert counts(rc) == {**only("unchanged", 2)}
    r = await post_bulk(client, owned, [{**DOC, "active": True}, emp("e2", active=False)])
    await pipeline.run()
    rc = await receipt(client, owned, r["eventId"])
    assert (rc["updated"], rc["unchanged"], rc["deleted"]) == (2, 0, 0)
    e1, e2 = await row(pool, "e1"), await row(pool, "e2")
    assert e1 is not None and e1["data"] == {**DOC, "active": True, "tags": ["vip"]}
    assert e2 is not None and e2["data"] == {**emp("e2", active=False), "notes": "two"}
    assert (e1["version"], e2["version"]) == (3, 3)


async def test_a_snapshot_deletes_a_resource_with_its_local_fields(
    client: Client, owned: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await _created_and_patched(client, owned, pipeline)
    r = await post_bulk(client, owned, [emp("e9")])
    await pipeline.run()
    rc = await receipt(client, owned, r["eventId"])
    assert (rc["created"], rc["deleted"]) == (1, 1)
    assert await row(pool, "e1") is None
    h = await changes(pool, "e1")
    assert [c["op"] for c in h] == ["created", "updated", "deleted"]
    assert h[1]["after"]["notes"] == "hi"  # history keeps them
    removed = {p["path"] for p in h[2]["patch"]}
    assert {"/notes", "/employee"} <= removed and h[2]["after"] is None
    # created again: no local fields come back
    await post(client, owned, DOC)
    await pipeline.run()
    again = await row(pool, "e1")
    assert again is not None and again["data"] == DOC and again["version"] == 4


# ---- schemas -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        (
            {"tags": {"type": "array", "items": {"type": "string", "x-ownership": "local"}}},
            "/schema/properties/tags/items/x-ownership",
        ),
        (
            {"notes": {"type": "string", "x-ownership": "mine"}},
            "/schema/properties/notes/x-ownership",
        ),
    ],
)
async def test_misplaced_ownership_is_refused(
    client: Client, change: dict[str, Any], pointer: str
) -> None:
    schema = copy.deepcopy(EMPLOYEE_SCHEMA)
    schema["properties"].update(change)
    r = await client.post(
        "/admin/v1/schema-groups", json={"name": "g", "prefix": "g"}, headers=ADMIN
    )
    gid = (await r.json())["id"]
    r = await client.post(
        f"/admin/v1/schema-groups/{gid}/schemas",
        json={"table": "t", "schema": schema},
        headers=ADMIN,
    )
    body = await r.json()
    assert r.status == 400, body
    assert (body["code"], body["pointer"]) == ("invalid_schema", pointer)
