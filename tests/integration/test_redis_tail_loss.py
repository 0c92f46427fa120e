"""Redis losing the tail of its writes never wedges anything nor corrupts versions.

With ``appendfsync everysec`` a Redis crash may lose its last second of writes. The
dangerous case is a worker commit (change entry, write-model update, XACK) lost after
the projector applied its change entry: the raw event comes back, and a worker
deciding it again from the lost write model would emit ``created v1`` a second time
(the projector then looped on a duplicate key). These tests put Redis into exactly the
state such a loss leaves (the raw event back in the ingest stream, the write model and
the changes stream as they were before the commit) and check that every event still
takes effect once, with contiguous versions, and that the partition keeps going.
"""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
import orjson
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.projector.apply import apply_batch
from shared.config import Settings
from shared.events import Change, Effect, RawMeta, new_event_id
from shared.pg.resources import ResourceStore
from shared.redis import keyspace as ks
from tests.conftest import InlinePipeline, Seeded
from tests.helpers import emp, post, receipt

RT = "_directory_employee"
Client = TestClient[Any, Any]


async def _versions(pool: asyncpg.Pool, rid: str) -> list[tuple[int, str]]:
    rows = await pool.fetch(
        "SELECT version, op FROM resource_changes WHERE resource_id = $1 ORDER BY version", rid
    )
    return [(r["version"], r["op"]) for r in rows]


async def _lose_the_tail(
    redis: Redis, p: int, raw: list[Any], state_before: dict[Any, Any]
) -> None:
    """Redis as a crash left it after losing the worker's commits of ``raw`` (the raw
    events, as read before the worker took them) and everything written after them."""
    for _, fields in raw:
        await redis.xadd(ks.ingest_stream(p), fields)
    key = ks.state_key(p, RT, "")
    await redis.delete(key, ks.changes_stream(p))
    if state_before:
        await redis.hset(key, mapping=state_before)  # type: ignore[misc]


async def test_events_applied_before_redis_lost_their_commit_take_effect_once(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    redis: Redis, settings: Settings,
) -> None:  # fmt: skip
    p = ks.partition_of(RT, "", settings.partitions)
    await post(client, seeded, emp("a", active=True))
    await pipeline.run()
    state_before = await redis.hgetall(ks.state_key(p, RT, ""))  # type: ignore[misc]
    lost = [
        await post(client, seeded, emp("a", active=False)),  # a: updated v2
        await post(client, seeded, emp("b")),  # b: created v1
    ]
    raw = await redis.xrange(ks.ingest_stream(p))
    await pipeline.run()  # applied in PostgreSQL ...
    # ... and lost by Redis: a's commit (its raw event comes back), and b's raw event too
    await _lose_the_tail(redis, p, raw[:1], state_before)
    later = await post(client, seeded, emp("b", active=True))  # b: updated v2
    await pipeline.run()
    assert await _versions(pool, "a") == [(1, "created"), (2, "updated")]
    assert await _versions(pool, "b") == [(1, "created"), (2, "updated")]
    for eid in lost:
        assert (await receipt(client, seeded, eid))["status"] == "applied"
    assert (await receipt(client, seeded, later))["updated"] == 1
    n = await pool.fetchval("SELECT count(*) FROM ingest_events WHERE event_id = ANY($1)", lost)
    assert n == 2
    # the write model was rebuilt from PostgreSQL: the next change continues the versions
    await post(client, seeded, emp("a", active=True))
    await pipeline.run()
    assert [v for v, _ in await _versions(pool, "a")] == [1, 2, 3]
    assert await redis.xlen(ks.ingest_stream(p)) == 0
    assert await redis.get(ks.recovery_key(p)) is not None


async def test_the_projector_skips_a_change_whose_event_is_applied_already(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    redis: Redis, settings: Settings,
) -> None:  # fmt: skip
    """Defence in depth: the same event's change under a second stream id changes nothing."""
    eid = await post(client, seeded, emp("a"))
    p = ks.partition_of(RT, "", settings.partitions)
    await pipeline.run()
    row = await pool.fetchrow("SELECT * FROM resource_changes WHERE event_id = $1", eid)
    meta = RawMeta(eid, "single", seeded.integration_id, "employee", RT, "", None, None, 0)
    effect = Effect("created", "a", 1, "h", None, {}, row["after"])
    again = Change(meta, "applied", [effect], recheck=True)  # decided in recovery
    store = ResourceStore(pool)
    assert await apply_batch(store, p, [(b"99999999999999-0", again.encode())]) == 1
    assert await _versions(pool, "a") == [(1, "created")]


async def test_a_change_postgresql_refuses_becomes_a_rejected_receipt_and_the_partition_goes_on(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    settings: Settings,
) -> None:  # fmt: skip
    """The projector's fence: an id PostgreSQL cannot index (past the worker's bound, as a
    change entry written by an older worker could hold) must not stop the partition."""
    p = ks.partition_of(RT, "", settings.partitions)
    store = ResourceStore(pool)
    huge, fine = new_event_id(), new_event_id()

    def change(eid: str, rid: str) -> bytes:
        meta = RawMeta(eid, "single", seeded.integration_id, "employee", RT, "", None, None, 0)
        data = {"employeeId": rid}
        return Change(meta, "applied", [Effect("created", rid, 1, "h", None, {}, data)]).encode()

    long_id = secrets.token_hex(1500)  # random: a repeated character would compress
    batch = orjson.dumps([orjson.loads(change(huge, long_id)), orjson.loads(change(fine, "ok"))])
    assert await apply_batch(store, p, [(b"1-0", batch)]) == 1
    refused = await store.receipt(huge)
    assert refused is not None and refused.status == "rejected"
    assert refused.issues[0]["code"] == "unprocessable"
    assert "index row" in refused.issues[0]["message"]
    issue = await pool.fetchrow("SELECT * FROM sync_issues WHERE event_id = $1", huge)
    assert issue is not None and issue["code"] == "unprocessable"
    ok = await store.receipt(fine)
    assert ok is not None and ok.status == "applied"
    assert await _versions(pool, "ok") == [(1, "created")]
    assert await store.position(p) == (1, 0)
