"""Processing under faults the pipeline must absorb: a lost write model, input PostgreSQL
cannot store, and crash windows made deterministic (in-process pipeline, real Redis +
PostgreSQL)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from services.projector.apply import apply_batch
from services.worker.drain import Drainer
from shared.pg.resources import ResourceStore
from shared.redis import keyspace as ks
from shared.redis.consumer import ensure_group
from tests.conftest import InlinePipeline, Seeded
from tests.helpers import counts, delete, emp, only, post, receipt
from tests.integration.test_processing import RT, Client, history

# ---- write-model state lost -------------------------------------------------------------


async def test_lost_write_model_is_rebuilt_from_postgres(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, redis: Redis
) -> None:
    await post(client, seeded, emp("same", active=True))
    await post(client, seeded, emp("changed", active=True))
    await post(client, seeded, emp("gone", active=True))
    await delete(client, seeded, "gone")
    await pipeline.run()
    lost = [k async for k in redis.scan_iter(match=ks.state_pattern())]
    assert lost
    await redis.delete(*lost)

    e_same = await post(client, seeded, emp("same", active=True))
    e_changed = await post(client, seeded, emp("changed", active=False))
    e_gone = await post(client, seeded, emp("gone", active=True))
    e_del = await delete(client, seeded, "gone,never")
    await pipeline.run()
    assert counts(await receipt(client, seeded, e_same)) == only("unchanged")
    assert counts(await receipt(client, seeded, e_changed)) == only("updated")
    assert counts(await receipt(client, seeded, e_gone)) == only("created")
    r = await receipt(client, seeded, e_del)
    assert counts(r) == only("deleted") and r["ignored"] == ["never"]
    assert [x["version"] for x in await history(client, "same")] == [1]
    assert [x["version"] for x in await history(client, "changed")] == [1, 2]
    assert [(x["version"], x["op"]) for x in await history(client, "gone")] == [
        (1, "created"),
        (2, "deleted"),
        (3, "created"),
        (4, "deleted"),
    ]


# ---- input PostgreSQL cannot store ------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "params"),
    [
        pytest.param({"employeeId": "a", "employee": {"username": "x\u0000y"}}, {}, id="data"),
        pytest.param({"employeeId": "a\u0000"}, {}, id="id"),
        pytest.param({"employeeId": "a"}, {"groupKey": "g\u0000"}, id="groupKey"),
        pytest.param({"employeeId": "a"}, {"event": "e\u0000"}, id="event"),
        pytest.param({"employeeId": "a"}, {"actor": '"\\u0000"'}, id="actor"),
    ],
)
async def test_nul_characters_do_not_wedge_the_partition(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, doc: Any, params: dict[str, str]
) -> None:
    """PostgreSQL text/jsonb cannot hold U+0000: such input must be refused or rejected,
    never reach the projector and fail its batch forever."""
    r = await client.post(
        "/integration/custom-data/event/employee", json=doc, params=params, headers=seeded.headers
    )
    if r.status == 202:
        bad = (await r.json())["eventId"]
    else:
        assert r.status == 400, await r.text()
        bad = None
    g = params.get("groupKey", "") if bad is not None else ""  # refused: nothing enqueued
    ok = await post(client, seeded, emp("b"), group_key=g)
    await pipeline.run()
    if bad is not None:
        assert (await receipt(client, seeded, bad))["status"] == "rejected"
    assert counts(await receipt(client, seeded, ok)) == only("created")


async def test_deeply_nested_body_does_not_wedge_the_partition(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    raw = b'{"employeeId": "a", "employee": {"deep": ' + b'{"a": ' * 300 + b"1" + b"}" * 302
    r = await client.post(
        "/integration/custom-data/event/employee", data=raw, headers=seeded.headers
    )
    bad = (await r.json())["eventId"] if r.status == 202 else None
    if bad is None:
        assert r.status == 400, await r.text()
    ok = await post(client, seeded, emp("b"))
    try:
        await pipeline.run()
    except Exception as e:  # the drain or the projection failed: the partition is wedged
        pytest.fail(f"pipeline failed: {e!r}")
    if bad is not None:
        assert (await receipt(client, seeded, bad))["status"] == "rejected"
    assert counts(await receipt(client, seeded, ok)) == only("created")


# ---- crash windows, made deterministic --------------------------------------------------


async def _drain_workers_only(pipeline: InlinePipeline) -> None:
    await pipeline.registry.refresh(force=True)
    for p in range(pipeline.settings.partitions):
        d = Drainer(pipeline.redis, pipeline.resources, pipeline.registry, p, 500, "w")
        assert await d.run(30, idle_exit=True)


async def test_projector_replay_after_commit_before_ack_is_a_no_op(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool, redis: Redis
) -> None:
    """A projector that committed a batch to PostgreSQL and died before XACK: the next one
    re-reads the entries (pending) and skips them by the recorded position."""
    # two worker batches: one change entry holding versions 1-2, one holding version 3
    first = [await post(client, seeded, emp("a", employee={"age": i})) for i in range(2)]
    await _drain_workers_only(pipeline)
    await post(client, seeded, emp("a", employee={"age": 2}))
    await _drain_workers_only(pipeline)
    p = ks.partition_of(RT, "", pipeline.settings.partitions)
    stream = ks.changes_stream(p)
    await ensure_group(redis, stream, ks.PROJECTOR_GROUP)
    resp = await redis.xreadgroup(ks.PROJECTOR_GROUP, "dead", {stream: ">"}, count=1)
    entries = [(sid, f[ks.F_CHANGE]) for sid, f in resp[0][1]]
    assert len(entries) == 1
    async with pool.acquire() as conn:
        assert await apply_batch(ResourceStore(conn), p, entries) == 1
        assert await pool.fetchval("SELECT count(*) FROM resource_changes") == 2
        assert await apply_batch(ResourceStore(conn), p, entries) == 0  # replayed at once: nothing
    # "dead" never acknowledged; the real projector takes over
    await pipeline.run()
    h = await history(client, "a")
    assert [x["version"] for x in h] == [1, 2, 3]
    assert await pool.fetchval("SELECT count(*) FROM ingest_events") == 3
    assert await redis.xlen(stream) == 0
    assert (await redis.xpending(stream, ks.PROJECTOR_GROUP))["pending"] == 0
    # the replayed entry's receipts were stored by "dead": their pending markers went too
    assert await redis.exists(*(ks.receipt_key(e) for e in first)) == 0


async def test_worker_redelivers_entries_a_dead_consumer_read(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool, redis: Redis
) -> None:
    """Entries delivered to a worker that died before its commit are claimed and processed
    once, in stream order, before anything newer."""
    p = ks.partition_of(RT, "", pipeline.settings.partitions)
    stream = ks.ingest_stream(p)
    first = [await post(client, seeded, emp("a", employee={"age": i})) for i in range(1, 4)]
    await ensure_group(redis, stream, ks.INGEST_GROUP)
    resp = await redis.xreadgroup(ks.INGEST_GROUP, "dead", {stream: ">"}, count=2)
    assert len(resp[0][1]) == 2
    later = [await post(client, seeded, emp("a", employee={"age": i})) for i in range(4, 6)]
    await pipeline.run()
    for eid in first + later:
        assert (await receipt(client, seeded, eid))["status"] == "applied"
    h = await history(client, "a")
    assert [x["after"]["employee"]["age"] for x in h] == [1, 2, 3, 4, 5]
    assert [x["eventId"] for x in h] == first + later
    assert await redis.xlen(stream) == 0
    assert (await redis.xpending(stream, ks.INGEST_GROUP))["pending"] == 0


async def test_a_partition_held_by_another_drainer_is_left_alone(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, redis: Redis
) -> None:
    await post(client, seeded, emp("a"))
    p = ks.partition_of(RT, "", pipeline.settings.partitions)
    await redis.set(ks.drain_lock(p), "someone-else", px=10_000)
    await pipeline.registry.refresh(force=True)
    d = Drainer(redis, pipeline.resources, pipeline.registry, p, 500, "w")
    assert await d.run(5, idle_exit=True) is False
    assert await redis.xlen(ks.ingest_stream(p)) == 1
    assert await redis.get(ks.drain_lock(p)) == b"someone-else"
