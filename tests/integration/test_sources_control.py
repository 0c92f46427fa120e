"""Source runs under control and under faults: secrets never shown, preview, retries,
cancel, schedules, two stages at once, a stage that stops mid-run."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.sources.main import SourcesStage
from shared.config import Settings
from shared.redis import keyspace as ks
from shared.redis.sessions import Scope, SessionStore
from tests.conftest import ADMIN, Seeded
from tests.demo_api import API_KEY, LIST_ID, DemoServer, DemoState, running
from tests.helpers import poll
from tests.sources_helpers import (
    MEMBER_SCHEMA,
    Harness,
    add_table,
    create_source,
    mailchimp_members,
)

Client = TestClient[Any, Any]
SECRET = API_KEY  # the demo API's key: a secret param of the source


@pytest.fixture
async def demo() -> AsyncIterator[DemoServer]:
    async with running(DemoState.sample(members=120)) as server:
        yield server


async def members_source(client: Client, seeded: Seeded, demo: DemoServer, **kw: Any) -> None:
    spec = mailchimp_members(demo.url)
    # the key travels in the query too, so a failure's URL would carry it
    spec["attributes"]["urlParams"]["queryParams"] = {"key": "${apiKey}"}
    spec["attributes"]["paginationParams"]["limitValue"] = "50"
    await add_table(client, seeded, "member", MEMBER_SCHEMA)
    await create_source(client, seeded, "members", spec, {"listId": LIST_ID, "apiKey": SECRET},
                        "member", **kw)  # fmt: skip


async def first_page(harness: Harness, run_id: str) -> bool:
    return bool((await harness.get_run("members", run_id))["pages"] >= 1)


async def stopped(stage: SourcesStage) -> bool:
    return not stage.running


async def count(pool: asyncpg.Pool) -> int:
    n: int = await pool.fetchval(
        "SELECT count(*) FROM resources WHERE resource_type = '_directory_member'"
    )
    return n


async def test_secrets_are_in_no_answer_log_line_or_run_record(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    await members_source(client, seeded, demo)
    ok = await harness.run("members")
    assert ok["status"] == "succeeded"
    demo.state.fail_next = [(503, {}), (404, {})]  # a retry, then a failure naming the URL
    failed = await harness.run("members")
    assert failed["status"] == "failed" and "key=******" in failed["error"]["request"]
    answers = []
    for path in ("/admin/v1/sources", "/admin/v1/sources/members",
                 "/admin/v1/sources/members/runs"):  # fmt: skip
        r = await client.get(path, headers=ADMIN)
        answers.append(await r.text())
    r = await client.post("/admin/v1/sources/members/preview", headers=ADMIN)
    assert r.status == 200, await r.text()
    answers.append(await r.text())
    rows = await pool.fetch("SELECT to_jsonb(r)::text FROM source_runs r")
    stored = await pool.fetchval("SELECT params::text || coalesce(encode(secret_params, 'escape'),"
                                 " '') FROM sources")  # fmt: skip
    everything = "\n".join([*answers, *(r[0] for r in rows), stored, caplog.text])
    assert '"apiKey": "******"' in answers[1].replace('":"', '": "')
    assert SECRET not in everything
    assert "503" in caplog.text  # the retry was logged, with the URL masked


async def test_preview_shows_the_request_page_records_and_issues_and_ingests_nothing(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool
) -> None:
    await members_source(client, seeded, demo)
    first_member = next(iter(demo.state.lists[LIST_ID].values()))
    first_member["status"] = 5  # the schema says a string
    r = await client.post("/admin/v1/sources/members/preview", headers=ADMIN)
    assert r.status == 200, await r.text()
    out = await r.json()
    assert (
        out["request"]["url"].endswith("&count=50&offset=0") or "count=50" in out["request"]["url"]
    )
    assert out["request"]["headers"]["Authorization"] == "Bearer ******"
    assert out["count"] == 50 and out["recordsTotal"] == 50 and len(out["records"]) == 50
    bad, good = out["records"][0], out["records"][1]
    assert good["id"] and set(good["record"]) == {"member"} and good["issues"] == []
    assert [i["pointer"] for i in bad["issues"]] == ["/member/status"] and out["invalid"] == 1
    assert "offset=50" in out["next"]["url"]
    assert '"members"' in out["excerpt"]
    assert await count(pool) == 0 and await pool.fetchval("SELECT count(*) FROM source_runs") == 0

    demo.state.fail_next = [(401, {}), (401, {})]
    r = await client.post("/admin/v1/sources/members/preview", headers=ADMIN)
    assert r.status == 502
    err = await r.json()
    assert err["code"] == "source_http_error" and SECRET not in orjson.dumps(err).decode()


async def test_429_with_retry_after_and_503_are_retried_within_a_run(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool
) -> None:
    await members_source(client, seeded, demo)
    demo.state.fail_next = [(429, {"Retry-After": "1"}), (503, {})]
    run = await harness.run("members")
    assert run["status"] == "succeeded" and run["requests"] == 3 + 2
    served = demo.state.requests_to(f"/3.0/lists/{LIST_ID}/members")
    assert served[1].at - served[0].at >= 1.0  # Retry-After honoured
    assert await count(pool) == 120


async def test_cancel_stops_a_full_run_and_deletes_nothing(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool
) -> None:
    await members_source(client, seeded, demo)
    assert (await harness.run("members"))["status"] == "succeeded"
    demo.state.remove_member("member00001@example.com")
    demo.state.latency_s = 0.3
    run_id = await harness.start_run("members")
    async with asyncio.timeout(20):
        while not harness.stage.running:
            await harness.stage.tick()
        await poll("a first page", lambda: first_page(harness, run_id), 20)
    r = await client.delete(f"/admin/v1/sources/members/runs/{run_id}", headers=ADMIN)
    assert r.status == 200 and (await r.json())["status"] == "cancelled"
    await poll("the run to stop", lambda: stopped(harness.stage), 20)
    demo.state.latency_s = 0
    await harness.finish()
    assert (await harness.get_run("members", run_id))["status"] == "cancelled"
    assert await count(pool) == 120  # the member removed from the API is still here


async def test_a_due_schedule_queues_one_run_and_moves_on(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool
) -> None:
    await members_source(client, seeded, demo, schedule={"every": "15m"})
    before = await pool.fetchval("SELECT next_run_at FROM sources")
    assert before is not None
    await pool.execute("UPDATE sources SET next_run_at = now() - interval '1 second'")
    await harness.finish()
    runs = await pool.fetch("SELECT status, kind FROM source_runs")
    assert [tuple(r) for r in runs] == [("succeeded", "backfill")]
    assert await pool.fetchval("SELECT next_run_at > now() + interval '14 minutes' FROM sources")
    assert await count(pool) == 120


async def test_two_stages_never_run_one_source_at_once(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool,
    settings: Settings, redis: Redis,
) -> None:  # fmt: skip
    await members_source(client, seeded, demo)
    other = SourcesStage(settings, harness.store, harness.stage.registry, redis)
    demo.state.latency_s = 0.05
    for _ in range(3):
        run_id = await harness.start_run("members")
        # a second run of the same source while one is open: refused by the database
        r = await client.post("/admin/v1/sources/members/runs", json={}, headers=ADMIN)
        assert r.status == 409 and (await r.json())["code"] == "run_in_progress"
        async with asyncio.timeout(30):
            while (await harness.get_run("members", run_id))["status"] in ("queued", "running"):
                await asyncio.gather(harness.stage.tick(), other.tick())
                assert len(harness.stage.running) + len(other.running) <= 1
                await asyncio.sleep(0.01)
        await harness.pipeline.run()
    runs = await pool.fetch("SELECT status, owner FROM source_runs ORDER BY created_at")
    assert [r["status"] for r in runs] == ["succeeded"] * 3
    assert await count(pool) == 120


async def test_a_stage_that_stops_mid_run_is_failed_by_another_and_deletes_nothing(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool,
    settings: Settings, redis: Redis,
) -> None:  # fmt: skip
    await members_source(client, seeded, demo)
    assert (await harness.run("members"))["status"] == "succeeded"
    demo.state.remove_member("member00001@example.com")
    quick = dataclasses.replace(settings, source_stale_s=1)
    dying = SourcesStage(quick, harness.store, harness.stage.registry, redis)
    demo.state.latency_s = 0.3
    run_id = await harness.start_run("members")
    await dying.tick()
    await poll("a first page", lambda: first_page(harness, run_id), 20)
    await dying.stop_runs()  # the stage dies: no finish, no abort, no more heartbeats
    session = await pool.fetchval("SELECT session FROM source_runs WHERE id = $1", run_id)
    assert session
    survivor = SourcesStage(quick, harness.store, harness.stage.registry, redis)
    async with asyncio.timeout(20):
        while (await harness.get_run("members", run_id))["status"] == "running":
            await survivor.tick()
            await asyncio.sleep(0.1)
    run = await harness.get_run("members", run_id)
    assert run["status"] == "failed" and run["error"]["code"] == "run_abandoned"
    demo.state.latency_s = 0
    await harness.pipeline.run()
    assert await count(pool) == 120
    p = ks.partition_of("_directory_member", "", settings.partitions)
    info = await SessionStore(redis).status(Scope(p, "_directory_member", "", session))
    assert info is not None and info.state == "aborted"
