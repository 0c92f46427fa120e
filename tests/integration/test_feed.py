"""The change feed API against real PostgreSQL and Redis: paging, filters, access, bad
parameters, the xmin guard, long polls and XML (the concurrency proof with projector
processes is in test_feed_concurrency.py)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from shared import feed
from shared.config import Settings
from shared.pg.feed import FeedStore
from shared.pg.migrate import RECORD_SQL, migrate, migration_files
from tests import xmlread
from tests.conftest import ADMIN, EMPLOYEE_SCHEMA, InlinePipeline, Seeded, seed_directory
from tests.helpers import delete, emp, follow_feed, poll, post

RT = "_directory_employee"
CHANGES = "/api/v1/changes"
ITEM_KEYS = {
    "cursor", "resourceType", "groupKey", "id", "version", "op", "event", "actor", "patch",
    "after", "eventId", "appliedAt",
}  # fmt: skip


async def history_of(c: Any, seeded: Seeded, pipeline: InlinePipeline) -> None:
    """a: created, updated, deleted; b: created (groupKey x); c: created."""
    await post(c, seeded, emp("a", active=True), event="hired", actor='"hr"')
    await post(c, seeded, emp("b", active=True), group_key="x")
    await post(c, seeded, emp("a", active=False), event="left")
    await post(c, seeded, emp("c"))
    await delete(c, seeded, "a")
    await pipeline.run()


async def test_pages_list_every_change_once_in_order(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await history_of(client, seeded, pipeline)
    items, _ = await follow_feed(client, ADMIN, 5, limit=2)
    assert [(i["id"], i["version"], i["op"]) for i in items if i["id"] == "a"] == [
        ("a", 1, "created"),
        ("a", 2, "updated"),
        ("a", 3, "deleted"),
    ]
    assert sorted((i["groupKey"], i["id"]) for i in items) == [
        ("", "a"), ("", "a"), ("", "a"), ("", "c"), ("x", "b"),
    ]  # fmt: skip
    assert all(set(i) == ITEM_KEYS for i in items)
    first = items[0]
    assert (first["resourceType"], first["event"], first["actor"]) == (RT, "hired", "hr")
    assert first["after"] == emp("a", active=True)
    assert first["patch"][0]["op"] == "add"
    gone = [i for i in items if i["id"] == "a"][-1]
    assert gone["after"] is None and gone["op"] == "deleted"
    positions = [feed.decode(i["cursor"]) for i in items]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    # a cursor in the middle reads on after it
    rest, _ = await follow_feed(client, ADMIN, 3, after=items[1]["cursor"])
    assert rest == items[2:]


async def test_filters_by_type_and_group_key_combined(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline
) -> None:
    r = await client.post(
        f"/admin/v1/schema-groups/{seeded.group_id}/schemas",
        json={"table": "team", "schema": EMPLOYEE_SCHEMA},
        headers=ADMIN,
    )
    assert r.status == 201, await r.text()

    async def accepted() -> bool:  # once the gateway's registry (polled) knows the table
        r = await client.post(
            "/integration/custom-data/event/team?groupKey=x", json=emp("t1"), headers=seeded.headers
        )
        return r.status == 202

    await poll("the table team to be known", accepted, 10, every=0.05)
    await history_of(client, seeded, pipeline)
    by_type, _ = await follow_feed(client, ADMIN, 1, resourceType="_directory_team")
    assert [i["id"] for i in by_type] == ["t1"]
    by_group, _ = await follow_feed(client, ADMIN, 2, groupKey="x")
    assert sorted(i["id"] for i in by_group) == ["b", "t1"]
    both, _ = await follow_feed(client, ADMIN, 1, groupKey="x", resourceType=RT)
    assert [i["id"] for i in both] == ["b"]
    empty_group, _ = await follow_feed(client, ADMIN, 4, groupKey="", resourceType=RT)
    assert sorted({i["id"] for i in empty_group}) == ["a", "c"]
    await follow_feed(client, ADMIN, 6)  # everything


async def test_a_filtered_reader_moves_past_rows_it_does_not_want(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await history_of(client, seeded, pipeline)
    _, end = await follow_feed(client, ADMIN, 5)
    r = await client.get(CHANGES, params={"groupKey": "nobody"}, headers=ADMIN)
    body = await r.json()
    assert body["items"] == [] and feed.decode(body["next"]) >= feed.decode(end)


async def test_ingest_keys_read_their_own_group_only(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline
) -> None:
    other = await seed_directory(client, prefix="_other")
    await post(client, other, emp("o1"))
    await history_of(client, seeded, pipeline)
    mine, _ = await follow_feed(client, {"X-Ingest-Key": seeded.key}, 5)
    assert {i["resourceType"] for i in mine} == {RT}
    bearer, _ = await follow_feed(client, {"Authorization": f"Bearer {other.key}"}, 1)
    assert [(i["resourceType"], i["id"]) for i in bearer] == [("_other_employee", "o1")]
    r = await client.get(CHANGES, params={"resourceType": RT}, headers={"X-Ingest-Key": other.key})
    assert r.status == 404 and (await r.json())["code"] == "resource_type_not_found"
    r = await client.get(CHANGES)
    assert r.status == 401 and (await r.json())["code"] == "missing_ingest_key"
    r = await client.get(CHANGES, headers={"Authorization": "Bearer nope"})
    assert r.status == 401 and (await r.json())["code"] == "invalid_ingest_key"


@pytest.mark.parametrize(
    ("query", "code", "pointer"),
    [
        ({"after": "bogus"}, "invalid_cursor", "/query/after"),
        ({"after": feed.encode((1, 2))[:-2]}, "invalid_cursor", "/query/after"),
        ({"after": "AgAAAAAAAAABAAAAAAAAAAI"}, "invalid_cursor", "/query/after"),  # version 2
        ({"limit": "0"}, "invalid_parameter", "/query/limit"),
        ({"limit": "1001"}, "invalid_parameter", "/query/limit"),
        ({"limit": "ten"}, "invalid_parameter", "/query/limit"),
        ({"wait": "31"}, "invalid_parameter", "/query/wait"),
        ({"wait": "-1"}, "invalid_parameter", "/query/wait"),
        ({"wait": "nan"}, "invalid_parameter", "/query/wait"),
        ({"wait": "soon"}, "invalid_parameter", "/query/wait"),
        ({"groupKey": "a\x00b"}, "invalid_parameter", "/query/groupKey"),
    ],
)
async def test_bad_parameters_are_400(
    client: TestClient[Any, Any], query: dict[str, str], code: str, pointer: str
) -> None:
    r = await client.get(CHANGES, params=query, headers=ADMIN)
    body = await r.json()
    assert (r.status, body["code"], body["pointer"]) == (400, code, pointer), body


async def test_an_open_writing_transaction_holds_the_feed_back(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post(client, seeded, emp("before"))
    await pipeline.run()
    _, start = await follow_feed(client, ADMIN, 1)
    async with pool.acquire() as conn, conn.transaction():
        await conn.fetchval("SELECT pg_current_xact_id()")  # holds an xid, as a writer does
        await post(client, seeded, emp("after"))
        await pipeline.run()  # committed, but after the open transaction began
        committed = await pool.fetchval("SELECT count(*) FROM resource_changes")
        assert committed == 2
        held, _ = await follow_feed(client, ADMIN, 0, after=start)
        assert held == []
    items, _ = await follow_feed(client, ADMIN, 1, after=start)
    assert [i["id"] for i in items] == ["after"]


async def test_a_long_poll_wakes_within_a_second_of_the_commit(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await post(client, seeded, emp("a"))
    await pipeline.run()
    _, start = await follow_feed(client, ADMIN, 1)

    async def poll_feed() -> tuple[float, dict[str, Any]]:
        r = await client.get(CHANGES, params={"after": start, "wait": "20"}, headers=ADMIN)
        assert r.status == 200
        return time.monotonic(), await r.json()

    waiting = asyncio.create_task(poll_feed())
    await asyncio.sleep(0.3)
    assert not waiting.done()  # nothing after the cursor: it waits
    await post(client, seeded, emp("b"))
    await pipeline.run()  # the barrier: the projector's commit has happened when it returns
    committed = time.monotonic()
    answered, body = await waiting
    assert [i["id"] for i in body["items"]] == ["b"]
    assert answered - committed < 1.0, answered - committed


async def test_a_long_poll_with_nothing_new_answers_empty_after_wait(
    client: TestClient[Any, Any], seeded: Seeded
) -> None:
    started = time.monotonic()
    r = await client.get(CHANGES, params={"wait": "1"}, headers=ADMIN)
    body = await r.json()
    assert r.status == 200 and body["items"] == [] and body["next"]
    assert 0.9 <= time.monotonic() - started < 3


async def test_xml_answer(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await history_of(client, seeded, pipeline)
    await follow_feed(client, ADMIN, 5)
    as_json = await (await client.get(CHANGES, headers=ADMIN)).json()
    r = await client.get(CHANGES, headers={**ADMIN, "Accept": "application/xml"})
    assert r.status == 200 and r.content_type == "application/xml"
    root = xmlread.parse(await r.read())
    assert root.tag == "changes"
    assert xmlread.read(root, as_json) == as_json


async def test_cursors_survive_a_restart_and_a_new_admin_token(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline, settings: Settings
) -> None:
    await history_of(client, seeded, pipeline)
    items, _ = await follow_feed(client, ADMIN, 5)
    other = replace(settings, admin_token="another-token")
    async with TestClient(TestServer(create_app(other))) as c2:
        token = {"Authorization": "Bearer another-token"}
        rest, _ = await follow_feed(c2, token, 4, after=items[0]["cursor"])
    assert rest == items[1:]


async def test_history_from_before_migration_0009_is_read_first_in_id_order(
    scratch_dsn: str,
) -> None:
    conn = await asyncpg.connect(scratch_dsn)
    try:
        for number, name, sql in migration_files():
            if number < 9:
                await conn.execute(sql)
                await conn.execute(RECORD_SQL, number, name)
        for rid in ("old2", "old1"):
            await conn.execute(
                "INSERT INTO resource_changes (resource_type, resource_id, version, op, patch,"
                " event_id, received_at) VALUES ('_t_x', $1, 1, 'created', '[]', 'ev', now())",
                rid,
            )
        assert (await migrate(scratch_dsn))[0] == "0009_change_feed.sql"  # later ones follow
        await conn.execute(
            "INSERT INTO resource_changes (resource_type, resource_id, version, op, patch,"
            " event_id, received_at) VALUES ('_t_x', 'new', 1, 'created', '[]', 'ev', now())"
        )
        store = FeedStore(conn)

        async def all_three() -> Any:  # the new row shows once older transactions ended
            items, _ = await store.read(None, 10)
            return items if len(items) == 3 else None

        items = await poll("the three rows in the feed", all_three, 20, every=0.05)
        assert [(c.resource_id, c.position[0]) for c in items][:2] == [("old2", 0), ("old1", 0)]
        assert [c.resource_id for c in items] == ["old2", "old1", "new"]
        assert items[2].position[0] > 0
    finally:
        await conn.close()
