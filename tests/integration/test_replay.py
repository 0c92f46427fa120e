"""Rejected bodies and their replay: kept by the projector, re-submitted under the
table's current schema as new events naming the one they replay."""

from __future__ import annotations

import copy
import json
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.config import Settings
from shared.pg.repair import RepairStore
from shared.redis import keyspace as ks
from tests.conftest import ADMIN, EMPLOYEE_SCHEMA, InlinePipeline, Seeded
from tests.helpers import emp, post, post_bulk, receipt

REPLAY = "/admin/v1/events/{}/replay"
ISSUES_REPLAY = "/admin/v1/sync-issues/replay"


def lenient_schema() -> dict[str, Any]:
    """EMPLOYEE_SCHEMA where ``active`` may also be a string ("yes")."""
    s = copy.deepcopy(EMPLOYEE_SCHEMA)
    s["properties"]["active"] = {"type": ["boolean", "string"]}
    return s


async def fix_schema(c: TestClient[Any, Any], seeded: Seeded) -> None:
    r = await c.put(
        f"/admin/v1/schema-groups/{seeded.group_id}/schemas/employee",
        json={"schema": lenient_schema()},
        headers=ADMIN,
    )
    assert r.status == 200, await r.text()


async def replay(c: TestClient[Any, Any], eid: str, status: int = 202) -> dict[str, Any]:
    r = await c.post(REPLAY.format(eid), headers=ADMIN)
    body = dict(await r.json())
    assert r.status == status, body
    return body


async def bodies(pool: asyncpg.Pool, eid: str) -> list[tuple[int | None, str | None, bytes]]:
    rows = await pool.fetch(
        "SELECT item_index, resource_id, body FROM rejected_bodies WHERE event_id = $1"
        " ORDER BY item_index NULLS FIRST",
        eid,
    )
    return [(r["item_index"], r["resource_id"], bytes(r["body"])) for r in rows]


async def versions(pool: asyncpg.Pool, rid: str) -> list[int]:
    rows = await pool.fetch(
        "SELECT version FROM resource_changes WHERE resource_id = $1 ORDER BY version", rid
    )
    return [r["version"] for r in rows]


async def queued(redis: Redis, settings: Settings) -> int:
    pipe = redis.pipeline(transaction=False)
    for p in range(settings.partitions):
        pipe.xlen(ks.ingest_stream(p))
    return sum(int(n) for n in await pipe.execute())


async def test_a_rejected_event_is_kept_and_replayed_under_the_current_schema(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    redis: Redis, settings: Settings,
) -> None:  # fmt: skip
    bad = await post(client, seeded, emp("e1", active="yes"))
    good = await post(client, seeded, emp("e2", active=True))
    await pipeline.run()
    assert (await receipt(client, seeded, bad))["status"] == "rejected"
    sent = json.dumps(emp("e1", active="yes")).encode()  # as aiohttp sent it
    assert await bodies(pool, bad) == [(None, "e1", sent)]  # the raw body, byte for byte
    assert await bodies(pool, good) == []  # an accepted event keeps nothing
    await replay(client, good, 409)  # nothing of it was rejected: not_replayable
    assert (await replay(client, "ev_nope", 404))["code"] == "event_not_found"

    # replayed under the same schema: rejected again, and may be replayed once more
    first = (await replay(client, bad))["eventIds"]
    await pipeline.run()
    rc = await receipt(client, seeded, first[0])
    assert (rc["status"], rc["replayOf"]) == ("rejected", bad)
    assert await versions(pool, "e1") == []

    await fix_schema(client, seeded)
    answer = await replay(client, bad)
    assert answer["replayOf"] == bad and len(answer["eventIds"]) == 1
    await pipeline.run()
    rc = await receipt(client, seeded, answer["eventIds"][0])
    assert (rc["status"], rc["created"], rc["replayOf"]) == ("applied", 1, bad)
    assert await versions(pool, "e1") == [1]
    row = await pool.fetchrow("SELECT replay_of FROM ingest_events WHERE event_id = $1",
                              answer["eventIds"][0])  # fmt: skip
    assert row is not None and row["replay_of"] == bad

    # applied once: never again, and nothing is enqueued
    again = await replay(client, bad, 409)
    assert again["code"] == "already_replayed"
    assert await queued(redis, settings) == 0


