"""Who reads a receipt: the sending integration's ingest key, or the admin token (any)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.redis import keyspace as ks
from tests.conftest import ADMIN, ADMIN_TOKEN, InlinePipeline, Seeded, seed_directory
from tests.helpers import INGEST, delete, emp, post, post_bulk

Client = TestClient[Any, Any]


async def get(c: Client, eid: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    r = await c.get(f"{INGEST}/events/{eid}", headers=headers)
    return r.status, dict(await r.json())


async def test_the_admin_token_reads_every_receipt(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    other = await seed_directory(client, prefix="_other")
    mine, theirs = await post(client, seeded, emp("a")), await post(client, other, emp("b"))
    for eid in (mine, theirs):  # pending: from Redis
        status, body = await get(client, eid, ADMIN)
        assert status == 200 and body["status"] == "pending" and body["eventId"] == eid
    await pipeline.run()
    for eid, who in ((mine, seeded), (theirs, other)):  # applied: from PostgreSQL
        status, body = await get(client, eid, ADMIN)
        assert status == 200 and body["status"] == "applied", body
        assert body == (await get(client, eid, {"X-Ingest-Key": who.key}))[1]
    status, body = await get(client, "ev_000000000000deadbeefdeadbeef", ADMIN)
    assert status == 404 and body["code"] == "event_not_found"


async def test_ingest_keys_still_read_only_their_own(client: Client, seeded: Seeded) -> None:
    other = await seed_directory(client, prefix="_other")
    eid = await post(client, seeded, emp("a"))
    status, body = await get(client, eid, {"X-Ingest-Key": other.key})
    assert status == 404 and body["code"] == "event_not_found"
    # an ingest key header decides, whatever Authorization says
    both = {"X-Ingest-Key": other.key, "Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await get(client, eid, both))[0] == 404
    status, body = await get(client, eid, {"Authorization": "Bearer not-the-admin-token"})
    assert status == 401 and body["code"] == "invalid_ingest_key"
    status, body = await get(client, eid, {})
    assert status == 401 and body["code"] == "missing_ingest_key"


async def test_a_receipts_pending_marker_leaves_redis_once_postgresql_holds_it(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, redis: Redis
) -> None:
    """Redis keeps a pending marker per event in flight only: one per accepted event for
    the marker's 7-day TTL grew Redis by every event of a week."""
    single = await post(client, seeded, emp("m1"))
    snapshot = str((await post_bulk(client, seeded, [emp("m2"), emp("m3")]))["eventId"])
    gone = await delete(client, seeded, "m1")
    refused = await post(client, seeded, {"no": "id"})  # rejected: a receipt too
    events = (single, snapshot, gone, refused)
    keys = [ks.receipt_key(e) for e in events]
    assert await redis.exists(*keys) == len(keys)  # pending: the markers answer
    for eid in events:
        status, body = await get(client, eid, {"X-Ingest-Key": seeded.key})
        assert status == 200 and body["status"] == "pending", body
    await pipeline.run()
    assert await redis.exists(*keys) == 0
    other = await seed_directory(client, prefix="_other")
    for eid in events:  # from PostgreSQL, with the same access rule
        status, body = await get(client, eid, {"X-Ingest-Key": seeded.key})
        assert status == 200 and body["status"] in ("applied", "rejected"), body
        assert (await get(client, eid, {"X-Ingest-Key": other.key}))[0] == 404
