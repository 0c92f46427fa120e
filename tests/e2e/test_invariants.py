"""Invariants of the push pipeline, proven with the stages as separate processes.

`ingestd gateway`, `ingestd worker` x2 and `ingestd projector` run as a user runs them;
the test is a producer over HTTP and reads PostgreSQL / Redis to check the outcome.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from shared.config import Settings
from shared.redis import keyspace as ks
from tests.e2e.helpers import (
    TABLE,
    Sent,
    change_event_ids,
    check_exactly_once,
    consumer_of,
    create_table,
    gateway_client,
    ingest_event_ids,
    kill_mid_batch,
    logs,
    pending_by_consumer,
    restart,
    send,
    send_series,
    streams_drained,
    wait_processed,
)
from tests.e2e.procs import stages
from tests.helpers import delete as delete_event
from tests.helpers import poll, receipt, wait_key_known, wait_receipt
from tests.helpers import post as post_event

pytestmark = pytest.mark.slow  # stages as processes, seconds each

PIPELINE = ("gateway", "worker", "worker", "projector")


# ---- a. order per scope with two workers --------------------------------------------------


async def _readers(redis: Redis, settings: Settings) -> dict[int, str]:
    """Per partition, the consumer that read the ingest stream most recently."""
    out = {}
    for p in range(settings.partitions):
        try:
            infos = await redis.xinfo_consumers(ks.ingest_stream(p), ks.INGEST_GROUP)
        except Exception:  # not created yet
            continue
        if infos:
            out[p] = min(infos, key=lambda i: i["idle"])["name"].decode()
    return out


async def test_order_per_scope_with_two_workers(
    settings: Settings, tmp_path: Path, pool: asyncpg.Pool, redis: Redis
) -> None:
    # 1-second drain slices hand partitions back and forth between the two workers
    with stages(settings, tmp_path, *PIPELINE, INGESTD_DRAIN_SLICE_S="1") as s:
        workers = {consumer_of(w) for w in s["worker"]}

        async def both_draining() -> bool:
            return set((await _readers(redis, settings)).values()) == workers

        try:  # (a loaded machine starts a worker process slowly)
            await poll("both workers to drain partitions", both_draining, 45)
        except AssertionError as e:
            readers_now = await _readers(redis, settings)
            raise AssertionError(f"{e}\nreaders: {readers_now}\n{logs(s)}") from None
        async with gateway_client(s["gateway"][0]) as c:
            key = await create_table(c)
            sent = Sent()
            scopes = [f"scope-{i}" for i in range(24)]
            readers: set[tuple[int, str]] = set()
            done = asyncio.Event()

            async def sample() -> None:
                while not done.is_set():
                    readers.update((await _readers(redis, settings)).items())
                    await asyncio.sleep(0.1)

            async def paced(g: str) -> None:
                for seq in range(1, 41):  # sequential per scope, ~3 s in all
                    await send(c, key, sent, g, "r", seq)
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample())
            await asyncio.gather(*(paced(g) for g in scopes))
            assert not sent.refused, sent.refused[:3]
            try:
                await wait_processed(pool, len(sent.accepted), 45)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{logs(s)}") from None
            finally:
                done.set()
                await sampler
            await check_exactly_once(pool, sent)
            for g in scopes:
                row = await pool.fetchrow(
                    "SELECT version, data FROM resources WHERE group_key = $1", g
                )
                assert row["version"] == 40 and row["data"]["seq"] == 40
            # partitions moved between the workers while the stream was running
            assert {w for _, w in readers} == workers, readers
            print(f"partition/worker pairs seen while sending: {sorted(readers)}")


# ---- b. SIGKILL mid-stream: exactly one effect per accepted event -------------------------


async def _kill_mid_stream(
    settings: Settings, tmp_path: Path, pool: asyncpg.Pool, redis: Redis, victim: str
) -> None:
    with stages(settings, tmp_path, *PIPELINE) as s:
        async with gateway_client(s["gateway"][0]) as c:
            key = await create_table(c)
            sent = Sent()
            resources = [(f"g{i}", f"r{j}") for i in range(40) for j in range(2)]
            per = 50  # at least 4,000 events, and the stream goes on until after the kill
            stop = asyncio.Event()

            async def series(g: str, rid: str) -> None:
                seq = 0
                while seq < per or not stop.is_set():
                    seq += 1
                    await send_series(c, key, sent, g, rid, range(seq, seq + 1))

            senders = asyncio.gather(*(series(g, rid) for g, rid in resources))

            async def enough() -> bool:
                return len(sent.accepted) >= per * len(resources) // 3

            await poll("a third of the events accepted", enough, 30, every=0.01)
            if victim == "worker":
                keys = [ks.ingest_stream(p) for p in range(settings.partitions)]
                group, events_of = ks.INGEST_GROUP, ingest_event_ids
            else:
                keys = [ks.changes_stream(p) for p in range(settings.partitions)]
                group, events_of = ks.PROJECTOR_GROUP, change_event_ids
            out = await kill_mid_batch(redis, s[victim], keys, group, events_of)
            at_kill = len(sent.accepted)
            # the dead process left work: entries delivered to it, never acknowledged
            assert out.count and out.event_ids, out
            seen = await pool.fetchval(
                "SELECT count(*) FROM ingest_events WHERE event_id = ANY($1)", list(out.event_ids)
            )
            if victim == "worker":  # its batch was not committed: none of it took effect
                assert seen == 0, f"{seen} of the killed worker's events took effect"
            restart(out.killed, s[victim])

            async def more() -> bool:  # the stream goes on past the kill
                return len(sent.accepted) >= at_kill + 400

            await poll("events accepted after the kill", more, 30, every=0.01)
            stop.set()
            await senders
            assert not sent.refused, sent.refused[:3]
            assert len(sent.accepted) > at_kill, "the kill came after the stream ended"
            # (an event can reach a worker before its 202 reaches the test: compared now)
            assert out.event_ids <= set(sent.accepted)
            print(
                f"killed a {victim} inside a batch (kill {out.attempts}) after {at_kill} of "
                f"{len(sent.accepted)} accepted events: it held {out.count} entries "
                f"({len(out.event_ids)} events, {seen} of them already in PostgreSQL)"
            )
            try:
                await wait_processed(pool, len(sent.accepted), 60)
                await streams_drained(redis, settings)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{logs(s)}") from None
            await check_exactly_once(pool, sent)
            # what the dead process held was finished by another, once: nothing is pending
            # any more and each of its events has one receipt, applied
            assert not any((await pending_by_consumer(redis, keys, group)).values())
            rows = await pool.fetch(
                "SELECT event_id, status FROM ingest_events WHERE event_id = ANY($1)",
                list(out.event_ids),
            )
            assert sorted(r["event_id"] for r in rows) == sorted(out.event_ids)
            assert {r["status"] for r in rows} == {"applied"}
            for eid in list(sent.accepted)[:: len(sent.accepted) // 20]:
                assert (await receipt(c, key, eid))["status"] == "applied"


async def test_sigkill_worker_mid_stream(
    settings: Settings, tmp_path: Path, pool: asyncpg.Pool, redis: Redis
) -> None:
    await _kill_mid_stream(settings, tmp_path, pool, redis, "worker")


async def test_sigkill_projector_mid_stream(
    settings: Settings, tmp_path: Path, pool: asyncpg.Pool, redis: Redis
) -> None:
    await _kill_mid_stream(settings, tmp_path, pool, redis, "projector")


# ---- c. losing the worker's write-model state ---------------------------------------------


async def test_lost_write_model_is_rebuilt_from_postgres(
    settings: Settings, tmp_path: Path, pool: asyncpg.Pool, redis: Redis
) -> None:
    with stages(settings, tmp_path, *PIPELINE) as s:
        async with gateway_client(s["gateway"][0]) as c:
            key = await create_table(c)

            async def post(doc: dict[str, object], g: str = "g") -> str:
                return await post_event(c, key, doc, g, table=TABLE)

            async def delete(ids: str, g: str = "g") -> str:
                return await delete_event(c, key, ids, g, table=TABLE)

            # many resources in several scopes, so the rebuild pages through PostgreSQL
            for i in range(30):
                await post({"id": f"bulk{i}", "seq": 1}, g=f"s{i % 3}")
            await post({"id": "same", "seq": 1})
            await post({"id": "changed", "seq": 1})
            await post({"id": "gone", "seq": 1})
            last = await delete("gone")
            assert (await wait_receipt(c, key, last))["deleted"] == 1
            lost = [k async for k in redis.scan_iter(match=ks.state_pattern())]
            assert len(lost) == 4  # scopes g, s0, s1, s2
            await redis.delete(*lost)

            e_same = await post({"id": "same", "seq": 1})
            e_changed = await post({"id": "changed", "seq": 2})
            e_gone = await post({"id": "gone", "seq": 1})
            e_bulk = await post({"id": "bulk0", "seq": 1}, g="s0")
            e_new = await post({"id": "new", "seq": 1})
            r = await wait_receipt(c, key, e_same)
            assert (r["unchanged"], r["created"], r["updated"]) == (1, 0, 0), r
            r = await wait_receipt(c, key, e_changed)
            assert (r["updated"], r["created"]) == (1, 0), r
            r = await wait_receipt(c, key, e_gone)
            assert r["created"] == 1, r
            r = await wait_receipt(c, key, e_bulk)
            assert r["unchanged"] == 1, r
            r = await wait_receipt(c, key, e_new)
            assert r["created"] == 1, r

            async def versions(rid: str) -> list[tuple[int, str]]:
                rows = await pool.fetch(
                    "SELECT version, op FROM resource_changes WHERE group_key = 'g'"
                    " AND resource_id = $1 ORDER BY version",
                    rid,
                )
                return [(r["version"], r["op"]) for r in rows]

            assert await versions("same") == [(1, "created")]
            assert await versions("changed") == [(1, "created"), (2, "updated")]
            assert await versions("gone") == [(1, "created"), (2, "deleted"), (3, "created")]
            assert await versions("new") == [(1, "created")]
            # the rebuilt state is right for later decisions too
            e_del = await delete("gone,never")
            r = await wait_receipt(c, key, e_del)
            assert (r["deleted"], r["ignored"]) == (1, ["never"]), r
            assert (await versions("gone"))[-1] == (4, "deleted")


# ---- d. two gateways appending concurrently -----------------------------------------------


async def test_two_gateways_keep_each_clients_order(
    settings: Settings, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    with stages(settings, tmp_path, "gateway", "gateway", *PIPELINE[1:]) as s:
        gw1, gw2 = s["gateway"]
        async with gateway_client(gw1) as c1, gateway_client(gw2) as c2:
            key = await create_table(c1)
            await wait_key_known(c2, key)
            sent = Sent()
            n = 150
            # each client its own resource, same scope, concurrently
            await asyncio.gather(
                send_series(c1, key, sent, "shared", "via-1", range(1, n + 1), writer="1"),
                send_series(c2, key, sent, "shared", "via-2", range(1, n + 1), writer="2"),
            )
            # both clients alternating on one resource: each waits for its 202 first
            for seq in range(1, n + 1):
                c = c1 if seq % 2 else c2
                assert await send(c, key, sent, "shared", "both", seq, writer=str(2 - seq % 2))
            assert not sent.refused, sent.refused[:3]
            await wait_processed(pool, len(sent.accepted), 45)
            await check_exactly_once(pool, sent)
            rows = await pool.fetch(
                "SELECT (after->>'seq')::int AS seq, after->>'writer' AS w FROM resource_changes"
                " WHERE resource_id = 'both' ORDER BY version"
            )
            assert [r["seq"] for r in rows] == list(range(1, n + 1))
            assert [r["w"] for r in rows] == ["1", "2"] * (n // 2)
