"""POST …/batch-event/{table}: independent upserts in array order, one receipt with every
item's outcome; not a snapshot (nothing is deleted); limits; XML."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.batch import MAX_ITEMS_LISTED
from shared.config import Settings
from tests.conftest import ADMIN, InlinePipeline, Seeded
from tests.helpers import INGEST, emp, key_headers, post_bulk, wait_receipt
from tests.integration.test_idempotency import raw_events
from tests.xmlread import answer

Client = TestClient[Any, Any]
BATCH = f"{INGEST}/batch-event/employee"
RT = "_directory_employee"


async def send(client: Client, who: Seeded, items: Any, query: str = "") -> str:
    data = items if isinstance(items, bytes) else orjson.dumps(items)
    r = await client.post(f"{BATCH}?{query}", data=data, headers=key_headers(who))
    assert r.status == 202, await r.text()
    return str((await r.json())["eventId"])


async def applied(client: Client, who: Seeded, pipeline: InlinePipeline, eid: str) -> Any:
    await pipeline.run()
    return await wait_receipt(client, who, eid)


async def history(pool: asyncpg.Pool, rid: str, group_key: str = "") -> list[tuple[int, str]]:
    rows = await pool.fetch(
        "SELECT version, op, event_id FROM resource_changes WHERE resource_type = $1"
        " AND group_key = $2 AND resource_id = $3 ORDER BY version",
        RT, group_key, rid,
    )  # fmt: skip
    return [(r["version"], r["op"]) for r in rows]


async def test_items_apply_in_order_the_same_id_twice_makes_two_versions(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    eid = await send(
        client, seeded,
        [emp("a", active=True), emp("b"), emp("a", active=False), emp("b")],
        "groupKey=acme&event=sync",
    )  # fmt: skip
    rc = await applied(client, seeded, pipeline, eid)
    assert rc["status"] == "applied" and rc["kind"] == "batch"
    assert (rc["created"], rc["updated"], rc["unchanged"], rc["rejected"]) == (2, 1, 1, 0)
    assert rc["items"] == [
        {"index": 0, "id": "a", "outcome": "created"},
        {"index": 1, "id": "b", "outcome": "created"},
        {"index": 2, "id": "a", "outcome": "updated"},
        {"index": 3, "id": "b", "outcome": "unchanged"},
    ]
    assert rc["itemsTotal"] == 4
    assert await history(pool, "a", "acme") == [(1, "created"), (2, "updated")]
    r = await client.get(f"/api/v1/resources/{RT}/a?groupKey=acme", headers=ADMIN)
    res = await r.json()
    assert res["data"]["active"] is False and res["_meta"]["version"] == 2  # the last wins
    events = await pool.fetch("SELECT DISTINCT event_id, event FROM resource_changes")
    assert [(x["event_id"], x["event"]) for x in events] == [(eid, "sync")]


async def test_a_rejected_item_never_rejects_the_others(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    eid = await send(
        client, seeded,
        b'[{"employeeId": "ok1"}, {"active": true}, {"employeeId": "bad", "active": "no"},'
        b' {"employeeId": "big", "n": 99999999999999999999}, "text", {"employeeId": "ok2"}]',
    )  # fmt: skip
    rc = await applied(client, seeded, pipeline, eid)
    assert rc["status"] == "applied"
    assert (rc["created"], rc["rejected"]) == (2, 4)
    outcomes = [(i["index"], i["id"], i["outcome"]) for i in rc["items"]]
    assert outcomes == [
        (0, "ok1", "created"),
        (1, None, "rejected"),
        (2, "bad", "rejected"),
        (3, None, "rejected"),
        (4, None, "rejected"),
        (5, "ok2", "created"),
    ]
    codes = {i["index"]: [x["code"] for x in i.get("issues", [])] for i in rc["items"]}
    assert codes[1][0] == "missing_id" and codes[2] == ["schema_violation"]
    assert codes[3] == ["number_out_of_range"] and codes[4] == ["not_an_object"]
    assert {i["index"] for i in rc["issues"]} == {1, 2, 3, 4}
    issues = await pool.fetch("SELECT item_index, resource_id, code FROM sync_issues")
    assert {(x["item_index"], x["resource_id"], x["code"]) for x in issues} >= {
        (2, "bad", "schema_violation")
    }
    assert await pool.fetchval("SELECT count(*) FROM resources") == 2


async def test_every_item_rejected_rejects_the_batch(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    rc = await applied(client, seeded, pipeline, await send(client, seeded, [{"x": 1}]))
    assert rc["status"] == "rejected" and rc["rejected"] == 1
    rc = await applied(client, seeded, pipeline, await send(client, seeded, []))
    assert rc["status"] == "applied" and rc["items"] == [] and rc["itemsTotal"] == 0


async def test_a_batch_is_no_snapshot_it_deletes_nothing(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await post_bulk(client, seeded, [emp("s1"), emp("s2")])
    eid = await send(client, seeded, [emp("s3")])
    rc = await applied(client, seeded, pipeline, eid)
    assert (rc["created"], rc["deleted"]) == (1, 0)
    r = await client.get(f"/api/v1/resources/{RT}", headers=ADMIN)
    assert [x["id"] for x in (await r.json())["items"]] == ["s1", "s2", "s3"]
    # and a later snapshot is not superseded by the batch: it still applies
    body = await post_bulk(client, seeded, [emp("s1")])
    rc = await applied(client, seeded, pipeline, body["eventId"])
    assert (rc["status"], rc["deleted"]) == ("applied", 2)


async def test_the_receipt_lists_the_first_items_and_counts_them_all(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    n = MAX_ITEMS_LISTED + 5
    eid = await send(client, seeded, [emp(f"m{i}") for i in range(n)])
    rc = await applied(client, seeded, pipeline, eid)
    assert rc["created"] == n and rc["itemsTotal"] == n
    assert len(rc["items"]) == MAX_ITEMS_LISTED and rc["items"][-1]["index"] == n - 6


async def test_limits(client: Client, seeded: Seeded, redis: Redis, settings: Settings) -> None:
    r = await client.post(BATCH, data=orjson.dumps([{}] * 10_001), headers=key_headers(seeded))
    body = await r.json()
    assert r.status == 400 and body["code"] == "too_many_items", body
    r = await client.post(BATCH, data=orjson.dumps([{}] * 10_000), headers=key_headers(seeded))
    assert r.status == 202
    big = b"[" + b'"' + b"x" * (4 << 20) + b'"]'
    r = await client.post(BATCH, data=big, headers=key_headers(seeded))
    assert r.status == 413 and (await r.json())["code"] == "body_too_large"
    for bad, code in ((b'{"employeeId": "a"}', "body_not_array"), (b"[1,", "invalid_json")):
        r = await client.post(BATCH, data=bad, headers=key_headers(seeded))
        assert r.status == 400 and (await r.json())["code"] == code
    assert await raw_events(redis, settings) == 1


async def test_xml_batch_and_xml_receipt(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    xml = (
        b"<employees><employee><employeeId>x1</employeeId><active>true</active></employee>"
        b"<employee><employeeId>x1</employeeId><active>false</active></employee></employees>"
    )
    h = {**key_headers(seeded), "Content-Type": "application/xml", "Accept": "application/xml"}
    r = await client.post(BATCH, data=xml, headers=h)
    assert r.status == 202 and r.content_type == "application/xml"
    eid = answer(await r.read(), {"eventId": ""}, root="response")["eventId"]
    await pipeline.run()
    rc = await wait_receipt(client, seeded, eid)
    assert [i["outcome"] for i in rc["items"]] == ["created", "updated"]
    r = await client.get(f"{INGEST}/events/{eid}", headers=h)
    assert r.content_type == "application/xml"
    assert answer(await r.read(), rc, root="receipt") == rc  # the JSON receipt, read back
