"""The worker's streamed snapshot diff against a reference, its write model, slices
and leases."""

from __future__ import annotations

import random
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from services.worker.drain import Drainer
from shared.config import Settings
from shared.redis import keyspace as ks
from shared.redis import writemodel
from tests.conftest import InlinePipeline, Seeded
from tests.helpers import emp, post_bulk, receipt
from tests.integration.test_bulk import (
    EVENT,
    Client,
    _seed_abc,
    history,
    part_query,
    scope,
)


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks, slices and staging batches of a few items: every boundary gets crossed."""
    import services.worker.bulk as wb
    import services.worker.slices as ws

    monkeypatch.setattr(wb, "CHUNK", 7)
    monkeypatch.setattr(ws, "SLICE_EFFECTS", 3)
    monkeypatch.setattr(ws, "STAGE_BATCH", 2)


def state_key(settings: Settings, group_key: str) -> str:
    rt = "_directory_employee"
    p = ks.partition_of(rt, group_key, settings.partitions)
    return ks.state_key(p, rt, group_key)


async def write_model(redis: Redis, settings: Settings, group_key: str) -> dict[str, Any]:
    """The scope's write model; asserts that its live count is exact."""
    raw = await redis.hgetall(state_key(settings, group_key))
    out = {}
    for k, v in raw.items():
        if not k.startswith(b"\x00"):
            value = writemodel.decode(v)  # a tombstone also carries its time
            assert value is not None
            out[k.decode()] = value
    if raw:
        live = sum(1 for h, _ in out.values() if h)
        assert int(raw[ks.STATE_LIVE_FIELD.encode()]) == live, "live count is off"
        assert int(raw[ks.STATE_DEAD_FIELD.encode()]) == len(out) - live, "dead count"
        assert len(raw) == len(out) + ks.STATE_OWN_FIELDS
    return out


async def singles_and_deletes(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, rng: random.Random
) -> None:
    """Some creates, updates, re-creates and deletes of the scope, as single events."""
    for _ in range(rng.randint(0, 6)):
        item = emp(f"r{rng.randint(0, 60)}", active=rng.random() < 0.5)
        r = await client.post(f"{EVENT}?groupKey=g", json=item, headers=seeded.headers)
        assert r.status == 202
    ids = ",".join(f"r{rng.randint(0, 60)}" for _ in range(rng.randint(1, 4)))
    r = await client.delete(
        f"/integration/custom-data/employee?groupKey=g&resourceIds={ids}", headers=seeded.headers
    )
    assert r.status == 202
    await pipeline.run()


def random_items(rng: random.Random, n: int, bad: float) -> list[Any]:
    items: list[Any] = []
    for _ in range(n):
        roll = rng.random()
        rid = f"r{rng.randint(0, 60)}"
        if roll < bad / 3:
            items.append({"active": True})
        elif roll < bad:
            items.append(emp(rid, active="bad"))
        else:
            items.append(emp(rid, active=rng.random() < 0.5, employee={"age": rng.randint(1, 3)}))
    return items


@pytest.mark.parametrize("seed", range(4))
async def test_streamed_diff_equals_the_reference(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
    tiny_chunks: None,
    seed: int,
) -> None:
    from shared.bulk import diff_snapshot
    from shared.events import RawMeta
    from shared.schema_rules import CompiledSchema, prepare_schema
    from tests.conftest import EMPLOYEE_SCHEMA

    rng = random.Random(seed)
    first = {emp(f"r{i}")["employeeId"]: emp(f"r{i}") for i in range(0, 60, 2)}
    await post_bulk(client, seeded, list(first.values()), "groupKey=g")
    await pipeline.run()
    for round_ in range(3):
        await singles_and_deletes(client, seeded, pipeline, rng)
        partial = rng.random() < 0.5
        items = random_items(rng, rng.randint(0, 50), bad=0.1 if partial else 0.03)
        current = await write_model(redis, settings, "g")
        meta = RawMeta("ev", "bulk", "i", "employee", "_directory_employee", "g", None, None, 0)
        schema = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
        want, _ = diff_snapshot(meta, items, schema, current, partial)
        cuts = sorted(rng.sample(range(len(items) + 1), 2)) if items else [0, 0]
        parts = [items[: cuts[0]], items[cuts[0] : cuts[1]], items[cuts[1] :]]
        sid = f"s{seed}-{round_}"
        extra = "groupKey=g" + ("&partial=true" if partial else "")
        eid = ""
        for n in (3, 1, 2):
            out = await post_bulk(client, seeded, parts[n - 1], part_query(sid, n, n == 3, extra))
            eid = out["eventId"]
        await pipeline.run()
        got = await receipt(client, seeded, eid)
        assert got["status"] == want.status
        for k, v in want.counts().items():
            assert got[k] == v, (k, got, want.counts())
        assert got["issuesTotal"] == want.issues_total
        resources = await scope(pool, "g")
        live = {k: v for k, v in current.items() if v[0]}
        for e in want.effects:
            if e.op == "deleted":
                live.pop(e.resource_id, None)
            else:
                live[e.resource_id] = (e.content_hash or "", e.version)
        assert {k: (r["content_hash"], r["version"]) for k, r in resources.items()} == live
        rows = await history(pool, eid)
        assert len(rows) == len(want.effects)
        events = await pool.fetch("SELECT 1 FROM ingest_events WHERE event_id = $1", eid)
        assert len(events) == 1
        await write_model(redis, settings, "g")  # the live count followed every change


