"""The demo API paginates each route the way the seed describes (the stage tests,
the bench and the README walkthrough rely on it)."""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from tests.demo_api import (
    API_KEY,
    CAMPAIGN_ID,
    LIST_ID,
    DemoServer,
    DemoState,
    member_id,
    parse_time,
    running,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def demo() -> AsyncIterator[DemoServer]:
    async with running(DemoState.sample()) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None, **query: Any
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with http.get(url, params=query or None, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


def test_parse_time_formats() -> None:
    want = datetime(2024, 5, 1, 10, 20, 30, 123456, tzinfo=UTC)
    assert parse_time("2024-05-01T10:20:30:1234560Z") == want
    assert parse_time("2024-05-01T10:20:30.123456+00:00") == want
    assert parse_time("2024-05-01T12:20:30.123456 02:00") == want  # '+' read as a space
    assert parse_time("2024-05-01T10:20:30Z") == want.replace(microsecond=0)
    assert parse_time("2024-05-01T10:20:30") == want.replace(microsecond=0)
    with pytest.raises(ValueError):
        parse_time("yesterday")


async def test_members_offset_pages_and_auth(demo: DemoServer, http: aiohttp.ClientSession) -> None:
    url = f"{demo.url}/3.0/lists/{LIST_ID}/members"
    status, _, _ = await get_json(http, url, count=10)
    assert status == 401
    basic = base64.b64encode(f"anystring:{API_KEY}".encode()).decode()
    status, _, _ = await get_json(http, url, {"Authorization": f"Basic {basic}"}, count=1)
    assert status == 200
    sizes, ids = [], []
    for offset in (0, 10, 20, 30):
        status, body, _ = await get_json(http, url, AUTH, count=10, offset=offset)
        assert status == 200 and body["total_items"] == 25 and body["list_id"] == LIST_ID
        assert isinstance(body["_links"], list)
        sizes.append(len(body["members"]))
        ids += [m["id"] for m in body["members"]]
    assert sizes == [10, 10, 5, 0]
    assert len(set(ids)) == 25
    first = demo.state.lists[LIST_ID][ids[0]]
    assert ids[0] == member_id(first["email_address"].upper())
    status, body, _ = await get_json(http, url, AUTH, count=1)
    m = body["members"][0]
    assert {"id", "email_address", "status", "full_name", "last_changed", "list_id"} <= set(m)
    assert {"_links", "merge_fields"} <= set(m)
    assert parse_time(m["last_changed"]) == datetime(2024, 5, 1, tzinfo=UTC)
    status, body, _ = await get_json(http, f"{demo.url}/3.0/lists/nope/members", AUTH)
    assert status == 404 and body["title"] == "Resource Not Found"


async def test_members_window_filters(demo: DemoServer, http: aiohttp.ClientSession) -> None:
    url = f"{demo.url}/3.0/lists/{LIST_ID}/members"
    # sample members changed one minute apart from 2024-05-01T00:00: [5 min, 10 min) -> 5
    window = {
        "since_last_changed": "2024-05-01T00:05:00:0000000Z",
        "before_last_changed": "2024-05-01T00:10:00.000+00:00",
    }
    _, body, _ = await get_json(http, url, AUTH, count=100, **window)
    assert [m["full_name"] for m in body["members"]] == [f"Member {i}" for i in range(5, 10)]
    assert body["total_items"] == 5
    demo.state.change_member("member00001@example.com", full_name="Changed")
    demo.state.remove_member("member00002@example.com")
    demo.state.add_member("new@example.com")
    since = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S:0000000Z")
    _, body, _ = await get_json(http, url, AUTH, count=100, since_last_changed=since)
    assert sorted(m["full_name"] for m in body["members"]) == ["Changed", "new"]
    _, body, _ = await get_json(http, url, AUTH, count=100)
    assert body["total_items"] == 25
    status, body, _ = await get_json(http, url, AUTH, since_last_changed="May 1st")
    assert status == 400


async def test_email_activity(demo: DemoServer, http: aiohttp.ClientSession) -> None:
    url = f"{demo.url}/3.0/reports/{CAMPAIGN_ID}/email-activity"
    emails: list[dict[str, Any]] = []
    for offset in (0, 10, 20):
        _, body, _ = await get_json(http, url, AUTH, count=10, offset=offset)
        assert body["total_items"] == 25
        emails += body["emails"]
    assert len(emails) == 25
    assert {"campaign_id", "list_id", "email_id", "email_address", "activity"} <= set(emails[0])
    counts = [len(e["activity"]) for e in emails]
    assert 0 in counts and max(counts) == 2
    act = next(e for e in emails if e["activity"])["activity"][0]
    assert set(act) == {"action", "timestamp", "ip"}
    assert (await get_json(http, f"{demo.url}/3.0/reports/nope/email-activity", AUTH))[0] == 404


async def test_zendesk_continuation_and_last_page_trap(
    demo: DemoServer, http: aiohttp.ClientSession
) -> None:
    url = f"{demo.url}/api/v2/search/export"
    q: dict[str, Any] = {"query": "type:user", "filter[type]": "user", "page[size]": 10}
    names: list[str] = []
    metas = []
    while True:
        status, body, _ = await get_json(http, url, **q)
        assert status == 200 and body["facets"] is None
        names += [u["name"] for u in body["results"]]
        metas.append(body["meta"])
        if not body["meta"]["has_more"]:
            break
        q["page[after]"] = body["meta"]["after_cursor"]
    assert names == [f"User {i}" for i in range(25)]
    assert [m["has_more"] for m in metas] == [True, True, False]
    last = metas[-1]
    assert last["after_cursor"] and last["before_cursor"] is None  # the seed's trap
    assert body["links"]["next"] and "page%5Bafter%5D=" in body["links"]["next"]
    q["page[after]"] = last["after_cursor"]
    _, body, _ = await get_json(http, url, **q)
    assert body["results"] == [] and body["meta"]["has_more"] is False
    user = demo.state.users[5624716025745]
    assert user["result_type"] == "user"
    status, _, _ = await get_json(http, url, query="type:user")
    assert status == 400  # filter[type] missing


async def test_zendesk_updated_query(demo: DemoServer, http: aiohttp.ClientSession) -> None:
    url = f"{demo.url}/api/v2/search/export"
    base = {"filter[type]": "user", "page[size]": 100}
    for query in (
        "type:user updated>2024-05-01T00:19:00Z updated<2024-05-01T00:22:00Z",
        "type:user updated > 2024-05-01T00:19:00+00:00 updated < 2024-05-01T00:22:00Z",
    ):
        _, body, _ = await get_json(http, url, query=query, **base)
        assert [u["name"] for u in body["results"]] == ["User 20", "User 21"]
        assert body["results"][0]["updated_at"] == "2024-05-01T00:20:00Z"
    # the seed's ADVANCE path puts a query in the path and the queryParams add another
    async with http.get(
        f"{url}?query=type:user&filter[type]=user&query=type:user+updated<2024-05-01T00:02:00Z"
    ) as resp:
        body = await resp.json()
    assert [u["name"] for u in body["results"]] == ["User 0", "User 1"]
    _, body, _ = await get_json(http, url, query="type:ticket", **base)
    assert body["results"] == []


async def test_page_with_x_pagecount(demo: DemoServer, http: aiohttp.ClientSession) -> None:
    url = f"{demo.url}/paged/items"
    seen: list[str] = []
    for number in (1, 2, 3, 4):
        status, body, headers = await get_json(http, url, pageNumber=number, pageSize=10)
        assert status == 200 and headers["x-pagecount"] == "3"
        seen += [i["id"] for i in body["items"]]
        if number == 4:
            assert body == {"items": []}
    assert seen == sorted(demo.state.items) and len(seen) == 25


async def test_pointer_relative_and_absolute(demo: DemoServer, http: aiohttp.ClientSession) -> None:
    for absolute in (False, True):
        demo.state.absolute_pointers = absolute
        url: str | None = f"{demo.url}/pointer/items?limit=10"
        seen: list[str] = []
        pointers: list[str | None] = []
        while url is not None:
            _, body, _ = await get_json(http, url)
            seen += [i["id"] for i in body["items"]]
            nxt = body["paging"]["next"]
            pointers.append(nxt)
            url = None if nxt is None else (nxt if absolute else demo.url + nxt)
        assert len(seen) == 25 and len(pointers) == 3 and pointers[-1] is None
        first = pointers[0]
        assert first is not None
        assert first.startswith(demo.url if absolute else "/pointer/items?after=")


async def test_none_and_item_changes(demo: DemoServer, http: aiohttp.ClientSession) -> None:
    demo.state.remove_item("i0003")
    demo.state.change_item("i0004", name="four")
    demo.state.add_item("extra")
    _, body, _ = await get_json(http, f"{demo.url}/all/items")
    by_id = {i["id"]: i for i in body["items"]}
    assert len(by_id) == 25 and "i0003" not in by_id
    assert by_id["i0004"]["name"] == "four" and by_id["i0026"]["name"] == "extra"


async def test_bulk_offset(demo: DemoServer, http: aiohttp.ClientSession) -> None:
    demo.state.bulk_count = 2500
    sizes = []
    ids: list[str] = []
    for offset in (0, 1000, 2000, 3000):
        _, body, _ = await get_json(http, f"{demo.url}/bulk/items", limit=1000, offset=offset)
        sizes.append(len(body["items"]))
        ids += [r["id"] for r in body["items"]]
        assert body["total"] == 2500
    assert sizes == [1000, 1000, 500, 0]
    assert ids == [f"r{i:06d}" for i in range(2500)]


async def test_request_log_and_faults(demo: DemoServer, http: aiohttp.ClientSession) -> None:
    demo.state.fail_next = [(429, {"Retry-After": "7"})]
    async with http.get(f"{demo.url}/all/items?x=1", headers={"X-Test": "yes"}) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "7"
    demo.state.redirect = ""
    async with http.get(f"{demo.url}/all/items", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/all/items"
    async with http.get(f"{demo.url}/all/items") as resp:
        assert resp.status == 200
    log = demo.state.requests
    assert [r.path for r in log] == ["/all/items"] * 3
    assert log[0].query == {"x": "1"} and log[0].headers["X-Test"] == "yes"
    assert log[0].at <= log[1].at <= log[2].at
    assert demo.state.fail_next == [] and demo.state.redirect is None


async def test_runs_standalone() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.demo_api", "--port", "0", "--members", "3",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("demo API listening on http://127.0.0.1:")
        url = line.split()[-1]
        async with aiohttp.ClientSession() as http:
            _, body, _ = await get_json(http, f"{url}/3.0/lists/{LIST_ID}/members", AUTH)
        assert body["total_items"] == 3
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
