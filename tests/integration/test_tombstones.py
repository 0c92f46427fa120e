"""Tombstone compaction: the write model forgets deleted ids after INGESTD_TOMBSTONE_TTL,
and a re-create after that still continues the version sequence (from PostgreSQL)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.config import ConfigError, Settings, parse_duration
from shared.redis import keyspace as ks
from shared.redis import writemodel
from shared.redis.conn import HeldConnection
from shared.redis.lease import Lease
from tests.conftest import InlinePipeline, Seeded
from tests.helpers import delete, emp, poll, post, post_bulk, receipt

RT = "_directory_employee"


def state_key(settings: Settings, group_key: str = "") -> str:
    return ks.state_key(ks.partition_of(RT, group_key, settings.partitions), RT, group_key)


async def versions(pool: asyncpg.Pool, rid: str) -> list[int]:
    rows = await pool.fetch(
        "SELECT version FROM resource_changes WHERE resource_id = $1 ORDER BY version", rid
    )
    return [r["version"] for r in rows]


@pytest.mark.slow
async def test_a_recreate_after_compaction_continues_the_version_sequence(
    client: TestClient[Any, Any], seeded: Seeded, settings: Settings, pool: asyncpg.Pool,
    redis: Redis,
) -> None:  # fmt: skip
    pipeline = InlinePipeline(replace(settings, tombstone_ttl_s=1), pool, redis)
    for doc in (emp("t1", active=True), emp("t1", active=False), emp("t2", active=True)):
        await post(client, seeded, doc)
    await delete(client, seeded, "t1,t2")
    await pipeline.run()
    key = state_key(settings)
    assert writemodel.decode(await redis.hget(key, "t1")) == ("", 3)  # type: ignore[misc]

    async def compacted() -> bool:
        await pipeline.run()  # each drain compacts once the partition is due
        return not await redis.hexists(key, "t1")  # type: ignore[misc]

    await poll("the tombstones to be compacted", compacted, within=15, every=0.3)
    assert not await redis.hexists(key, "t2")  # type: ignore[misc]
    live, dead, fields = await writemodel.counts(redis, key)
    assert writemodel.counts_agree(live, dead, fields) and (live, dead) == (0, 0)

    # re-created: a single event, and an item of a snapshot
    one = await post(client, seeded, emp("t1", active=True))
    bulk = (await post_bulk(client, seeded, [emp("t1", active=True), emp("t2")]))["eventId"]
    await pipeline.run()
    assert (await receipt(client, seeded, one))["created"] == 1
    rc = await receipt(client, seeded, bulk)
    assert (rc["status"], rc["created"], rc["unchanged"]) == ("applied", 1, 1), rc
    assert await versions(pool, "t1") == [1, 2, 3, 4]
    assert await versions(pool, "t2") == [1, 2, 3]
    row = await pool.fetchrow("SELECT version FROM resources WHERE resource_id = 't2'")
    assert row is not None and row["version"] == 3


async def test_a_worker_start_does_not_walk_the_keyspace_before_compaction_is_due(
    client: TestClient[Any, Any], seeded: Seeded, settings: Settings, pipeline: InlinePipeline,
    redis: Redis,
) -> None:  # fmt: skip
    """The first drain of a partition starts its compaction clock (an hour at the default
    TTL); later drains compact only once it is due, however old the tombstones."""
    await post(client, seeded, emp("c1"))
    await delete(client, seeded, "c1")
    await pipeline.run()
    key = state_key(settings)
    p = ks.partition_of(RT, "", settings.partitions)
    due = int(await redis.get(ks.compaction_due_key(p)))
    now_ms = time.time() * 1000
    assert now_ms + 3_500_000 < due <= now_ms + 3_600_000
    old = int(now_ms) - 8 * 86_400_000  # past the 7 days' TTL
    await redis.hset(key, "c1", b"|2|%d" % old)  # type: ignore[misc]
    await pipeline.run()
    assert await redis.hexists(key, "c1")  # type: ignore[misc]  # not due yet
    await redis.set(ks.compaction_due_key(p), 0)
    await pipeline.run()
    assert not await redis.hexists(key, "c1")  # type: ignore[misc]
    assert int(await redis.get(ks.compaction_due_key(p))) > time.time() * 1000 + 3_500_000


async def test_compaction_removes_only_tombstones_older_than_the_cutoff(
    client: TestClient[Any, Any], seeded: Seeded, settings: Settings, pipeline: InlinePipeline,
    redis: Redis,
) -> None:  # fmt: skip
    for rid in ("k1", "k2", "k3"):
        await post(client, seeded, emp(rid))
    await delete(client, seeded, "k1,k2")
    await pipeline.run()  # the default TTL (7 days): nothing is compacted by the drains
    key = state_key(settings)
    assert await redis.hexists(key, "k1")  # type: ignore[misc]
    p = ks.partition_of(RT, "", settings.partitions)
    lease = Lease(redis, ks.drain_lock(p))
    assert await lease.acquire()
    conn = HeldConnection(redis)
    try:
        before = int(time.time() * 1000) - 60_000
        assert await writemodel.compact(conn, lease, redis, key, before) == 0
        assert await redis.hlen(key) == 3 + writemodel.OWN_FIELDS  # type: ignore[misc]
        assert not await writemodel.is_compacted(redis, key)
        after = int(time.time() * 1000) + 1
        assert await writemodel.compact(conn, lease, redis, key, after) == 2
        assert await redis.hexists(key, "k3")  # type: ignore[misc]  # live: kept
        assert await writemodel.is_compacted(redis, key)
        live, dead, fields = await writemodel.counts(redis, key)
        assert (live, dead) == (1, 0) and writemodel.counts_agree(live, dead, fields)
    finally:
        await conn.release()
        await lease.release()


@pytest.mark.parametrize(
    ("raw", "seconds"), [("7d", 604_800), ("12h", 43_200), ("30m", 1800), ("45s", 45), ("90", 90)]
)
def test_tombstone_ttl_takes_a_duration(raw: str, seconds: int) -> None:
    assert parse_duration(raw) == seconds
    assert Settings.from_env({"INGESTD_TOMBSTONE_TTL": raw}).tombstone_ttl_s == seconds


@pytest.mark.parametrize("raw", ["7w", "0d", "-1", "d", "1.5h", "7 d"])
def test_a_bad_tombstone_ttl_is_a_configuration_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="INGESTD_TOMBSTONE_TTL"):
        Settings.from_env({"INGESTD_TOMBSTONE_TTL": raw})
