"""Two ``ingestd sources`` processes against one database: a run is carried out by exactly
one of them, and when the one running it is killed (-9) mid-run the other fails the run
``run_abandoned``, aborts its snapshot, and the next run applies."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from shared.config import Settings
from tests.conftest import ADMIN, InlinePipeline, Seeded
from tests.demo_api import API_KEY, LIST_ID, DemoServer, DemoState, running
from tests.e2e.procs import stages
from tests.helpers import poll
from tests.sources_helpers import MEMBER_SCHEMA, add_table, create_source, mailchimp_members

pytestmark = pytest.mark.slow
Client = TestClient[Any, Any]
PAGES = 6


@pytest.fixture
async def demo() -> AsyncIterator[DemoServer]:
    async with running(DemoState.sample(members=50 * PAGES - 10)) as server:
        yield server


async def run_state(client: Client, run_id: str) -> dict[str, Any]:
    r = await client.get(f"/admin/v1/sources/members/runs/{run_id}", headers=ADMIN)
    assert r.status == 200, await r.text()
    return dict(await r.json())


async def start(client: Client) -> str:
    r = await client.post("/admin/v1/sources/members/runs", json={}, headers=ADMIN)
    assert r.status == 202, await r.text()
    return str((await r.json())["runId"])


async def ended(client: Client, run_id: str) -> dict[str, Any] | None:
    run = await run_state(client, run_id)
    return run if run["status"] not in ("queued", "running") else None


async def test_two_stage_processes_and_a_kill_mid_run(
    client: Client, seeded: Seeded, demo: DemoServer, settings: Settings, tmp_path: Path,
    pool: asyncpg.Pool, pipeline: InlinePipeline,
) -> None:  # fmt: skip
    spec = mailchimp_members(demo.url)
    spec["attributes"]["paginationParams"]["limitValue"] = "50"
    await add_table(client, seeded, "member", MEMBER_SCHEMA)
    params = {"listId": LIST_ID, "apiKey": API_KEY}
    await create_source(client, seeded, "members", spec, params, "member")
    path = f"/3.0/lists/{LIST_ID}/members"
    demo.state.latency_s = 0.05
    env = {"INGESTD_SOURCE_STALE_S": "2", "INGESTD_SOURCE_POLL_MS": "50"}
    with stages(settings, tmp_path, "sources", "sources", **env) as procs:
        pids = {s.pid for s in procs["sources"]}
        owners = []
        for i in range(3):
            rid = await start(client)
            run = await poll("a run to end", lambda r=rid: ended(client, r), 30)
            assert run["status"] == "succeeded", run
            owners.append(await pool.fetchval("SELECT owner FROM source_runs WHERE id = $1",
                                              run["runId"]))  # fmt: skip
            # every page was fetched once: no second stage ran the same run
            assert len(demo.state.requests_to(path)) == PAGES * (i + 1)
        assert {int(o.split(":")[1]) for o in owners} <= pids
        await pipeline.run()
        assert await pool.fetchval("SELECT count(*) FROM resources") == 50 * PAGES - 10

        demo.state.remove_member("member00003@example.com")
        demo.state.latency_s = 0.5
        run_id = await start(client)

        async def running_with_a_page() -> str | None:
            row = await pool.fetchrow("SELECT owner, pages FROM source_runs WHERE id = $1", run_id)
            return row["owner"] if row and row["owner"] and row["pages"] >= 1 else None

        owner = await poll("the run to store a page", running_with_a_page, 30)
        victim = next(s for s in procs["sources"] if s.pid == int(owner.split(":")[1]))
        os.killpg(victim.pid, signal.SIGKILL)
        victim.proc.wait(10)  # type: ignore[union-attr]
        run = await poll("the abandoned run to fail", lambda: ended(client, run_id), 30)
        assert run["status"] == "failed" and run["error"]["code"] == "run_abandoned", run
        demo.state.latency_s = 0
        await pipeline.run()
        assert await pool.fetchval("SELECT count(*) FROM resources") == 50 * PAGES - 10

        rid = await start(client)
        run = await poll("a run by the survivor", lambda: ended(client, rid), 30)
        assert run["status"] == "succeeded" and run["deleted"] in (0, 1)
        await pipeline.run()
        assert (await run_state(client, run["runId"]))["deleted"] == 1
        assert await pool.fetchval("SELECT count(*) FROM resources") == 50 * PAGES - 11
