"""Bulk snapshot sessions: parts in any order, duplicates, conflicts, abort, supersession."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from shared.config import Settings
from shared.redis import keyspace as ks
from tests.conftest import InlinePipeline, Seeded
from tests.helpers import emp, post_bulk, receipt, wait_key_known
from tests.integration.test_bulk import (
    Client,
    _seed_abc,
    history,
    part_query,
    scope,
)


async def test_session_out_of_order_with_duplicates_applies_once(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await _seed_abc(client, seeded, pipeline)
    p1, p2, p3 = [emp("a")], [emp("d"), emp("e")], [emp("f")]
    r3 = await post_bulk(client, seeded, p3, part_query("up1", 3, True, "event=sync"))
    assert r3["complete"] is False and r3["parts"] == 3 and r3["partsReceived"] == 1
    r1 = await post_bulk(client, seeded, p1, part_query("up1", 1))
    again = await post_bulk(client, seeded, p1, part_query("up1", 1))
    assert again["duplicate"] is True and again["partsReceived"] == 2
    assert r1["eventId"] == r3["eventId"] == again["eventId"]
    await pipeline.run()
    assert sorted(await scope(pool)) == ["a", "b", "c"]  # incomplete: nothing yet
    pending = await receipt(client, seeded, r3["eventId"])
    assert pending["status"] == "pending" and pending["session"]["partsReceived"] == 2
    r2 = await post_bulk(client, seeded, p2, part_query("up1", 2))
    assert r2["complete"] is True
    await pipeline.run()
    assert sorted(await scope(pool)) == ["a", "d", "e", "f"]
    rc = await receipt(client, seeded, r3["eventId"])
    assert (rc["created"], rc["deleted"], rc["unchanged"]) == (3, 2, 1)
    # a retry of any part after the commit is answered with the same event, changes nothing
    late = await post_bulk(client, seeded, p2, part_query("up1", 2))
    assert late["duplicate"] is True and late["eventId"] == r3["eventId"]
    conflict = await post_bulk(client, seeded, [emp("zz")], part_query("up1", 4), status=409)
    assert conflict["code"] in ("session_closed", "part_after_final")
    await pipeline.run()
    assert len(await pool.fetch("SELECT 1 FROM ingest_events WHERE kind = 'bulk'")) == 2
    rows = await history(pool, r3["eventId"])
    assert {h["event"] for h in rows} == {"sync"}


async def test_session_without_final_part_changes_nothing(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
) -> None:
    await _seed_abc(client, seeded, pipeline)
    r = await post_bulk(client, seeded, [emp("z")], part_query("never", 1))
    await post_bulk(client, seeded, [emp("y")], part_query("never", 2))
    await pipeline.run()
    assert sorted(await scope(pool)) == ["a", "b", "c"]
    assert await redis.xlen(ks.ingest_stream(0)) == 0
    keys = [k async for k in redis.scan_iter(match="*:session:*never")]
    assert len(keys) == 1 and 0 < await redis.ttl(keys[0]) <= settings.session_ttl
    assert (await receipt(client, seeded, r["eventId"]))["status"] == "pending"
    await redis.delete(keys[0])  # what expiry does
    rc = await receipt(client, seeded, r["eventId"])
    assert rc["status"] == "rejected" and rc["issues"][0]["code"] == "session_expired"


async def test_part_conflicts_are_409(client: Client, seeded: Seeded) -> None:
    await post_bulk(client, seeded, [emp("a")], part_query("c1", 1))
    out = await post_bulk(client, seeded, [emp("b")], part_query("c1", 1), status=409)
    assert out["code"] == "part_conflict"
    await post_bulk(client, seeded, [emp("c")], part_query("c1", 3))
    out = await post_bulk(client, seeded, [emp("d")], part_query("c1", 2, True), status=409)
    assert out["code"] == "final_conflict"
    await post_bulk(client, seeded, [emp("e")], part_query("c2", 2, True))
    out = await post_bulk(client, seeded, [emp("f")], part_query("c2", 3), status=409)
    assert out["code"] == "part_after_final"


async def test_abort_and_status_of_a_session(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    url = "/integration/custom-data/bulk-event/employee/sessions/ab1"
    await post_bulk(client, seeded, [emp("a")], part_query("ab1", 1))
    r = await client.get(url, headers=seeded.headers)
    st = await r.json()
    assert (st["state"], st["partsReceived"], st["parts"]) == ("open", 1, None)
    r = await client.delete(url, headers=seeded.headers)
    assert r.status == 204
    out = await post_bulk(client, seeded, [emp("b")], part_query("ab1", 2, True), status=409)
    assert out["code"] == "session_aborted"
    await pipeline.run()
    assert await scope(pool) == {}
    r = await client.get(url.replace("ab1", "nope"), headers=seeded.headers)
    assert r.status == 404


async def test_newer_snapshot_supersedes_an_older_open_session(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    old = await post_bulk(client, seeded, [emp("old1")], part_query("older", 1))
    new = await post_bulk(client, seeded, [emp("new1")], part_query("newer", 1, True))
    await pipeline.run()
    assert sorted(await scope(pool)) == ["new1"]
    out = await post_bulk(client, seeded, [emp("old2")], part_query("older", 2, True), status=409)
    assert out["code"] == "session_superseded"
    rc = await receipt(client, seeded, old["eventId"])
    assert rc["status"] == "rejected" and rc["issues"][0]["code"] == "session_superseded"
    assert (await receipt(client, seeded, new["eventId"]))["created"] == 1


async def test_older_session_completing_later_in_the_stream_is_rejected(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post_bulk(client, seeded, [emp("o1")], part_query("older", 1))
    await post_bulk(client, seeded, [emp("n1")], part_query("newer", 1, True))
    done = await post_bulk(client, seeded, [emp("o2")], part_query("older", 2, True))
    assert done["complete"] is True  # both complete before the worker runs
    await pipeline.run()
    assert sorted(await scope(pool)) == ["n1"]
    rc = await receipt(client, seeded, done["eventId"])
    assert rc["status"] == "rejected" and rc["issues"][0]["code"] == "snapshot_superseded"


async def test_session_of_another_integration_is_409(
    client: Client, seeded: Seeded, pool: asyncpg.Pool
) -> None:
    await post_bulk(client, seeded, [emp("a")], part_query("shared", 1))
    r = await client.post(
        "/admin/v1/integrations",
        json={"name": "other", "schemaGroup": seeded.group_id},
        headers={"Authorization": "Bearer test-admin-token"},
    )
    other = Seeded(seeded.group_id, "", (await r.json())["ingestKey"], "")
    await wait_key_known(client, other)  # the gateway's registry poll, not a fixed sleep
    out = await post_bulk(client, other, [emp("b")], part_query("shared", 2), status=409)
    assert out["code"] == "session_conflict"


# ---- XML ------------------------------------------------------------------------------------