async def test_write_model_of_an_older_format_is_rebuilt_with_its_live_count(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, redis: Redis, settings: Settings
) -> None:
    """A write model loaded before the live count existed (marker "1") is loaded again
    from PostgreSQL, so the count the deletion shortcut trusts is always exact."""
    await post_bulk(client, seeded, [emp("a"), emp("b"), emp("c")])
    await pipeline.run()
    key = state_key(settings, "")
    await redis.hset(key, mapping={ks.STATE_LOADED_FIELD: "1"})
    await redis.hdel(key, ks.STATE_LIVE_FIELD, ks.STATE_DEAD_FIELD)
    r = await post_bulk(client, seeded, [emp("a"), emp("b")])
    await pipeline.run()
    got = await receipt(client, seeded, r["eventId"])
    assert (got["status"], got["deleted"], got["unchanged"]) == ("applied", 1, 2)
    assert await redis.hget(key, ks.STATE_LOADED_FIELD) == ks.STATE_FORMAT
    assert set(await write_model(redis, settings, "")) == {"a", "b", "c"}


@pytest.mark.parametrize("skew", [-2, -3, 3])
async def test_a_live_count_that_is_off_falls_back_to_scanning_the_scope(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
    tiny_chunks: None,
    skew: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A count that disagrees with the hash's length must not hide a deletion: the scan
    runs in full and says so."""
    await post_bulk(client, seeded, [emp(f"e{i}") for i in range(10)])
    await pipeline.run()
    await redis.hincrby(state_key(settings, ""), ks.STATE_LIVE_FIELD, skew)
    r = await post_bulk(client, seeded, [emp(f"e{i}") for i in range(2, 10)])
    await pipeline.run()
    got = await receipt(client, seeded, r["eventId"])
    assert (got["deleted"], got["unchanged"]) == (2, 8)
    assert set(await scope(pool)) == {f"e{i}" for i in range(2, 10)}
    assert "counts of" in caplog.text


async def test_receipt_appears_only_with_the_last_slice(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
    tiny_chunks: None,
) -> None:
    from services.projector.apply import apply_batch
    from shared.pg.resources import ResourceStore

    r = await post_bulk(client, seeded, [emp(f"e{i}") for i in range(20)])
    await pipeline.registry.refresh(force=True)
    p = ks.partition_of("_directory_employee", "", settings.partitions)
    d = Drainer(redis, pipeline.resources, pipeline.registry, p, 100, "w")
    assert await d.run(10, idle_exit=True)
    entries = await redis.xrange(ks.changes_stream(p))
    assert len(entries) == 8  # 7 slices of at most 3 effects + the receipt entry
    raw = [(sid, f[ks.F_CHANGE]) for sid, f in entries]
    async with pool.acquire() as conn:
        await apply_batch(ResourceStore(conn), p, raw[:5])  # a projector that stops between slices
    assert await pool.fetchval("SELECT count(*) FROM resources") == 15
    assert (await receipt(client, seeded, r["eventId"]))["status"] == "pending"
    async with pool.acquire() as conn:
        await apply_batch(ResourceStore(conn), p, raw)  # resumes: the applied prefix is skipped
    rc = await receipt(client, seeded, r["eventId"])
    assert rc["status"] == "applied" and rc["created"] == 20
    assert await pool.fetchval("SELECT count(*) FROM resource_changes") == 20


async def test_lost_lease_before_exec_commits_nothing_and_the_retry_applies_once(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
    tiny_chunks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import services.worker.bulk as wb
    from shared.redis.txn import GuardedTransaction

    await _seed_abc(client, seeded, pipeline)
    before = await write_model(redis, settings, "")
    r = await post_bulk(client, seeded, [emp("a", active=True)] + [emp(f"n{i}") for i in range(10)])

    class StolenFirst(GuardedTransaction):
        async def begin(self) -> None:
            await redis.set(self.lease.key, "someone-else")  # the token check must refuse
            await super().begin()

    monkeypatch.setattr(wb, "GuardedTransaction", StolenFirst)
    p = ks.partition_of("_directory_employee", "", settings.partitions)
    d = Drainer(redis, pipeline.resources, pipeline.registry, p, 100, "w")
    assert await d.run(10, idle_exit=True)  # logs the lost lease and stops
    assert await redis.xlen(ks.changes_stream(p)) == 0
    assert await write_model(redis, settings, "") == before
    assert await redis.xlen(ks.ingest_stream(p)) == 1  # still there, still pending
    await redis.delete(ks.drain_lock(p))
    monkeypatch.setattr(wb, "GuardedTransaction", GuardedTransaction)
    await pipeline.run()
    rc = await receipt(client, seeded, r["eventId"])
    assert (rc["status"], rc["created"], rc["updated"], rc["deleted"]) == ("applied", 10, 1, 2)
    assert len(await history(pool, r["eventId"])) == 13
