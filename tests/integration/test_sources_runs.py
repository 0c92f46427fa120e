"""Source runs end to end: the demo REST API (a real local server) → the sources stage's
claim / run / finish → the worker and projector → resources, history, sync issues."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN, Seeded
from tests.demo_api import API_KEY, LIST_ID, DemoServer, DemoState, member_id, running
from tests.sources_helpers import (
    MEMBER_SCHEMA,
    Harness,
    add_table,
    create_source,
    mailchimp_members,
    with_paging,
)

Client = TestClient[Any, Any]


@pytest.fixture
async def demo() -> AsyncIterator[DemoServer]:
    async with running(DemoState.sample(members=250)) as server:
        yield server


async def members(pool: asyncpg.Pool) -> dict[str, Any]:
    rows = await pool.fetch(
        "SELECT resource_id, name, data FROM resources WHERE resource_type = '_directory_member'"
    )
    return {r["resource_id"]: r for r in rows}


async def member_source(
    client: Client, seeded: Seeded, demo: DemoServer, **extra: Any
) -> dict[str, Any]:
    await add_table(client, seeded, "member", MEMBER_SCHEMA)
    spec = extra.pop("spec", None) or mailchimp_members(demo.url)
    params = {"listId": LIST_ID, "apiKey": API_KEY}
    return await create_source(client, seeded, "members", spec, params, "member", **extra)


async def test_the_seed_mailchimp_members_full_run_and_a_vanished_member(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool
) -> None:
    await member_source(client, seeded, demo)
    run = await harness.run("members")
    assert run["status"] == "succeeded", run
    assert (run["pages"], run["records"], run["created"]) == (3, 250, 250)
    got = await members(pool)
    one = got[member_id("member00007@example.com")]
    assert one["name"] == "member00007@example.com"
    assert "_links" not in one["data"]["member"] and "list_id" not in one["data"]["member"]
    # the OFFSET requests, exactly as the seed describes them
    seen = [r.query for r in demo.state.requests_to(f"/3.0/lists/{LIST_ID}/members")]
    assert [(q["count"], q["offset"]) for q in seen] == [("100", "0"), ("100", "100"),
                                                          ("100", "200")]  # fmt: skip
    assert "since_last_changed" not in seen[0] and "before_last_changed" in seen[0]

    demo.state.remove_member("member00007@example.com")
    demo.state.change_member("member00008@example.com", status="unsubscribed")
    run = await harness.run("members")
    assert (run["status"], run["deleted"], run["updated"], run["unchanged"]) == (
        "succeeded", 1, 1, 248,
    )  # fmt: skip
    assert member_id("member00007@example.com") not in await members(pool)
    row = await pool.fetchrow(
        "SELECT event, actor FROM resource_changes WHERE op = 'deleted' AND resource_id = $1",
        member_id("member00007@example.com"),
    )
    assert row is not None and row["event"] == run["runId"]
    assert row["actor"] == {"source": "members", "kind": "backfill"}


async def test_a_failed_full_run_deletes_nothing(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool
) -> None:
    await member_source(client, seeded, demo)
    assert (await harness.run("members"))["status"] == "succeeded"
    demo.state.remove_member("member00001@example.com")
    spec_run = await harness.start_run("members")
    demo.state.fail_next = [(200, {})]  # the first request gets a 200 that is not JSON
    await harness.finish()
    run = await harness.get_run("members", spec_run)
    assert run["status"] == "failed" and run["error"]["code"] == "invalid_response"
    assert len(await members(pool)) == 250


async def test_max_requests_fails_a_full_run_and_truncates_an_incremental_one(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool
) -> None:
    spec = with_paging(mailchimp_members(demo.url), maximumRequest=2)
    await member_source(client, seeded, demo, spec=spec)
    run = await harness.run("members")
    assert run["status"] == "failed" and run["error"]["code"] == "max_requests_reached"
    assert run["requests"] == 2 and await members(pool) == {}

    body = {
        "name": "members", "sourceSpec": "members-spec",
        "params": {"listId": LIST_ID, "apiKey": "******"},
        "integration": seeded.integration_id, "table": "member", "mode": "incremental",
    }  # fmt: skip
    r = await client.put("/admin/v1/sources/members", json=body, headers=ADMIN)
    assert r.status == 200, await r.text()
    run = await harness.run("members")
    assert (run["status"], run["truncated"], run["records"]) == ("succeeded", True, 200)
    assert len(await members(pool)) == 200