async def test_a_replay_is_decided_under_the_schema_current_when_it_was_asked_for(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A worker whose registry has not polled since the schema was fixed still decides
    the replay under the fixed schema (the replay names the registry generation)."""
    bad = await post(client, seeded, emp("g1", active="yes"))
    await pipeline.run()  # the worker's registry now holds the old schema
    stale = pipeline.registry.refresh

    async def refresh(force: bool = False) -> None:
        if not force:  # the pipeline's own refresh at each run stands for a late poll
            await stale()

    monkeypatch.setattr(pipeline.registry, "refresh", refresh)
    await fix_schema(client, seeded)
    [eid] = (await replay(client, bad))["eventIds"]
    await pipeline.run()
    rc = await receipt(client, seeded, eid)
    assert (rc["status"], rc["created"]) == ("applied", 1), rc


async def test_a_replay_never_creates_a_second_version_of_an_applied_change(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
) -> None:  # fmt: skip
    bad = await post(client, seeded, emp("e3", active="yes"))
    await pipeline.run()
    await fix_schema(client, seeded)
    # the producer sent the same content itself after the fix...
    await post(client, seeded, emp("e3", active="yes"))
    # ...and two replays are queued before either is processed
    one = (await replay(client, bad))["eventIds"][0]
    two = (await replay(client, bad))["eventIds"][0]
    await pipeline.run()
    assert await versions(pool, "e3") == [1]
    for eid in (one, two):
        rc = await receipt(client, seeded, eid)
        assert (rc["status"], rc["unchanged"], rc["created"]) == ("applied", 1, 0)


async def test_replayed_snapshot_items_are_upserts_that_delete_nothing(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
) -> None:  # fmt: skip
    items = [emp("a", active=True), emp("b", active="no"), emp("c"), emp("d", active=1)]
    eid = (await post_bulk(client, seeded, items, "partial=true"))["eventId"]
    await pipeline.run()
    rc = await receipt(client, seeded, eid)
    assert (rc["created"], rc["rejected"]) == (2, 2)
    kept = await bodies(pool, eid)
    assert [(i, rid) for i, rid, _ in kept] == [(1, "b"), (3, "d")]

    await fix_schema(client, seeded)  # "no" is now valid; 1 still is not
    answer = await replay(client, eid)
    assert len(answer["eventIds"]) == 2
    await pipeline.run()
    outcomes = [await receipt(client, seeded, x) for x in answer["eventIds"]]
    assert [(o["status"], o["replayOf"]) for o in outcomes] == [
        ("applied", eid),
        ("rejected", eid),
    ]
    live = await pool.fetch("SELECT resource_id FROM resources ORDER BY resource_id")
    assert [r["resource_id"] for r in live] == ["a", "b", "c"]  # nothing deleted
    # item 1 is done; item 3 (whose replay was rejected) is replayed again, alone
    again = await replay(client, eid)
    assert len(again["eventIds"]) == 1
    await pipeline.run()
    assert (await receipt(client, seeded, again["eventIds"][0]))["status"] == "rejected"


async def test_rejected_batch_items_are_kept_and_replayed(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
) -> None:  # fmt: skip
    items = [emp("ba", active=True), emp("bb", active="no"), emp("bc", active=True)]
    r = await client.post(
        "/integration/custom-data/batch-event/employee",
        json=items,
        headers={"X-Ingest-Key": seeded.key},
    )
    assert r.status == 202, await r.text()
    eid = (await r.json())["eventId"]
    await pipeline.run()
    rc = await receipt(client, seeded, eid)
    assert (rc["created"], rc["rejected"]) == (2, 1)
    assert [(i, rid) for i, rid, _ in await bodies(pool, eid)] == [(1, "bb")]
    await fix_schema(client, seeded)
    answer = await replay(client, eid)
    await pipeline.run()
    [one] = answer["eventIds"]
    rc = await receipt(client, seeded, one)
    assert (rc["status"], rc["created"], rc["replayOf"]) == ("applied", 1, eid)
    assert await versions(pool, "bb") == [1]
    assert (await replay(client, eid, 409))["code"] == "already_replayed"


async def test_replaying_the_sync_issues_of_a_table(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline, redis: Redis,
    settings: Settings,
) -> None:  # fmt: skip
    bad = [await post(client, seeded, emp(f"s{i}", active="yes")) for i in range(3)]
    await pipeline.run()
    await fix_schema(client, seeded)
    r = await client.post(ISSUES_REPLAY, json={"table": "employee", "code": "missing_id"},
                          headers=ADMIN)  # fmt: skip
    assert r.status == 202 and (await r.json())["enqueued"] == 0
    r = await client.post(
        ISSUES_REPLAY,
        json={"table": "employee", "code": "schema_violation", "since": "2000-01-01T00:00:00Z"},
        headers=ADMIN,
    )
    body = await r.json()
    assert r.status == 202, body
    assert (body["enqueued"], body["events"], body["skipped"], body["more"]) == (3, 3, 0, False)
    await pipeline.run()
    for eid in body["eventIds"]:
        assert (await receipt(client, seeded, eid))["replayOf"] in bad
    r = await client.post(ISSUES_REPLAY, json={"table": "employee"}, headers=ADMIN)
    body = await r.json()
    assert (body["enqueued"], body["skipped"]) == (0, 3)  # replayed already
    r = await client.post(ISSUES_REPLAY, json={"table": "employee", "until": "2000-01-01"},
                          headers=ADMIN)  # fmt: skip
    assert (await r.json())["enqueued"] == 0


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/table"),
        ({"table": ""}, "/table"),
        ({"table": "employee", "code": "nope"}, "/code"),
        ({"table": "employee", "since": "yesterday"}, "/since"),
        ({"table": "employee", "until": 5}, "/until"),
        ({"table": "employee", "limit": 5}, "/limit"),
    ],
)
async def test_a_bad_sync_issues_replay_is_refused_and_enqueues_nothing(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings,
    body: dict[str, Any], pointer: str,
) -> None:  # fmt: skip
    r = await client.post(ISSUES_REPLAY, json=body, headers=ADMIN)
    answer = await r.json()
    assert r.status == 400, answer
    assert (answer["code"], answer["pointer"]) == ("invalid_parameter", pointer)
    assert await queued(redis, settings) == 0
    r = await client.post(ISSUES_REPLAY, json={"table": "employee"})
    assert r.status == 401


async def test_old_rejected_bodies_are_purged_in_batches(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO rejected_bodies (event_id, table_name, resource_type, body, created_at)"
        " SELECT 'ev_old' || n, 't', 'rt', '{}', now() - interval '31 days'"
        " FROM generate_series(1, 7) n"
    )
    await pool.execute(
        "INSERT INTO rejected_bodies (event_id, table_name, resource_type, body, created_at)"
        " VALUES ('ev_new', 't', 'rt', '{}', now() - interval '29 days')"
    )
    assert await RepairStore(pool).purge(30, batch=3) == 7
    left = await pool.fetch("SELECT event_id FROM rejected_bodies")
    assert [r["event_id"] for r in left] == ["ev_new"]
