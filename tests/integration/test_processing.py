"""Processing through the worker and projector (in-process pipeline, real Redis + PostgreSQL)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import jsonpatch
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN, InlinePipeline, Seeded, seed_directory
from tests.helpers import counts, delete, emp, only, post, receipt

RT = "_directory_employee"
Client = TestClient[Any, Any]


async def resource(client: Client, rid: str, group_key: str = "") -> dict[str, Any] | None:
    r = await client.get(
        f"/api/v1/resources/{RT}/{rid}", params={"groupKey": group_key}, headers=ADMIN
    )
    if r.status == 404:
        assert (await r.json())["code"] == "resource_not_found"
        return None
    assert r.status == 200, await r.text()
    return dict(await r.json())


async def history(client: Client, rid: str, group_key: str = "") -> list[dict[str, Any]]:
    """Its history; [] for an id that never existed (the API answers 404 then)."""
    r = await client.get(
        f"/api/v1/resources/{RT}/{rid}/history", params={"groupKey": group_key}, headers=ADMIN
    )
    if r.status == 404:
        assert (await r.json())["code"] == "resource_not_found"
        return []
    assert r.status == 200, await r.text()
    return list((await r.json())["items"])


# ---- created / updated / unchanged ------------------------------------------------------


async def test_created_updated_unchanged(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    doc = emp(active=True, employee={"username": "jdoe", "email": "j@x.io", "age": 30})
    e1 = await post(client, seeded, doc)
    await pipeline.run()
    r1 = await receipt(client, seeded, e1)
    assert r1["status"] == "applied" and counts(r1) == only("created")
    res = await resource(client, "e1")
    assert res is not None
    assert res["_meta"]["version"] == 1 and res["data"] == doc and res["name"] == "jdoe"
    assert res["importantFields"] == {
        "employeeId": "e1",
        "$.employee.email": "j@x.io",
        "active": True,
    }

    # same content, different key order: unchanged, no version bump, no history row
    same = {
        "employee": {"age": 30, "email": "j@x.io", "username": "jdoe"},
        "active": True,
        "employeeId": "e1",
    }
    e2 = await post(client, seeded, same)
    await pipeline.run()
    r2 = await receipt(client, seeded, e2)
    assert r2["status"] == "applied" and counts(r2) == only("unchanged")
    after = await resource(client, "e1")
    assert after is not None
    assert after["_meta"]["version"] == 1 and after["_meta"]["lastEventId"] == e1
    assert after["_meta"]["updatedAt"] == res["_meta"]["updatedAt"]
    assert len(await history(client, "e1")) == 1

    changed = emp(active=False, employee={"username": "jdoe", "email": "j@x.io", "age": 30})
    e3 = await post(client, seeded, changed)
    await pipeline.run()
    r3 = await receipt(client, seeded, e3)
    assert counts(r3) == only("updated")
    res = await resource(client, "e1")
    assert res is not None and res["_meta"]["version"] == 2 and res["data"] == changed
    assert res["importantFields"]["active"] is False
    assert [h["op"] for h in await history(client, "e1")] == ["created", "updated"]
    n = await pool.fetchval("SELECT count(*) FROM ingest_events WHERE status = 'applied'")
    assert n == 3


async def test_several_events_for_one_resource_in_one_batch(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    eids = [await post(client, seeded, emp(employee={"age": i})) for i in range(1, 6)]
    eids.append(await post(client, seeded, emp(employee={"age": 5})))  # same as the last
    await pipeline.run()
    ops = [counts(await receipt(client, seeded, e)) for e in eids]
    assert ops == [only("created")] + [only("updated")] * 4 + [only("unchanged")]
    h = await history(client, "e1")
    assert [x["version"] for x in h] == [1, 2, 3, 4, 5]
    assert [x["after"]["employee"]["age"] for x in h] == [1, 2, 3, 4, 5]


async def test_integer_id_against_a_string_schema_is_rejected(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    # schema says string; an integer id violates it
    eid = await post(client, seeded, emp(7))
    await pipeline.run()
    r = await receipt(client, seeded, eid)
    assert r["status"] == "rejected"
    assert {i["pointer"] for i in r["issues"]} == {"/employeeId"}


# ---- rejections -------------------------------------------------------------------------


async def _rejected(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool, doc: Any
) -> tuple[str, dict[str, Any]]:
    eid = await post(client, seeded, doc)
    await pipeline.run()
    r = await receipt(client, seeded, eid)
    assert r["status"] == "rejected", r
    assert counts(r) == only("rejected")
    assert r["issues"], r
    for issue in r["issues"]:
        assert set(issue) <= {"code", "message", "pointer", "resourceId"}, issue
        assert {"code", "message", "pointer"} <= set(issue), issue
        assert issue["message"]
    rows = await pool.fetch("SELECT * FROM sync_issues WHERE event_id = $1 ORDER BY id", eid)
    assert [(x["code"], x["pointer"], x["resource_id"]) for x in rows] == [
        (i["code"], i["pointer"], i.get("resourceId")) for i in r["issues"]
    ]
    assert all(x["table_name"] == "employee" and x["resource_type"] == RT for x in rows)
    assert all(str(x["integration_id"]) == seeded.integration_id for x in rows)
    return eid, r


async def _state(pool: asyncpg.Pool) -> tuple[Any, ...]:
    res = await pool.fetch("SELECT resource_id, version, content_hash FROM resources ORDER BY 1")
    ch = await pool.fetchval("SELECT count(*) FROM resource_changes")
    return tuple(tuple(r) for r in res), ch


async def test_schema_violation_is_rejected_and_state_untouched(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post(client, seeded, emp(active=True))
    await pipeline.run()
    before = await _state(pool)
    _, r = await _rejected(client, seeded, pipeline, pool, emp(active="yes"))
    assert [(i["code"], i["pointer"]) for i in r["issues"]] == [("schema_violation", "/active")]
    assert r["issues"][0]["resourceId"] == "e1"
    assert await _state(pool) == before
    # the rejected content did not become the current hash: sending it fixed is "unchanged"
    eid = await post(client, seeded, emp(active=True))
    await pipeline.run()
    assert counts(await receipt(client, seeded, eid)) == only("unchanged")


async def test_nested_schema_violation_pointer(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    _, r = await _rejected(client, seeded, pipeline, pool, emp(employee={"age": "old"}))
    assert [(i["code"], i["pointer"]) for i in r["issues"]] == [
        ("schema_violation", "/employee/age")
    ]


async def test_unknown_field_is_rejected_with_its_pointer(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    _, r = await _rejected(client, seeded, pipeline, pool, emp(salary=100))
    assert [(i["code"], i["pointer"]) for i in r["issues"]] == [("unknown_field", "/salary")]
    assert "salary" in r["issues"][0]["message"]
    assert await _state(pool) == ((), 0)


async def test_missing_id_is_rejected(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    _, r = await _rejected(client, seeded, pipeline, pool, {"active": True})
    codes = [i["code"] for i in r["issues"]]
    assert "missing_id" in codes, r
    assert all("resourceId" not in i for i in r["issues"])
    assert await _state(pool) == ((), 0)


async def test_empty_id_is_rejected(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    _, r = await _rejected(client, seeded, pipeline, pool, emp(""))
    assert [(i["code"], i["pointer"]) for i in r["issues"]] == [("invalid_id", "/employeeId")]
    assert await _state(pool) == ((), 0)


@pytest.mark.parametrize("bad", [{"nested": "x"}, ["e1"], True, None, 1.5])
async def test_non_scalar_id_is_rejected(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool, bad: Any
) -> None:
    _, r = await _rejected(client, seeded, pipeline, pool, emp(bad))
    assert ("invalid_id", "/employeeId") in [(i["code"], i["pointer"]) for i in r["issues"]], r
    assert await _state(pool) == ((), 0)


async def test_rejection_in_a_batch_does_not_disturb_neighbours(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    a = await post(client, seeded, emp("a"))
    bad = await post(client, seeded, emp("a", salary=1))
    b = await post(client, seeded, emp("a", active=False))
    await pipeline.run()
    assert counts(await receipt(client, seeded, a)) == only("created")
    assert (await receipt(client, seeded, bad))["status"] == "rejected"
    assert counts(await receipt(client, seeded, b)) == only("updated")
    assert [h["version"] for h in await history(client, "a")] == [1, 2]


# ---- deletes ----------------------------------------------------------------------------


async def test_delete_existing_and_missing_ids(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post(client, seeded, emp("a"))
    await pipeline.run()
    eid = await delete(client, seeded, "a,b")
    await pipeline.run()
    r = await receipt(client, seeded, eid)
    assert r["status"] == "applied"
    assert counts(r) == only("deleted")
    assert r["ignored"] == ["b"]
    assert await resource(client, "a") is None
    h = await history(client, "a")
    assert [(x["version"], x["op"]) for x in h] == [(1, "created"), (2, "deleted")]
    assert h[1]["eventId"] == eid
    assert h[1]["patch"] == [{"op": "remove", "path": "/employeeId"}]
    assert await history(client, "b") == []
    # deleting it again is ignored too
    again = await delete(client, seeded, "a")
    await pipeline.run()
    r = await receipt(client, seeded, again)
    assert counts(r) == only("deleted", 0) and r["ignored"] == ["a"]
    assert len(await history(client, "a")) == 2


async def test_delete_then_recreate_continues_versions(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await post(client, seeded, emp("a"))
    await delete(client, seeded, "a")
    again = await post(client, seeded, emp("a"))  # same content as v1: still "created"
    await pipeline.run()
    assert counts(await receipt(client, seeded, again)) == only("created")
    await delete(client, seeded, "a")
    await pipeline.run()
    await post(client, seeded, emp("a", active=True))
    await pipeline.run()
    h = await history(client, "a")
    assert [(x["version"], x["op"]) for x in h] == [
        (1, "created"),
        (2, "deleted"),
        (3, "created"),
        (4, "deleted"),
        (5, "created"),
    ]
    res = await resource(client, "a")
    assert res is not None and res["_meta"]["version"] == 5


async def test_delete_only_touches_its_own_scope(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await post(client, seeded, emp("a"), group_key="x")
    await post(client, seeded, emp("a"), group_key="y")
    await pipeline.run()
    eid = await delete(client, seeded, "a", group_key="x")
    await pipeline.run()
    assert counts(await receipt(client, seeded, eid)) == only("deleted")
    assert await resource(client, "a", "x") is None
    assert await resource(client, "a", "y") is not None


# ---- scopes -----------------------------------------------------------------------------


async def test_group_keys_isolate_resources(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    e1 = await post(client, seeded, emp("a", active=True), group_key="acme")
    e2 = await post(client, seeded, emp("a", active=True), group_key="globex")
    e3 = await post(client, seeded, emp("a", active=True))  # the empty group
    await pipeline.run()
    for e in (e1, e2, e3):
        assert counts(await receipt(client, seeded, e)) == only("created")
    for g in ("acme", "globex", ""):
        res = await resource(client, "a", g)
        assert res is not None
        assert res["_meta"]["groupKey"] == g and res["_meta"]["version"] == 1


async def test_same_table_name_in_two_groups_are_two_resource_types(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    other = await seed_directory(client, prefix="_other")
    await post(client, seeded, emp("a"))
    await post(client, other, emp("a"))
    await pipeline.run()
    rows = await pool.fetch("SELECT resource_type, version FROM resources ORDER BY 1")
    assert [tuple(r) for r in rows] == [("_directory_employee", 1), ("_other_employee", 1)]


# ---- history ----------------------------------------------------------------------------


async def test_history_oldest_first_with_patches_and_metadata(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    v1 = emp("a", active=True, employee={"username": "a"})
    v2 = emp("a", active=False, employee={"username": "a", "email": "a@x.io"})
    e1 = await post(
        client, seeded, v1, group_key="g", event="hired", actor='{"name": "hr", "id": 7}'
    )
    e2 = await post(client, seeded, v2, group_key="g", event="changed", actor='"bot"')
    e3 = await delete(client, seeded, "a", group_key="g")
    await pipeline.run()
    h = await history(client, "a", "g")
    assert [x["version"] for x in h] == [1, 2, 3]
    assert [x["op"] for x in h] == ["created", "updated", "deleted"]
    assert [x["eventId"] for x in h] == [e1, e2, e3]
    assert [x["event"] for x in h] == ["hired", "changed", None]
    assert [x["actor"] for x in h] == [{"name": "hr", "id": 7}, "bot", None]
    assert sorted((p["op"], p["path"]) for p in h[0]["patch"]) == [
        ("add", "/active"),
        ("add", "/employee"),
        ("add", "/employeeId"),
    ]
    assert sorted(h[1]["patch"], key=lambda p: p["path"]) == [
        {"op": "replace", "path": "/active", "value": False},
        {"op": "add", "path": "/employee/email", "value": "a@x.io"},
    ]
    # every patch turns the previous state into the next
    state: dict[str, Any] = {}
    for x, want in zip(h, (v1, v2, {}), strict=True):
        state = jsonpatch.apply_patch(state, x["patch"])
        assert state == want
    for x in h:
        received = datetime.fromisoformat(x["receivedAt"])
        applied = datetime.fromisoformat(x["appliedAt"])
        assert received.tzinfo is not None and applied >= received
    r = await client.get(f"/api/v1/resources/{RT}/a/history", params={"groupKey": "g"})
    assert r.status == 401


async def test_receipt_records_event_and_times(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    eid = await post(client, seeded, emp("a"), group_key="g", event="hired")
    await pipeline.run()
    r = await receipt(client, seeded, eid)
    assert r["eventId"] == eid and r["kind"] == "single" and r["table"] == "employee"
    assert r["groupKey"] == "g" and r["issues"] == [] and r["ignored"] == []
    assert datetime.fromisoformat(r["processedAt"]) >= datetime.fromisoformat(r["receivedAt"])


# ---- receipts: who may read them --------------------------------------------------------


async def test_receipt_only_visible_to_same_integration(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    eid = await post(client, seeded, emp("a"))
    await pipeline.run()
    other = await seed_directory(client, prefix="_other")
    r = await client.get(f"/integration/custom-data/events/{eid}", headers=other.headers)
    assert r.status == 404 and (await r.json())["code"] == "event_not_found"
    # a second key of the same integration does see it
    r = await client.post(f"/admin/v1/integrations/{seeded.integration_id}/keys", headers=ADMIN)
    key2 = (await r.json())["ingestKey"]
    r = await client.get(f"/integration/custom-data/events/{eid}", headers={"X-Ingest-Key": key2})
    assert r.status == 200 and (await r.json())["status"] == "applied"
    r = await client.get("/integration/custom-data/events/ev_nope", headers=seeded.headers)
    assert r.status == 404 and (await r.json())["code"] == "event_not_found"
