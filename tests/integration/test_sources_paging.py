"""Every pagination type, explode, the seed's ADVANCE schedule and incremental windows,
through real runs against the demo API (a local server) and the real pipeline."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Seeded
from tests.demo_api import API_KEY, CAMPAIGN_ID, LIST_ID, DemoServer, DemoState, running
from tests.sources_helpers import Harness, add_table, create_source, mailchimp_members
from tests.unit.pull_examples import zendesk_users

Client = TestClient[Any, Any]

ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "n": {}},
    "required": ["id"],
    "resmo": {"id": "$.id", "name": "$.name"},
}
USER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
    "required": ["id"],
    "additionalProperties": True,
    "unevaluatedProperties": True,
    "resmo": {"id": "$.id", "name": "$.name"},
}


@pytest.fixture
async def demo() -> AsyncIterator[DemoServer]:
    async with running(DemoState.sample(members=30, users=45, items=23)) as server:
        yield server


def generic(host: str, path: str, paging: dict[str, Any], **content: Any) -> dict[str, Any]:
    return {
        "attributes": {
            "urlParams": {"host": host, "path": path, "method": "GET"},
            "contentPath": {"path": "$.items", **content},
            "paginationParams": paging,
        },
        "spec": {"type": "object", "properties": {}},
    }


async def ids(pool: asyncpg.Pool, resource_type: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT resource_id FROM resources WHERE resource_type = $1 ORDER BY 1", resource_type
    )
    return [r[0] for r in rows]


@pytest.mark.parametrize(
    ("path", "paging", "requests"),
    [
        ("/paged/items", {"type": "PAGE", "pageParamName": "pageNumber", "limitName": "pageSize",
                          "limitValue": 5, "initialPageIndex": 1,
                          "endPageIndex": "headers.x-pagecount"}, 5),
        ("/pointer/items", {"type": "POINTER", "limitName": "limit", "limitValue": 10,
                            "pointerPath": "paging.next"}, 3),
        ("/all/items", {"type": "NONE"}, 1),
    ],
)  # fmt: skip
async def test_page_pointer_and_none_read_everything_once(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool,
    path: str, paging: dict[str, Any], requests: int,
) -> None:  # fmt: skip
    await add_table(client, seeded, "item", ITEM_SCHEMA)
    await create_source(client, seeded, "items", generic(demo.url, path, paging), {}, "item")
    run = await harness.run("items")
    assert (run["status"], run["requests"], run["records"]) == ("succeeded", requests, 23), run
    assert len(await ids(pool, "_directory_item")) == 23
    assert len(demo.state.requests_to(path)) == requests


async def test_zendesk_continuation_ends_on_has_more_false_and_advance_in_both_kinds(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool
) -> None:
    spec = zendesk_users()
    attrs = spec["attributes"]
    attrs["urlParams"]["host"] = demo.url
    attrs["urlParams"]["queryParams"]["page[size]"] = "20"
    attrs["paginationParams"]["delayRequestMillis"] = "0"
    await add_table(client, seeded, "user", USER_SCHEMA)
    params = {"subdomain": "dev", "token": "zendesk-token"}
    start = datetime(2024, 5, 1, 0, 30, tzinfo=UTC)
    await create_source(client, seeded, "users", spec, params, "user", mode="incremental",
                        startTime=start.isoformat())  # fmt: skip
    # the last page says has_more false WITH a cursor: the run ends there, no fourth request
    run = await harness.run("users", "backfill")
    assert (run["status"], run["requests"], run["records"]) == ("succeeded", 3, 45), run
    first = demo.state.requests_to("/api/v2/search/export")[0].query
    # backfill: the @{…} path adds its query; {SCHEDULE_QUERY} is the backfill expression
    assert first["query"].startswith("type:user updated < ")
    assert first["filter[type]"] == "user"
    demo.state.requests.clear()

    run = await harness.run("users", "incremental")
    assert run["status"] == "succeeded"
    q = demo.state.requests_to("/api/v2/search/export")[0].query
    start_text = run["windowStart"]
    assert start_text is not None and q["query"].startswith("type:user updated > ")
    assert "updated < " in q["query"] and q["query"].count("T") == 2
    assert run["records"] == 0  # nothing changed after the backfill's end
    assert len(await ids(pool, "_directory_user")) == 45


async def test_explode_the_seeds_email_activity(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool
) -> None:
    schema = {
        "type": "object",
        "properties": {"email": {"type": "object"}, "activity": {"type": "object"}},
        "required": ["email", "activity"],
        "resmo": {"id": "$.activity.timestamp", "name": "$.email.email_address"},
    }
    await add_table(client, seeded, "activity", schema)
    spec = mailchimp_members(demo.url)
    attrs = spec["attributes"]
    attrs["urlParams"]["path"] = "/3.0/reports/${campaignId}/email-activity"
    attrs["contentPath"] = {"path": "$.emails", "skipAttributes": ["_links"],
                            "overrideWrapperAttribute": "email"}  # fmt: skip
    attrs["explodeEntityPath"] = {"path": "$.email.activity", "skipAttributes": ["ip"],
                                  "overrideWrapperAttribute": "activity"}  # fmt: skip
    attrs.pop("scheduleParams")
    spec["spec"]["properties"]["campaignId"] = {"type": "string"}
    params = {"listId": LIST_ID, "apiKey": API_KEY, "campaignId": CAMPAIGN_ID}
    await create_source(client, seeded, "activity", spec, params, "activity")
    run = await harness.run("activity")
    # 30 members with 0, 1, 2 activities in turn: 30 activities, 10 emails yield none
    assert (run["status"], run["records"]) == ("succeeded", 30), run
    row = await pool.fetchrow("SELECT data FROM resources WHERE resource_type = "
                              "'_directory_activity' LIMIT 1")  # fmt: skip
    assert row is not None
    data = row["data"]
    assert set(data) == {"email", "activity"} and "activity" not in data["email"]
    assert "_links" not in data["email"] and "ip" not in data["activity"]


async def test_incremental_windows_advance_only_on_success_in_the_seeds_format(
    client: Client, seeded: Seeded, demo: DemoServer, harness: Harness, pool: asyncpg.Pool
) -> None:
    from tests.sources_helpers import MEMBER_SCHEMA

    await add_table(client, seeded, "member", MEMBER_SCHEMA)
    spec = copy.deepcopy(mailchimp_members(demo.url))
    start = datetime(2024, 5, 1, 0, 10, tzinfo=UTC)
    await create_source(client, seeded, "members", spec, {"listId": LIST_ID, "apiKey": API_KEY},
                        "member", mode="incremental", startTime=start.isoformat())  # fmt: skip
    path = f"/3.0/lists/{LIST_ID}/members"
    first = await harness.run("members")
    assert (first["status"], first["records"]) == ("succeeded", 20)  # changed from 00:10 on
    q = demo.state.requests_to(path)[0].query
    assert q["since_last_changed"] == "2024-05-01T00:10:00:0000000Z"  # the seed's format
    assert q["before_last_changed"].endswith("Z") and q["before_last_changed"].count(":") == 3

    demo.state.requests.clear()
    demo.state.fail_next = [(404, {})]
    failed = await harness.run("members")
    assert failed["status"] == "failed" and failed["error"]["code"] == "source_http_error"

    demo.state.change_member("member00003@example.com", status="cleaned")
    demo.state.requests.clear()
    third = await harness.run("members")
    assert (third["status"], third["records"], third["created"]) == ("succeeded", 1, 1)
    # it starts where the last SUCCESSFUL run ended, not where the failed one did
    assert third["windowStart"] == first["windowEnd"]
    assert len(await ids(pool, "_directory_member")) == 21
