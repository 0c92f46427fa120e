"""THE guarded transaction: a batch takes effect entirely or not at all, and is retried.

Each way Redis can refuse a commit is produced for real (a lease touched after
WATCH, a key of the wrong type, a command refused while queueing) and each test
shows that nothing of the batch was applied and that the next drain applies it
exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

import shared.redis.txn as txn
from services.worker.drain import Drainer
from shared.config import Settings
from shared.embedded import EmbeddedRedis
from shared.redis import keyspace as ks
from shared.redis import sessions, wire
from shared.redis.conn import HeldConnection
from shared.redis.lease import Lease, LostLease
from shared.redis.txn import CommitFailed, GuardedTransaction, commit_guarded
from tests.conftest import InlinePipeline, Seeded
from tests.helpers import emp, post_bulk, receipt

RT = "_directory_employee"
Client = TestClient[Any, Any]
EVENT = "/integration/custom-data/event/employee"


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[Redis]:
    """A Redis server of this test's own (ACL users and SCRIPT FLUSH are server-wide)."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    r = Redis.from_url(url)
    try:
        yield r
    finally:
        await r.aclose()
        server.stop()


async def _held(redis: Redis, key: str = "lock") -> tuple[HeldConnection, Lease]:
    lease = Lease(redis, key)
    assert await lease.acquire()
    return HeldConnection(redis), lease


def _batch() -> tuple[dict[str, str], list[bytes]]:
    types = {"state": "hash", "out": "stream"}
    return types, [
        wire.command("HSET", "state", "a", "1"),
        wire.command("XADD", "out", "*", "f", "v"),
    ]


async def _nothing_applied(redis: Redis) -> None:
    assert await redis.exists("state", "out") == 0


async def test_a_batch_commits_whole(redis: Redis) -> None:
    conn, lease = await _held(redis)
    types, cmds = _batch()
    replies = await commit_guarded(conn, lease, types, cmds)
    assert len(replies) == 2 and await redis.hget("state", "a") == b"1"  # type: ignore[misc]
    await conn.release()


async def test_exec_returning_nil_applies_nothing(redis: Redis) -> None:
    conn, lease = await _held(redis)
    types, cmds = _batch()
    with pytest.raises(LostLease):
        async with GuardedTransaction(conn, lease, types) as tx:
            await tx.queue(b"".join(cmds), len(cmds))
            # the same holder's token written again after WATCH: the lease "changed"
            await redis.set(lease.key, lease.token, px=10_000)
            await tx.execute()
    await _nothing_applied(redis)
    assert await commit_guarded(conn, lease, *_batch())  # the connection is in step
    await conn.release()


async def test_a_key_of_the_wrong_type_refuses_the_batch_before_anything_is_queued(
    redis: Redis,
) -> None:
    """Without the preflight, XADD on a string fails inside EXEC after HSET took effect."""
    conn, lease = await _held(redis)
    await redis.set("out", "not a stream")
    types, cmds = _batch()
    with pytest.raises(CommitFailed) as refused:
        await commit_guarded(conn, lease, types, cmds)
    assert not refused.value.partial and "'out' is a string" in str(refused.value)
    assert await redis.exists("state") == 0
    await redis.delete("out")
    assert await commit_guarded(conn, lease, *_batch())
    await conn.release()


async def test_a_command_refused_while_queueing_aborts_the_whole_transaction(
    private_redis: Redis,
) -> None:
    """A real refusal: a user without permission for XDEL (NOPERM at queue time)."""
    r = private_redis
    await r.execute_command("ACL", "SETUSER", "w", "on", "nopass", "~*", "&*", "+@all", "-xdel")
    pool_kwargs = r.connection_pool.connection_kwargs
    w = Redis(host=pool_kwargs["host"], port=pool_kwargs["port"], username="w", password="x")
    try:
        conn, lease = await _held(w)
        types, cmds = _batch()
        with pytest.raises(CommitFailed) as refused:
            await commit_guarded(conn, lease, types, [*cmds, wire.command("XDEL", "out", "1-1")])
        assert "no permissions" in str(refused.value) and not refused.value.partial
        await _nothing_applied(r)
        await conn.release()
    finally:
        await w.aclose()


async def test_scripts_reload_after_the_server_forgets_them(private_redis: Redis) -> None:
    store = sessions.SessionStore(private_redis)
    scope = sessions.Scope(0, "_t", "", "=ev_1")
    await private_redis.script_flush()
    await store.store_single(scope, "i", "ev_1", b"[]", b"{}", 60, "rk", b"1", 60)
    await private_redis.script_flush()  # NOSCRIPT inside the MULTI: loaded, repeated once
    scope2 = sessions.Scope(0, "_t", "", "=ev_2")
    await store.store_single(scope2, "i", "ev_2", b"[]", b"{}", 60, "rk2", b"1", 60)
    assert await private_redis.xlen(ks.ingest_stream(0)) == 2
    status = await store.status(scope2)
    assert status is not None and (status.state, status.received) == ("queued", 1)
    await private_redis.script_flush()
    assert await store.abort(scope2, "i") == "queued"


# -- the drain: nothing of a refused batch applies, and the next drain applies it once ---


