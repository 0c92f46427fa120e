"""Read API (admin token): resources with keyset pagination, one resource, sync issues."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN, InlinePipeline, Seeded, seed_directory
from tests.helpers import post

RT = "_directory_employee"
Client = TestClient[Any, Any]


async def get(client: Client, path: str, status: int = 200, **params: Any) -> dict[str, Any]:
    r = await client.get(path, params=params, headers=ADMIN)
    body = await r.json()
    assert r.status == status, body
    return dict(body)


async def test_list_paginates_by_keyset(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    ids = [f"r{i:03d}" for i in range(25)]
    for rid in ids:
        await post(client, seeded, {"employeeId": rid}, group_key="g")
    await post(client, seeded, {"employeeId": "elsewhere"}, group_key="h")
    await pipeline.run()
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"groupKey": "g", "limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = await get(client, f"/api/v1/resources/{RT}", **params)
        pages += 1
        assert len(page["items"]) <= 10
        seen += [it["id"] for it in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ids and pages == 3
    # an exact multiple of the limit ends with next = null, not an empty page
    page = await get(client, f"/api/v1/resources/{RT}", groupKey="g", limit=25)
    assert [it["id"] for it in page["items"]] == ids and page["next"] is None
    item = page["items"][0]
    assert set(item) == {"id", "name", "importantFields", "data", "_meta"}
    assert item["_meta"]["groupKey"] == "g" and item["_meta"]["version"] == 1


async def test_list_pages_are_stable_while_resources_are_added(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    for rid in ("b", "d", "f"):
        await post(client, seeded, {"employeeId": rid})
    await pipeline.run()
    page = await get(client, f"/api/v1/resources/{RT}", limit=2)
    assert [it["id"] for it in page["items"]] == ["b", "d"]
    await post(client, seeded, {"employeeId": "a"})  # sorts before the cursor
    await post(client, seeded, {"employeeId": "e"})
    await pipeline.run()
    page = await get(client, f"/api/v1/resources/{RT}", limit=2, cursor=page["next"])
    assert [it["id"] for it in page["items"]] == ["e", "f"] and page["next"] is None


async def test_list_defaults_to_the_empty_group(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await post(client, seeded, {"employeeId": "x"}, group_key="g")
    await pipeline.run()
    assert (await get(client, f"/api/v1/resources/{RT}"))["items"] == []
    assert (await get(client, f"/api/v1/resources/{RT}", groupKey="g"))["next"] is None


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "1.5", "\u00b2", "\u0661\u0660"])
async def test_list_limit_out_of_range_is_400(client: Client, seeded: Seeded, limit: str) -> None:
    body = await get(client, f"/api/v1/resources/{RT}", 400, limit=limit)
    assert body["code"] == "invalid_parameter" and body["pointer"] == "/query/limit"


async def test_list_limit_1000_is_allowed(client: Client, seeded: Seeded) -> None:
    assert (await get(client, f"/api/v1/resources/{RT}", limit=1000))["next"] is None


@pytest.mark.parametrize("cursor", ["%%%", "r0 0", "AA", "/w==", "é"])
async def test_list_bad_cursor_is_400(client: Client, seeded: Seeded, cursor: str) -> None:
    # "%%%" would decode leniently to "" (restarting the listing); "AA" decodes to U+0000;
    # "/w==" is standard, not URL-safe, base64 and decodes to a non-UTF-8 byte
    body = await get(client, f"/api/v1/resources/{RT}", 400, cursor=cursor)
    assert body["code"] == "invalid_cursor" and body["pointer"] == "/query/cursor"


async def test_nul_in_query_values_is_an_answer_not_a_500(client: Client, seeded: Seeded) -> None:
    """PostgreSQL text cannot hold U+0000; asking it to compare one must not be a 500."""
    body = await get(client, f"/api/v1/resources/{RT}", 400, groupKey="a\x00")
    assert body["pointer"] == "/query/groupKey"
    body = await get(client, f"/api/v1/resources/{RT}/a", 400, groupKey="\x00")
    assert body["pointer"] == "/query/groupKey"
    body = await get(client, "/api/v1/sync-issues", 400, table="t\x00")
    assert body["pointer"] == "/query/table"
    for path in (f"/api/v1/resources/{RT}/a%00b", f"/api/v1/resources/{RT}/a%00b/history"):
        r = await client.get(path, headers=ADMIN)
        body = await r.json()
        # no such resource can exist: 404, or 400 for a character ingestd never stores
        assert (r.status, body["code"]) in {
            (404, "resource_not_found"),
            (400, "invalid_character"),
        }, body


async def test_unknown_resource_type_is_404(client: Client, seeded: Seeded) -> None:
    body = await get(client, "/api/v1/resources/_nope_table", 404)
    assert body["code"] == "resource_type_not_found"
    body = await get(client, "/api/v1/resources/_nope_table/x", 404)
    assert body["code"] == "resource_type_not_found"


async def test_read_api_needs_the_admin_token(client: Client, seeded: Seeded) -> None:
    for path in (
        f"/api/v1/resources/{RT}",
        f"/api/v1/resources/{RT}/a",
        f"/api/v1/resources/{RT}/a/history",
        "/api/v1/sync-issues",
    ):
        r = await client.get(path)
        assert r.status == 401, path
        r = await client.get(path, headers={"X-Ingest-Key": seeded.key})
        assert r.status == 401, path
        r = await client.get(path, headers={"Authorization": f"Bearer {seeded.key}"})
        assert r.status == 401, path


async def test_get_one(client: Client, seeded: Seeded, pipeline: InlinePipeline) -> None:
    doc = {"employeeId": "a/b c", "active": True, "employee": {"username": "ab", "email": "a@b"}}
    eid = await post(client, seeded, doc, group_key="acme")
    await pipeline.run()
    body = await get(client, f"/api/v1/resources/{RT}/a%2Fb%20c", groupKey="acme")
    assert body["id"] == "a/b c" and body["name"] == "ab" and body["data"] == doc
    assert body["importantFields"] == {
        "employeeId": "a/b c",
        "$.employee.email": "a@b",
        "active": True,
    }
    meta = body["_meta"]
    assert meta["groupKey"] == "acme" and meta["version"] == 1
    assert len(meta["contentHash"]) == 64 and meta["lastEventId"] == eid
    assert meta["createdAt"] == meta["updatedAt"]
    # absent: another group, the empty group, an unknown id
    for params in ({"groupKey": "other"}, {}):
        body = await get(client, f"/api/v1/resources/{RT}/a%2Fb%20c", 404, **params)
        assert body["code"] == "resource_not_found"
    body = await get(client, f"/api/v1/resources/{RT}/zzz", 404, groupKey="acme")
    assert body["code"] == "resource_not_found"


async def test_history_of_a_resource_that_never_existed_is_404_like_its_get(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    body = await get(client, f"/api/v1/resources/{RT}/zzz/history", 404)
    assert body["code"] == "resource_not_found"
    await post(client, seeded, {"employeeId": "zzz"})
    await pipeline.run()
    r = await client.delete(
        "/integration/custom-data/employee", params={"resourceIds": "zzz"}, headers=seeded.headers
    )
    assert r.status == 202
    await pipeline.run()
    await get(client, f"/api/v1/resources/{RT}/zzz", 404)  # deleted, so not current ...
    items = (await get(client, f"/api/v1/resources/{RT}/zzz/history"))["items"]
    assert [i["op"] for i in items] == ["created", "deleted"]  # ... but its history stays


async def test_list_across_every_group_key(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    for g, rid in (("b", "1"), ("a", "2"), ("", "3"), ("a", "1")):
        await post(client, seeded, {"employeeId": rid}, group_key=g)
    await pipeline.run()
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"allGroups": "true", "limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = await get(client, f"/api/v1/resources/{RT}", **params)
        seen += [(it["_meta"]["groupKey"], it["id"]) for it in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [("", "3"), ("a", "1"), ("a", "2"), ("b", "1")]
    body = await get(client, f"/api/v1/resources/{RT}", 400, allGroups="true", groupKey="a")
    assert body["pointer"] == "/query/groupKey"


async def test_cursors_are_bound_to_their_query(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    for rid in ("a", "b", "c"):
        await post(client, seeded, {"employeeId": rid}, group_key="g")
    await pipeline.run()
    nxt = (await get(client, f"/api/v1/resources/{RT}", groupKey="g", limit=1))["next"]
    assert (await get(client, f"/api/v1/resources/{RT}", groupKey="g", cursor=nxt))["items"]
    for params in ({"groupKey": "h"}, {"allGroups": "true"}, {}):  # another query
        body = await get(client, f"/api/v1/resources/{RT}", 400, cursor=nxt, **params)
        assert body["code"] == "invalid_cursor"
    _, _, mac = nxt.partition(".")
    forged = base64.urlsafe_b64encode(b'["0"]').decode().rstrip("=") + "." + mac
    body = await get(client, f"/api/v1/resources/{RT}", 400, groupKey="g", cursor=forged)
    assert body["code"] == "invalid_cursor"


# ---- sync issues ------------------------------------------------------------------------


async def test_sync_issues_filters(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    other = await seed_directory(client, prefix="_assets", table="device")
    e1 = await post(client, seeded, {"employeeId": "a", "x": 1})
    e2 = await post(client, seeded, {"employeeId": ""})
    r = await client.post(
        "/integration/custom-data/event/device", json={"employeeId": 5}, headers=other.headers
    )
    assert r.status == 202
    e3 = (await r.json())["eventId"]
    await post(client, seeded, {"employeeId": "ok"})
    await pipeline.run()

    items = (await get(client, "/api/v1/sync-issues"))["items"]
    assert {i["eventId"] for i in items} == {e1, e2, e3}
    assert [i["id"] for i in items] == sorted((i["id"] for i in items), reverse=True)
    first = next(i for i in items if i["eventId"] == e1)
    assert first["code"] == "unknown_field" and first["pointer"] == "/x"
    assert first["resourceId"] == "a" and first["table"] == "employee"
    assert first["resourceType"] == RT and first["integration"] == seeded.integration_id

    by_table = (await get(client, "/api/v1/sync-issues", table="device"))["items"]
    assert {i["eventId"] for i in by_table} == {e3}
    by_int = await get(client, "/api/v1/sync-issues", integration=seeded.integration_id)
    assert {i["eventId"] for i in by_int["items"]} == {e1, e2}
    both = await get(
        client, "/api/v1/sync-issues", table="device", integration=seeded.integration_id
    )
    assert both["items"] == []

    limited = await get(client, "/api/v1/sync-issues", limit=1)
    assert len(limited["items"]) == 1 and limited["items"][0]["id"] == items[0]["id"]
    paged, cursor = [], None  # pages of one follow the same order to the end
    while True:
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = await get(client, "/api/v1/sync-issues", **params)
        paged += page["items"]
        cursor = page["next"]
        if cursor is None:
            break
    assert paged == items
    body = await get(client, "/api/v1/sync-issues", 400, table="device", cursor=limited["next"])
    assert body["code"] == "invalid_cursor"  # a cursor of another query

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await get(client, "/api/v1/sync-issues", since=future))["items"] == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert len((await get(client, "/api/v1/sync-issues", since=past))["items"]) == len(items)
    zulu = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len((await get(client, "/api/v1/sync-issues", since=zulu))["items"]) == len(items)


@pytest.mark.parametrize(
    ("params", "pointer"),
    [
        ({"since": "yesterday"}, "/query/since"),
        ({"integration": "not-a-uuid"}, "/query/integration"),
        ({"limit": "0"}, "/query/limit"),
        ({"limit": "5000"}, "/query/limit"),
    ],
)
async def test_sync_issues_bad_parameters_are_400(
    client: Client, seeded: Seeded, params: dict[str, str], pointer: str
) -> None:
    body = await get(client, "/api/v1/sync-issues", 400, **params)
    assert body["code"] == "invalid_parameter" and body["pointer"] == pointer
