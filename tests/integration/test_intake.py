"""The sources stage's writers (shared/redis/intake.py) through the real worker and projector."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.config import Settings
from shared.redis import intake
from shared.redis.intake import SessionGone, SnapshotWriter, UpsertWriter
from tests.conftest import InlinePipeline, Seeded
from tests.helpers import emp, receipt

Client = TestClient[Any, Any]


def _kw(settings: Settings, seeded: Seeded, group_key: str = "acme") -> dict[str, Any]:
    return {
        "partitions": settings.partitions,
        "integration": seeded.integration_id,
        "table": "employee",
        "resource_type": "_directory_employee",
        "group_key": group_key,
        "event": "run_test",
        "actor": {"source": "demo"},
        "session_ttl": 600,
        "receipt_ttl": 600,
    }


async def ids(pool: asyncpg.Pool, group_key: str = "acme") -> list[str]:
    rows = await pool.fetch(
        "SELECT resource_id FROM resources WHERE group_key = $1 ORDER BY 1", group_key
    )
    return [r[0] for r in rows]


async def test_full_run_deletes_what_vanished_and_upserts_delete_nothing(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    redis: Redis, settings: Settings,
) -> None:  # fmt: skip
    full = SnapshotWriter(redis, session="run_1", **_kw(settings, seeded))
    await full.add([emp("a"), emp("b")])
    await full.add([emp("c")])
    eid = await full.complete()
    await pipeline.run()
    assert await ids(pool) == ["a", "b", "c"]
    rc = await receipt(client, seeded, eid)
    assert (rc["status"], rc["created"]) == ("applied", 3)

    up = UpsertWriter(redis, **_kw(settings, seeded))
    (e1,) = await up.add([emp("d"), emp("a", active=True), {"nope": 1}])
    await pipeline.run()
    assert await ids(pool) == ["a", "b", "c", "d"]  # nothing deleted
    rc = await receipt(client, seeded, e1)
    assert (rc["status"], rc["created"], rc["updated"], rc["rejected"]) == ("applied", 1, 1, 1)
    assert rc["deleted"] == 0 and all(i["code"] != "deletions_skipped" for i in rc["issues"])
    issues = await pool.fetch("SELECT code FROM sync_issues WHERE event_id = $1", e1)
    assert "missing_id" in {r[0] for r in issues}

    again = SnapshotWriter(redis, session="run_2", **_kw(settings, seeded))
    await again.add([emp("a", active=True), emp("d")])
    await again.complete()
    await pipeline.run()
    assert await ids(pool) == ["a", "d"]
    row = await pool.fetchrow(
        "SELECT event, actor FROM resource_changes WHERE resource_id = 'b' AND op = 'deleted'"
    )
    assert row is not None and row["event"] == "run_test"


async def test_an_aborted_full_run_changes_nothing(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    redis: Redis, settings: Settings,
) -> None:  # fmt: skip
    first = SnapshotWriter(redis, session="run_1", **_kw(settings, seeded))
    await first.add([emp("a"), emp("b")])
    await first.complete()
    await pipeline.run()
    cut = SnapshotWriter(redis, session="run_2", **_kw(settings, seeded))
    await cut.add([emp("a")])
    assert await cut.abort() == "aborted"
    with pytest.raises(SessionGone):
        await cut.add([emp("z")])
    await pipeline.run()
    assert await ids(pool) == ["a", "b"]


async def test_an_upsert_batch_is_never_superseded_by_a_snapshot(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    redis: Redis, settings: Settings,
) -> None:  # fmt: skip
    """An upsert page opened before a snapshot that applies first still applies, and it
    does not supersede an older open snapshot either."""
    older = SnapshotWriter(redis, session="run_old", **_kw(settings, seeded))
    await older.add([emp("a")])
    up = UpsertWriter(redis, **_kw(settings, seeded))
    (eid,) = await up.add([emp("u")])
    await pipeline.run()
    await older.complete()
    await pipeline.run()
    assert (await receipt(client, seeded, eid))["status"] == "applied"
    assert await ids(pool) == ["a"]  # the snapshot applied after it: u is gone again


async def test_a_page_larger_than_a_part_is_split(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool,
    redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(intake, "MAX_PART_BYTES", 200)
    up = UpsertWriter(redis, **_kw(settings, seeded))
    events = await up.add([emp(f"r{i:03d}") for i in range(40)])
    assert len(events) > 2 and up.event_ids == events
    full = SnapshotWriter(redis, session="run_s", **_kw(settings, seeded, "other"))
    await full.add([emp(f"s{i:03d}") for i in range(40)])
    await full.complete()
    assert full.parts > 3
    await pipeline.run()
    assert len(await ids(pool)) == 40 and len(await ids(pool, "other")) == 40
