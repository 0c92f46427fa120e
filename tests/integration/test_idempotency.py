"""Idempotency-Key on every ingest POST and DELETE: the first answer again, never a second
event; another request with the key is 422; a Redis flush does not forget a key whose
event PostgreSQL holds."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.config import Settings
from shared.redis import keyspace as ks
from tests.conftest import InlinePipeline, Seeded, flush_claimed, seed_directory
from tests.helpers import INGEST, emp, key_headers, post, wait_receipt

Client = TestClient[Any, Any]
EVENT = f"{INGEST}/event/employee"
BULK = f"{INGEST}/bulk-event/employee"
BATCH = f"{INGEST}/batch-event/employee"


def keyed(who: Seeded, key: str, **more: str) -> dict[str, str]:
    return {**key_headers(who), "Idempotency-Key": key, **more}


async def raw_events(redis: Redis, settings: Settings) -> int:
    """Raw events in every ingest stream (each accepted request appends one)."""
    pipe = redis.pipeline(transaction=False)
    for p in range(settings.partitions):
        pipe.xlen(ks.ingest_stream(p))
    return sum(int(n) for n in await pipe.execute())


async def answer(r: Any) -> tuple[int, dict[str, Any]]:
    return r.status, dict(await r.json())


async def test_same_key_same_request_replays_the_first_answer_and_enqueues_nothing(
    client: Client, seeded: Seeded, redis: Redis, settings: Settings, pipeline: InlinePipeline,
    pool: asyncpg.Pool,
) -> None:  # fmt: skip
    h = keyed(seeded, "order-1")
    first = await client.post(f"{EVENT}?groupKey=acme", json=emp("e1"), headers=h)
    assert first.status == 202 and "Idempotent-Replayed" not in first.headers
    body = await first.json()
    assert await raw_events(redis, settings) == 1
    again = await client.post(f"{EVENT}?groupKey=acme", json=emp("e1"), headers=h)
    assert await answer(again) == (202, body)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await raw_events(redis, settings) == 1  # nothing enqueued
    await pipeline.run()
    # and once applied: still the first answer, still one event
    again = await client.post(f"{EVENT}?groupKey=acme", json=emp("e1"), headers=h)
    assert await answer(again) == (202, body)
    rows = await pool.fetch("SELECT event_id, idempotency_key FROM ingest_events")
    assert [(r["event_id"], r["idempotency_key"]) for r in rows] == [(body["eventId"], "order-1")]


async def test_without_a_key_the_same_request_is_a_new_event(
    client: Client, seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    a = await client.post(EVENT, json=emp("e1"), headers=key_headers(seeded))
    b = await client.post(EVENT, json=emp("e1"), headers=key_headers(seeded))
    assert (await a.json())["eventId"] != (await b.json())["eventId"]
    assert await raw_events(redis, settings) == 2


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", f"{EVENT}?groupKey=acme", emp("e1", active=False)),  # another body
        ("POST", f"{EVENT}?groupKey=other", emp("e1")),  # another query
        ("POST", f"{BATCH}?groupKey=acme", [emp("e1")]),  # another route
        ("DELETE", f"{INGEST}/employee?groupKey=acme&resourceIds=e1", None),
    ],
)
async def test_same_key_with_another_request_is_422_and_enqueues_nothing(
    client: Client, seeded: Seeded, redis: Redis, settings: Settings, method: str, url: str,
    body: Any,
) -> None:  # fmt: skip
    h = keyed(seeded, "k-1")
    r = await client.post(f"{EVENT}?groupKey=acme", json=emp("e1"), headers=h)
    assert r.status == 202
    first = (await r.json())["eventId"]
    r = await client.request(method, url, json=body, headers=h)
    status, out = await answer(r)
    assert status == 422 and out["code"] == "idempotency_key_reused", out
    assert out["pointer"] == "/headers/Idempotency-Key" and first in out["message"]
    assert await raw_events(redis, settings) == 1


async def test_keys_belong_to_their_integration(
    client: Client, seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    other = await seed_directory(client, prefix="_other")
    a = await client.post(EVENT, json=emp("e1"), headers=keyed(seeded, "shared"))
    b = await client.post(EVENT, json=emp("e1"), headers=keyed(other, "shared"))
    assert a.status == b.status == 202
    assert (await a.json())["eventId"] != (await b.json())["eventId"]
    assert await raw_events(redis, settings) == 2


@pytest.mark.parametrize(
    "key", ["", "x" * 256, "caf\u00e9".encode().decode("latin-1"), "tab\there", "\u00ff"]
)
async def test_a_malformed_key_is_400_and_enqueues_nothing(
    client: Client, seeded: Seeded, redis: Redis, settings: Settings, key: str
) -> None:
    for method, url, body in (
        ("POST", EVENT, emp("e1")),
        ("POST", BULK, [emp("e1")]),
        ("POST", BATCH, [emp("e1")]),
        ("DELETE", f"{INGEST}/employee?resourceIds=e1", None),
    ):
        r = await client.request(method, url, json=body, headers=keyed(seeded, key))
        status, out = await answer(r)
        assert status == 400 and out["code"] == "invalid_idempotency_key", out
        assert out["pointer"] == "/headers/Idempotency-Key"
    assert await raw_events(redis, settings) == 0


async def test_the_longest_and_every_printable_character_are_a_key(
    client: Client, seeded: Seeded
) -> None:
    for key in ("k" * 255, "".join(chr(c) for c in range(0x21, 0x7F))):
        r = await client.post(EVENT, json=emp("e1"), headers=keyed(seeded, key))
        assert r.status == 202, await r.text()


async def test_concurrent_requests_with_one_key_make_one_event(
    client: Client, seeded: Seeded, redis: Redis, settings: Settings, pipeline: InlinePipeline,
    pool: asyncpg.Pool,
) -> None:  # fmt: skip
    for url, body in ((EVENT, emp("c1")), (BATCH, [emp("c2"), emp("c3")])):
        h = keyed(seeded, f"race-{url}")
        rs = await asyncio.gather(*(client.post(url, json=body, headers=h) for _ in range(25)))
        answers = [await answer(r) for r in rs]
        assert {s for s, _ in answers} == {202}
        assert len({b["eventId"] for _, b in answers}) == 1, answers
    assert await raw_events(redis, settings) == 2
    await pipeline.run()
    assert await pool.fetchval("SELECT count(*) FROM ingest_events") == 2
    assert await pool.fetchval("SELECT count(*) FROM resource_changes") == 3


async def test_a_flush_after_the_event_applied_still_replays_from_postgresql(
    client: Client, seeded: Seeded, redis: Redis, settings: Settings, pipeline: InlinePipeline,
    pool: asyncpg.Pool,
) -> None:  # fmt: skip
    cases = [
        ("POST", f"{EVENT}?groupKey=acme", emp("f1")),
        ("POST", f"{BULK}?groupKey=snap", [emp("f2")]),
        ("POST", f"{BATCH}?groupKey=acme", [emp("f3"), emp("f4")]),
        ("DELETE", f"{INGEST}/employee?groupKey=acme&resourceIds=f1", None),
    ]
    firsts = []
    for n, (method, url, body) in enumerate(cases):
        r = await client.request(method, url, json=body, headers=keyed(seeded, f"f-{n}"))
        firsts.append(await answer(r))
        assert firsts[-1][0] == 202
    await pipeline.run()
    rc = await wait_receipt(client, seeded, firsts[-1][1]["eventId"])  # barrier: all applied
    assert rc["status"] == "applied" and rc["deleted"] == 1
    history = await pool.fetchval("SELECT count(*) FROM resource_changes")
    await flush_claimed(settings.redis_url or "")
    for n, (method, url, body) in enumerate(cases):
        r = await client.request(method, url, json=body, headers=keyed(seeded, f"f-{n}"))
        assert await answer(r) == firsts[n]
        assert r.headers["Idempotent-Replayed"] == "true"
    assert await raw_events(redis, settings) == 0
    # another request with a key PostgreSQL holds is still refused
    r = await client.post(f"{EVENT}?groupKey=acme", json=emp("zz"), headers=keyed(seeded, "f-0"))
    assert (await answer(r))[1]["code"] == "idempotency_key_reused"
    # the entry is back in Redis: the next retry does not need PostgreSQL
    assert await redis.exists(*(await redis.keys(f"{ks.PREFIX}:idem:*"))) == len(cases)
    barrier = await post(client, seeded, emp("f3"), "acme")  # applied after any retry's event
    await pipeline.run()
    assert (await wait_receipt(client, seeded, barrier))["unchanged"] == 1
    assert await pool.fetchval("SELECT count(*) FROM resource_changes") == history
    assert await pool.fetchval("SELECT count(*) FROM ingest_events") == len(cases) + 1


async def test_a_retry_after_redis_lost_the_unapplied_event_is_accepted_again(
    client: Client, seeded: Seeded, redis: Redis, settings: Settings, pipeline: InlinePipeline,
    pool: asyncpg.Pool,
) -> None:  # fmt: skip
    """The first event vanished with Redis before it reached PostgreSQL: it will never
    apply, so the retry is a new event (and applies once)."""
    h = keyed(seeded, "lost")
    r = await client.post(EVENT, json=emp("t1"), headers=h)
    first = (await r.json())["eventId"]
    await flush_claimed(settings.redis_url or "")
    r = await client.post(EVENT, json=emp("t1"), headers=h)
    assert r.status == 202 and "Idempotent-Replayed" not in r.headers
    second = (await r.json())["eventId"]
    assert second != first
    await pipeline.run()
    rows = await pool.fetch("SELECT event_id FROM ingest_events")
    assert [x["event_id"] for x in rows] == [second]
    assert await pool.fetchval("SELECT count(*) FROM resource_changes") == 1


async def test_session_parts_replay_their_first_answer(
    client: Client, seeded: Seeded, redis: Redis
) -> None:
    url = f"{BULK}?session=s1&part=1"
    first = await client.post(url, json=[emp("p1")], headers=keyed(seeded, "part-1"))
    status, body = await answer(first)
    assert status == 202 and body["duplicate"] is False and body["partsReceived"] == 1
    again = await client.post(url, json=[emp("p1")], headers=keyed(seeded, "part-1"))
    assert await answer(again) == (202, body)  # not "duplicate": the first answer
    # without the key the part is a duplicate, as before
    plain = await client.post(url, json=[emp("p1")], headers=key_headers(seeded))
    assert (await plain.json())["duplicate"] is True
    other = await client.post(f"{BULK}?session=s1&part=2", json=[emp("p2")],
                              headers=keyed(seeded, "part-1"))  # fmt: skip
    assert (await answer(other))[1]["code"] == "idempotency_key_reused"


async def test_xml_bodies_and_answers_replay_too(client: Client, seeded: Seeded) -> None:
    h = keyed(seeded, "xml-1", **{"Content-Type": "application/xml", "Accept": "application/xml"})
    xml = b"<employee><employeeId>x1</employeeId><active>true</active></employee>"
    first = await client.post(EVENT, data=xml, headers=h)
    again = await client.post(EVENT, data=xml, headers=h)
    assert first.status == again.status == 202
    assert await first.read() == await again.read()
    assert again.content_type == "application/xml"
    # the same key as JSON is another request (another body and media type)
    r = await client.post(EVENT, data=orjson.dumps(emp("x1", active=True)),
                          headers=keyed(seeded, "xml-1"))  # fmt: skip
    assert (await answer(r))[1]["code"] == "idempotency_key_reused"


async def test_an_applied_events_key_leaves_redis_and_still_replays_from_postgresql(
    client: Client, seeded: Seeded, redis: Redis, settings: Settings, pipeline: InlinePipeline
) -> None:
    """Once PostgreSQL holds the event's row the projector unlinks the key's Redis entry
    (Redis kept one per keyed request for 7 days): a retry is answered from PostgreSQL,
    the first answer again, and enqueues nothing. A session part's entry records another
    answer than the event's and stays."""
    cases = [
        ("POST", f"{EVENT}?groupKey=acme", emp("u1")),
        ("POST", f"{BULK}?groupKey=snap", [emp("u2")]),
        ("POST", f"{BATCH}?groupKey=acme", [emp("u3")]),
        ("DELETE", f"{INGEST}/employee?groupKey=acme&resourceIds=u1", None),
    ]
    firsts = []
    for n, (method, url, body) in enumerate(cases):
        r = await client.request(method, url, json=body, headers=keyed(seeded, f"u-{n}"))
        firsts.append(await answer(r))
    part = await client.post(
        f"{BULK}?session=s9&part=1&final=true&groupKey=parts",
        json=[emp("u9")],
        headers=keyed(seeded, "part-9"),
    )
    part_answer = await answer(part)
    assert part_answer[0] == 202, part_answer
    assert len(await redis.keys(f"{ks.PREFIX}:idem:*")) == len(cases) + 1
    await pipeline.run()
    for first in firsts:
        assert (await wait_receipt(client, seeded, first[1]["eventId"]))["status"] == "applied"
    left = await redis.keys(f"{ks.PREFIX}:idem:*")
    assert len(left) == 1  # the session part's
    for n, (method, url, body) in enumerate(cases):
        r = await client.request(method, url, json=body, headers=keyed(seeded, f"u-{n}"))
        assert await answer(r) == firsts[n]
        assert r.headers["Idempotent-Replayed"] == "true"
    again = await client.post(
        f"{BULK}?session=s9&part=1&final=true&groupKey=parts",
        json=[emp("u9")],
        headers=keyed(seeded, "part-9"),
    )
    assert await answer(again) == part_answer
    assert await raw_events(redis, settings) == 0