async def _post(client: Client, seeded: Seeded, rid: str) -> str:
    r = await client.post(EVENT, json=emp(rid), headers=seeded.headers)
    assert r.status == 202
    return str((await r.json())["eventId"])


async def _loaded_scope(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, redis: Redis, p: int
) -> dict[Any, Any]:
    """One resource applied first, so the scope's write model is loaded; its contents."""
    await _post(client, seeded, "first")
    await pipeline.run()
    return dict(await redis.hgetall(ks.state_key(p, RT, "")))  # type: ignore[misc]


async def _untouched(
    redis: Redis, pool: asyncpg.Pool, p: int, before: dict[Any, Any], pending: int
) -> None:
    assert await redis.hgetall(ks.state_key(p, RT, "")) == before  # type: ignore[misc]
    info: Any = await redis.xpending(ks.ingest_stream(p), ks.INGEST_GROUP)
    assert info["pending"] == pending
    assert await pool.fetchval("SELECT count(*) FROM resource_changes") == 1


async def _applied_once(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool, eids: list[str]
) -> None:
    """The retry: every event applied, each with one history row (plus the first one's)."""
    await pipeline.run()
    for eid in eids:
        assert (await receipt(client, seeded, eid))["created"] == 1
    assert await pool.fetchval("SELECT count(*) FROM resource_changes") == 1 + len(eids)


async def test_a_refused_drain_commit_applies_nothing_and_is_retried(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    p = ks.partition_of(RT, "", settings.partitions)
    before = await _loaded_scope(client, seeded, pipeline, redis, p)
    eids = [await _post(client, seeded, f"e{i}") for i in range(3)]

    class Corrupted(GuardedTransaction):
        async def begin(self) -> None:  # the key goes bad between the reads and the commit
            await redis.delete(ks.changes_stream(p))
            await redis.set(ks.changes_stream(p), "corrupt")  # XADD would fail inside EXEC
            await super().begin()

    monkeypatch.setattr(txn, "GuardedTransaction", Corrupted)
    await pipeline.registry.refresh(force=True)
    d = Drainer(redis, pipeline.resources, pipeline.registry, p, 100, "w")
    with pytest.raises(CommitFailed):
        await d.run(10, idle_exit=True)
    await _untouched(redis, pool, p, before, pending=3)
    monkeypatch.setattr(txn, "GuardedTransaction", GuardedTransaction)
    await redis.delete(ks.changes_stream(p), ks.drain_lock(p))
    await _applied_once(client, seeded, pipeline, pool, eids)


async def test_a_drain_commit_whose_exec_returns_nil_applies_nothing_and_is_retried(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    p = ks.partition_of(RT, "", settings.partitions)
    before = await _loaded_scope(client, seeded, pipeline, redis, p)
    eids = [await _post(client, seeded, f"e{i}") for i in range(3)]

    class Touched(GuardedTransaction):
        async def execute(self, payload: bytes = b"", count: int = 0) -> list[Any]:
            await redis.set(self.lease.key, self.lease.token, px=10_000)
            return await super().execute(payload, count)

    monkeypatch.setattr(txn, "GuardedTransaction", Touched)
    await pipeline.registry.refresh(force=True)
    assert await Drainer(redis, pipeline.resources, pipeline.registry, p, 100, "w").run(
        10, idle_exit=True
    )
    await _untouched(redis, pool, p, before, pending=3)
    monkeypatch.setattr(txn, "GuardedTransaction", GuardedTransaction)
    await redis.delete(ks.drain_lock(p))
    await _applied_once(client, seeded, pipeline, pool, eids)


async def test_a_snapshot_commit_refused_while_queueing_applies_nothing_and_is_retried(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import services.worker.bulk as wb

    r = await post_bulk(client, seeded, [emp(f"e{i}") for i in range(30)])
    p = ks.partition_of(RT, "", settings.partitions)

    class Refused(GuardedTransaction):
        async def execute(self, payload: bytes = b"", count: int = 0) -> list[Any]:
            bad = wire.command("XADD", ks.changes_stream(p))  # wrong arity: refused queued
            return await super().execute(payload + bad, count + 1)

    monkeypatch.setattr(wb, "GuardedTransaction", Refused)
    await pipeline.registry.refresh(force=True)
    d = Drainer(redis, pipeline.resources, pipeline.registry, p, 100, "w")
    with pytest.raises(CommitFailed):
        await d.run(10, idle_exit=True)
    assert await redis.xlen(ks.changes_stream(p)) == 0
    assert await redis.hlen(ks.state_key(p, RT, "")) == ks.STATE_OWN_FIELDS
    head = await sessions.SessionStore(redis).head(
        sessions.Scope(p, RT, "", ks.IMPLICIT_SESSION + r["eventId"])
    )
    assert head.total == 1 and head.committed == 0  # the session waits, unretired
    monkeypatch.setattr(wb, "GuardedTransaction", GuardedTransaction)
    await redis.delete(ks.drain_lock(p))
    await pipeline.run()
    rc = await receipt(client, seeded, r["eventId"])
    assert (rc["status"], rc["created"]) == ("applied", 30)
    assert await pool.fetchval("SELECT count(*) FROM resource_changes") == 30
