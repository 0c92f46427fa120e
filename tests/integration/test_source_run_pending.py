"""A run's ``pending``: the raw events it appended that the pipeline has not applied yet.

A run ends (``succeeded``) when its last page is read and its snapshot completed; the
counts (``created`` … ``rejected``) fill in as the worker and projector apply what it
sent. ``pending`` says how far that is, so a client (``ingestd sources run --follow``)
knows when the counts are final.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.config import Settings
from tests.conftest import ADMIN, InlinePipeline, Seeded
from tests.demo_api import API_KEY, LIST_ID, DemoState, running
from tests.sources_helpers import MEMBER_SCHEMA, Harness, add_table, create_source
from tests.sources_helpers import mailchimp_members as members_spec

Client = TestClient[Any, Any]


async def test_pending_counts_the_events_not_applied_yet(
    client: Client, seeded: Seeded, settings: Settings, pool: asyncpg.Pool, redis: Redis,
    pipeline: InlinePipeline,
) -> None:  # fmt: skip
    harness = Harness(client, settings, pool, redis, pipeline)
    async with running(DemoState.sample(members=30)) as demo:
        await add_table(client, seeded, "member", MEMBER_SCHEMA)
        params = {"listId": LIST_ID, "apiKey": API_KEY}
        await create_source(client, seeded, "members", members_spec(demo.url), params, "member")
        run_id = await harness.start_run("members")
        async with asyncio.timeout(30):  # the stage alone: the run ends, nothing is applied
            while (await harness.get_run("members", run_id))["status"] != "succeeded":
                await harness.stage.tick()
                await asyncio.sleep(0.02)
            await asyncio.gather(*harness.stage.running.values())
    ended = await harness.get_run("members", run_id)
    assert (ended["pending"], ended["records"], ended["created"]) == (1, 30, 0), ended
    await pipeline.run()
    applied = await harness.get_run("members", run_id)
    assert (applied["pending"], applied["created"]) == (0, 30), applied
    r = await client.get("/admin/v1/sources/members/runs", headers=ADMIN)
    assert [(x["runId"], x["pending"]) for x in (await r.json())["items"]] == [(run_id, 0)]
