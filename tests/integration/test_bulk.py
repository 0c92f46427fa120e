"""Bulk snapshots end to end in one process: gateway → worker diff → projector → receipts."""

from __future__ import annotations

import random
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.worker.drain import Drainer
from shared.config import Settings
from shared.redis import keyspace as ks
from shared.redis import writemodel
from shared.schema_rules import content_hash
from tests.conftest import InlinePipeline, Seeded, seed_directory
from tests.helpers import emp, post_bulk, receipt, wait_key_known

BULK = "/integration/custom-data/bulk-event/employee"
EVENT = "/integration/custom-data/event/employee"
MiB = 1 << 20
Client = TestClient[Any, Any]


async def scope(pool: asyncpg.Pool, group_key: str = "") -> dict[str, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT * FROM resources WHERE resource_type = '_directory_employee' AND group_key = $1",
        group_key,
    )
    return {r["resource_id"]: r for r in rows}


async def history(pool: asyncpg.Pool, eid: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT * FROM resource_changes WHERE event_id = $1 ORDER BY resource_id", eid
        )
    )


# ---- the seed's example and scope isolation -----------------------------------------------


async def test_seed_example_abc_then_abd(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    q = "groupKey=acme&event=nightly&actor=%7B%22name%22%3A%22hr-sync%22%7D"
    first = await post_bulk(client, seeded, [emp("a"), emp("b"), emp("c")], q)
    await pipeline.run()
    r1 = await receipt(client, seeded, first["eventId"])
    assert (r1["status"], r1["kind"], r1["created"], r1["deleted"]) == ("applied", "bulk", 3, 0)

    second = await post_bulk(
        client, seeded, [emp("a"), emp("b", active=True), emp("d")], q.replace("nightly", "n2")
    )
    await pipeline.run()
    r2 = await receipt(client, seeded, second["eventId"])
    assert r2["status"] == "applied"
    assert (r2["created"], r2["updated"], r2["deleted"], r2["unchanged"]) == (1, 1, 1, 1)
    state = await scope(pool, "acme")
    assert sorted(state) == ["a", "b", "d"]
    assert state["b"]["data"] == emp("b", active=True) and state["b"]["version"] == 2
    assert state["a"]["version"] == 1  # unchanged: no version bump, no history row

    rows = await history(pool, second["eventId"])
    assert [(h["resource_id"], h["op"], h["version"]) for h in rows] == [
        ("b", "updated", 2),
        ("c", "deleted", 2),
        ("d", "created", 1),
    ]
    for h in rows:  # the bulk's event, actor and eventId on every history row
        assert h["event"] == "n2" and h["actor"] == {"name": "hr-sync"}
    events = await pool.fetch("SELECT * FROM ingest_events WHERE event_id = $1", second["eventId"])
    assert len(events) == 1


async def test_other_group_keys_are_untouched(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post_bulk(client, seeded, [emp("a"), emp("x")], "groupKey=one")
    await post_bulk(client, seeded, [emp("a"), emp("y")], "groupKey=two")
    await client.post(f"{EVENT}?groupKey=", json=emp("z"), headers=seeded.headers)
    await pipeline.run()
    r = await post_bulk(client, seeded, [], "groupKey=one")  # the empty set: delete all of "one"
    await pipeline.run()
    assert (await receipt(client, seeded, r["eventId"]))["deleted"] == 2
    assert await scope(pool, "one") == {}
    assert sorted(await scope(pool, "two")) == ["a", "y"]
    assert sorted(await scope(pool, "")) == ["z"]


async def test_singles_and_bulks_in_one_batch_keep_stream_order(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await client.post(EVENT, json=emp("s1"), headers=seeded.headers)
    await post_bulk(client, seeded, [emp("b1")])
    await client.post(EVENT, json=emp("s2"), headers=seeded.headers)
    await pipeline.run()
    # the single before the snapshot was deleted by it; the one after survives
    assert sorted(await scope(pool)) == ["b1", "s2"]


# ---- all or nothing -------------------------------------------------------------------------


async def _seed_abc(client: Client, seeded: Seeded, pipeline: InlinePipeline) -> None:
    await post_bulk(client, seeded, [emp("a"), emp("b"), emp("c")])
    await pipeline.run()


async def test_invalid_item_rejects_the_whole_snapshot(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await _seed_abc(client, seeded, pipeline)
    before = {k: (v["version"], v["content_hash"]) for k, v in (await scope(pool)).items()}
    items = [emp("a", active=True), {"employee": {"age": 3}}, emp("e", employee={"age": "x"})]
    r = await post_bulk(client, seeded, items)
    await pipeline.run()
    rc = await receipt(client, seeded, r["eventId"])
    assert rc["status"] == "rejected"
    assert (rc["created"], rc["updated"], rc["deleted"], rc["rejected"]) == (0, 0, 0, 2)
    by_index: dict[int, dict[str, Any]] = {}
    for i in rc["issues"]:
        by_index.setdefault(i["index"], i)
    assert by_index[1]["code"] == "missing_id" and "resourceId" not in by_index[1]
    assert by_index[2]["resourceId"] == "e" and by_index[2]["pointer"] == "/employee/age"
    after = {k: (v["version"], v["content_hash"]) for k, v in (await scope(pool)).items()}
    assert after == before
    assert await history(pool, r["eventId"]) == []
    issues = await pool.fetch("SELECT * FROM sync_issues WHERE event_id = $1", r["eventId"])
    assert {i["item_index"] for i in issues} == {1, 2}


async def test_duplicate_ids_reject_the_whole_snapshot(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool, redis: Redis
) -> None:
    await _seed_abc(client, seeded, pipeline)
    r = await post_bulk(client, seeded, [emp("a"), emp("d"), emp("a", active=False)])
    await pipeline.run()
    rc = await receipt(client, seeded, r["eventId"])
    assert rc["status"] == "rejected" and rc["rejected"] == 2
    assert rc["issues"][0]["code"] == "duplicate_id" and rc["issues"][0]["index"] == 2
    assert rc["issues"][0]["resourceId"] == "a" and rc["issues"][0]["pointer"] == "/employeeId"
    assert sorted(await scope(pool)) == ["a", "b", "c"]
    # the write model is untouched too: the same set again is all unchanged
    again = await post_bulk(client, seeded, [emp("a"), emp("b"), emp("c")])
    await pipeline.run()
    assert (await receipt(client, seeded, again["eventId"]))["unchanged"] == 3
    assert [k async for k in redis.scan_iter(match="*:bulk:*")] == []  # scratch keys gone


async def test_issue_list_is_capped_with_a_total(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    r = await post_bulk(client, seeded, [{"nope": i} for i in range(1500)])
    await pipeline.run()
    rc = await receipt(client, seeded, r["eventId"])
    assert rc["status"] == "rejected" and rc["rejected"] == 1500
    assert len(rc["issues"]) == 1000 and rc["issuesTotal"] >= 3000  # missing id + unknown field


# ---- partial=true ---------------------------------------------------------------------------


async def test_partial_applies_valid_items_and_protects_invalid_ids(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await _seed_abc(client, seeded, pipeline)
    items = [emp("a", active=True), emp("b", active="not a bool"), emp("d")]
    r = await post_bulk(client, seeded, items, "partial=true")
    await pipeline.run()
    rc = await receipt(client, seeded, r["eventId"])
    assert rc["status"] == "applied"
    assert (rc["created"], rc["updated"], rc["deleted"], rc["rejected"]) == (1, 1, 1, 1)
    state = await scope(pool)
    assert sorted(state) == ["a", "b", "d"]  # b is invalid here: kept as it was; c deleted
    assert state["b"]["data"] == emp("b") and state["a"]["data"] == emp("a", active=True)


async def test_partial_without_extractable_id_deletes_nothing(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await _seed_abc(client, seeded, pipeline)
    r = await post_bulk(client, seeded, [emp("a", active=True), {"active": True}], "partial=1")
    await pipeline.run()
    rc = await receipt(client, seeded, r["eventId"])
    assert (rc["status"], rc["updated"], rc["deleted"], rc["rejected"]) == ("applied", 1, 0, 1)
    codes = [i["code"] for i in rc["issues"]]
    assert codes[0] == "missing_id" and codes[-1] == "deletions_skipped"
    assert rc["issuesTotal"] == len(codes)
    assert sorted(await scope(pool)) == ["a", "b", "c"]


async def test_partial_duplicates_are_not_applied_nor_deleted(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await _seed_abc(client, seeded, pipeline)
    items = [emp("a", active=True), emp("b"), emp("a", active=False), emp("a")]
    r = await post_bulk(client, seeded, items, "partial=true")
    await pipeline.run()
    rc = await receipt(client, seeded, r["eventId"])
    assert (rc["unchanged"], rc["updated"], rc["deleted"], rc["rejected"]) == (1, 0, 1, 3)
    state = await scope(pool)
    assert sorted(state) == ["a", "b"] and state["a"]["data"] == emp("a")


# ---- limits and refusals ----------------------------------------------------------------


async def test_body_not_an_array_is_400(client: Client, seeded: Seeded, redis: Redis) -> None:
    for body in ({"employeeId": "a"}, "a", 3):
        out = await post_bulk(client, seeded, body, status=400)
        assert out["code"] == "body_not_array"
    for bad in (b"[{", b"", b"[1,]", b'["\\x"]', b'["\xff"]', b"[NaN]", b"[1] [2]"):
        out = await post_bulk(client, seeded, bad, status=400)
        assert out["code"] == "invalid_json", bad
        assert "not valid JSON" in out["message"]
    assert await redis.xlen(ks.ingest_stream(0)) == 0


async def test_json_that_simdjson_refuses_but_orjson_reads_is_accepted(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    """The gateway checks bulk bodies with simdjson; what it refuses is judged by orjson,
    the parser the worker uses, so the two never disagree against the client. (An
    integer beyond 64 bits is such JSON: accepted, then the worker rejects the item
    rather than store the float orjson rounds it to.)"""
    big = b'[{"employeeId": "a", "employee": {"age": 123456789012345678901234567890}}]'
    r = await post_bulk(client, seeded, big)
    await pipeline.run()
    got = await receipt(client, seeded, r["eventId"])
    assert (got["status"], got["rejected"]) == ("rejected", 1)
    assert [(i["code"], i["pointer"]) for i in got["issues"]] == [
        ("number_out_of_range", "/employee/age")
    ]
    assert set(await scope(pool)) == set()


async def test_a_part_the_worker_cannot_parse_is_rejected_not_retried(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, redis: Redis, settings: Settings
) -> None:
    """Should the gateway's check ever pass a body orjson refuses, the snapshot is
    rejected (invalid_json) instead of wedging its partition."""
    r = await post_bulk(client, seeded, [emp("a")], "session=s1&part=1&final=true")
    p = ks.partition_of("_directory_employee", "", settings.partitions)
    skey = ks.session_key(p, "_directory_employee", "", "s1")
    await redis.hset(skey, "p:1", b"[{]")
    await pipeline.run()
    got = await receipt(client, seeded, r["eventId"])
    assert got["status"] == "rejected" and got["issues"][0]["code"] == "invalid_json"


async def test_body_over_4_mib_is_413(client: Client, seeded: Seeded) -> None:
    big = orjson.dumps([emp(f"{i:08d}", employee={"email": "x" * 200}) for i in range(20_000)])
    assert len(big) > 4 * MiB
    out = await post_bulk(client, seeded, big, status=413)
    assert out["code"] == "body_too_large"


async def test_body_of_exactly_4_mib_is_accepted(client: Client, seeded: Seeded) -> None:
    body = b"[" + b" " * (4 * MiB - 2) + b"]"
    await post_bulk(client, seeded, body)


async def test_chunked_body_over_4_mib_is_refused_while_streaming(
    client: Client, seeded: Seeded
) -> None:
    sent = 0

    async def gen() -> Any:
        nonlocal sent
        yield b"["
        for _ in range(64):
            sent += 128 << 10
            yield b" " * (128 << 10)
        yield b"]"

    r = await client.post(BULK, data=gen(), headers=seeded.headers)
    assert r.status == 413
    assert (await r.json())["code"] == "body_too_large"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("session=s1", "invalid_parameter"),
        ("session=s1&part=0", "invalid_parameter"),
        ("session=s1&part=x", "invalid_parameter"),
        ("part=1", "invalid_parameter"),
        ("final=true", "invalid_parameter"),
        ("session=%2Fbad&part=1", "invalid_parameter"),
        ("partial=maybe", "invalid_parameter"),
    ],
)
async def test_bad_upload_parameters_are_400(
    client: Client, seeded: Seeded, query: str, code: str
) -> None:
    out = await post_bulk(client, seeded, [emp("a")], query, status=400)
    assert out["code"] == code and out["pointer"].startswith("/query/")


async def test_bearer_key_works_for_bulk(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    r = await client.post(
        BULK,
        json=[emp("a")],
        headers={"Authorization": f"Bearer {seeded.key}"},
    )
    assert r.status == 202
    await pipeline.run()
    rc = await client.get(
        f"/integration/custom-data/events/{(await r.json())['eventId']}",
        headers={"Authorization": f"Bearer {seeded.key}"},
    )
    assert (await rc.json())["created"] == 1


async def test_another_groups_table_is_404(client: Client, seeded: Seeded) -> None:
    other = await seed_directory(client, "_other", "device")
    r = await client.post(
        "/integration/custom-data/bulk-event/device", json=[], headers=seeded.headers
    )
    assert r.status == 404
    r = await client.post(
        "/integration/custom-data/bulk-event/device", json=[], headers=other.headers
    )
    assert r.status == 202


# ---- sessions -------------------------------------------------------------------------------


def part_query(session: str, part: int, final: bool = False, extra: str = "") -> str:
    q = f"session={session}&part={part}"
    return q + ("&final=true" if final else "") + (f"&{extra}" if extra else "")


async def test_session_out_of_order_with_duplicates_applies_once(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await _seed_abc(client, seeded, pipeline)
    p1, p2, p3 = [emp("a")], [emp("d"), emp("e")], [emp("f")]
    r3 = await post_bulk(client, seeded, p3, part_query("up1", 3, True, "event=sync"))
    assert r3["complete"] is False and r3["parts"] == 3 and r3["partsReceived"] == 1
    r1 = await post_bulk(client, seeded, p1, part_query("up1", 1))
    again = await post_bulk(client, seeded, p1, part_query("up1", 1))
    assert again["duplicate"] is True and again["partsReceived"] == 2
    assert r1["eventId"] == r3["eventId"] == again["eventId"]
    await pipeline.run()
    assert sorted(await scope(pool)) == ["a", "b", "c"]  # incomplete: nothing yet
    pending = await receipt(client, seeded, r3["eventId"])
    assert pending["status"] == "pending" and pending["session"]["partsReceived"] == 2
    r2 = await post_bulk(client, seeded, p2, part_query("up1", 2))
    assert r2["complete"] is True
    await pipeline.run()
    assert sorted(await scope(pool)) == ["a", "d", "e", "f"]
    rc = await receipt(client, seeded, r3["eventId"])
    assert (rc["created"], rc["deleted"], rc["unchanged"]) == (3, 2, 1)
    # a retry of any part after the commit is answered with the same event, changes nothing
    late = await post_bulk(client, seeded, p2, part_query("up1", 2))
    assert late["duplicate"] is True and late["eventId"] == r3["eventId"]
    conflict = await post_bulk(client, seeded, [emp("zz")], part_query("up1", 4), status=409)
    assert conflict["code"] in ("session_closed", "part_after_final")
    await pipeline.run()
    assert len(await pool.fetch("SELECT 1 FROM ingest_events WHERE kind = 'bulk'")) == 2
    rows = await history(pool, r3["eventId"])
    assert {h["event"] for h in rows} == {"sync"}


async def test_session_without_final_part_changes_nothing(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
) -> None:
    await _seed_abc(client, seeded, pipeline)
    r = await post_bulk(client, seeded, [emp("z")], part_query("never", 1))
    await post_bulk(client, seeded, [emp("y")], part_query("never", 2))
    await pipeline.run()
    assert sorted(await scope(pool)) == ["a", "b", "c"]
    assert await redis.xlen(ks.ingest_stream(0)) == 0
    keys = [k async for k in redis.scan_iter(match="*:session:*never")]
    assert len(keys) == 1 and 0 < await redis.ttl(keys[0]) <= settings.session_ttl
    assert (await receipt(client, seeded, r["eventId"]))["status"] == "pending"
    await redis.delete(keys[0])  # what expiry does
    rc = await receipt(client, seeded, r["eventId"])
    assert rc["status"] == "rejected" and rc["issues"][0]["code"] == "session_expired"


async def test_part_conflicts_are_409(client: Client, seeded: Seeded) -> None:
    await post_bulk(client, seeded, [emp("a")], part_query("c1", 1))
    out = await post_bulk(client, seeded, [emp("b")], part_query("c1", 1), status=409)
    assert out["code"] == "part_conflict"
    await post_bulk(client, seeded, [emp("c")], part_query("c1", 3))
    out = await post_bulk(client, seeded, [emp("d")], part_query("c1", 2, True), status=409)
    assert out["code"] == "final_conflict"
    await post_bulk(client, seeded, [emp("e")], part_query("c2", 2, True))
    out = await post_bulk(client, seeded, [emp("f")], part_query("c2", 3), status=409)
    assert out["code"] == "part_after_final"


async def test_abort_and_status_of_a_session(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    url = "/integration/custom-data/bulk-event/employee/sessions/ab1"
    await post_bulk(client, seeded, [emp("a")], part_query("ab1", 1))
    r = await client.get(url, headers=seeded.headers)
    st = await r.json()
    assert (st["state"], st["partsReceived"], st["parts"]) == ("open", 1, None)
    r = await client.delete(url, headers=seeded.headers)
    assert r.status == 204
    out = await post_bulk(client, seeded, [emp("b")], part_query("ab1", 2, True), status=409)
    assert out["code"] == "session_aborted"
    await pipeline.run()
    assert await scope(pool) == {}
    r = await client.get(url.replace("ab1", "nope"), headers=seeded.headers)
    assert r.status == 404


async def test_newer_snapshot_supersedes_an_older_open_session(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    old = await post_bulk(client, seeded, [emp("old1")], part_query("older", 1))
    new = await post_bulk(client, seeded, [emp("new1")], part_query("newer", 1, True))
    await pipeline.run()
    assert sorted(await scope(pool)) == ["new1"]
    out = await post_bulk(client, seeded, [emp("old2")], part_query("older", 2, True), status=409)
    assert out["code"] == "session_superseded"
    rc = await receipt(client, seeded, old["eventId"])
    assert rc["status"] == "rejected" and rc["issues"][0]["code"] == "session_superseded"
    assert (await receipt(client, seeded, new["eventId"]))["created"] == 1


async def test_older_session_completing_later_in_the_stream_is_rejected(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post_bulk(client, seeded, [emp("o1")], part_query("older", 1))
    await post_bulk(client, seeded, [emp("n1")], part_query("newer", 1, True))
    done = await post_bulk(client, seeded, [emp("o2")], part_query("older", 2, True))
    assert done["complete"] is True  # both complete before the worker runs
    await pipeline.run()
    assert sorted(await scope(pool)) == ["n1"]
    rc = await receipt(client, seeded, done["eventId"])
    assert rc["status"] == "rejected" and rc["issues"][0]["code"] == "snapshot_superseded"


async def test_session_of_another_integration_is_409(
    client: Client, seeded: Seeded, pool: asyncpg.Pool
) -> None:
    await post_bulk(client, seeded, [emp("a")], part_query("shared", 1))
    r = await client.post(
        "/admin/v1/integrations",
        json={"name": "other", "schemaGroup": seeded.group_id},
        headers={"Authorization": "Bearer test-admin-token"},
    )
    other = Seeded(seeded.group_id, "", (await r.json())["ingestKey"], "")
    await wait_key_known(client, other)  # the gateway's registry poll, not a fixed sleep
    out = await post_bulk(client, other, [emp("b")], part_query("shared", 2), status=409)
    assert out["code"] == "session_conflict"


# ---- XML ------------------------------------------------------------------------------------


XML_SET = b"""<?xml version="1.0" encoding="UTF-8"?>
<employees>
  <employee>
    <employeeId>a</employeeId>
    <active>true</active>
    <employee><username>ann</username><age>42</age><email>a@x.io</email></employee>
  </employee>
  <employee employeeId="b"><active>0</active></employee>
</employees>"""
JSON_SET = [
    {
        "employeeId": "a",
        "active": True,
        "employee": {"username": "ann", "age": 42, "email": "a@x.io"},
    },
    {"employeeId": "b", "active": False},
]


async def test_xml_bulk_equals_json_bulk(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post_bulk(client, seeded, XML_SET, "groupKey=x", **{"Content-Type": "application/xml"})
    await post_bulk(client, seeded, JSON_SET, "groupKey=j")
    await pipeline.run()
    x, j = await scope(pool, "x"), await scope(pool, "j")
    assert sorted(x) == ["a", "b"]
    for rid in x:
        assert x[rid]["data"] == j[rid]["data"]
        assert x[rid]["content_hash"] == j[rid]["content_hash"]
        assert x[rid]["name"] == j[rid]["name"]
    assert x["a"]["content_hash"] == content_hash(JSON_SET[0])
    # and the JSON set sent to the XML scope again is all unchanged
    r = await post_bulk(client, seeded, JSON_SET, "groupKey=x")
    await pipeline.run()
    assert (await receipt(client, seeded, r["eventId"]))["unchanged"] == 2


async def test_xml_single_event_equals_json(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    xml = (
        b"<employee><employeeId>a</employeeId><active>true</active>"
        b"<employee><username>ann</username><age>42</age><email>a@x.io</email></employee>"
        b"</employee>"
    )
    r = await client.post(
        f"{EVENT}?groupKey=x",
        data=xml,
        headers={**seeded.headers, "Content-Type": "application/xml"},
    )
    assert r.status == 202
    await client.post(f"{EVENT}?groupKey=j", json=JSON_SET[0], headers=seeded.headers)
    await pipeline.run()
    x, j = await scope(pool, "x"), await scope(pool, "j")
    assert x["a"]["content_hash"] == j["a"]["content_hash"] == content_hash(JSON_SET[0])


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<employees><employee><employeeId>&lol9;</employeeId></employee></employees>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<employees><employee><employeeId>&xxe;</employeeId></employee></employees>"""


@pytest.mark.parametrize("body", [BOMB, XXE], ids=["billion-laughs", "xxe"])
@pytest.mark.parametrize("url", [BULK, EVENT])
async def test_xml_bombs_and_xxe_are_400(
    client: Client, seeded: Seeded, redis: Redis, body: bytes, url: str
) -> None:
    r = await client.post(url, data=body, headers={**seeded.headers, "Content-Type": "text/xml"})
    out = await r.json()
    assert r.status == 400 and out["code"] == "xml_forbidden", out
    assert "passwd" not in out["message"] and "lol" not in out["message"]
    assert await redis.xlen(ks.ingest_stream(0)) == 0


async def test_accept_xml_gives_xml_responses(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    from shared import xmlcodec

    xml_headers = {**seeded.headers, "Accept": "application/xml"}
    r = await client.post(BULK, data=orjson.dumps([emp("a")]), headers=xml_headers)
    assert r.status == 202 and r.content_type == "application/xml"
    accepted = xmlcodec.resource_from_xml(await r.read(), {})
    await pipeline.run()
    r = await client.get(
        f"/integration/custom-data/events/{accepted['eventId']}", headers=xml_headers
    )
    assert r.content_type == "application/xml"
    body = xmlcodec.resource_from_xml(await r.read(), {})
    assert body["status"] == "applied" and body["created"] == "1"
    r = await client.post(BULK, data=b"{}", headers=xml_headers)
    assert r.status == 400 and r.content_type == "application/xml"
    err = xmlcodec.resource_from_xml(await r.read(), {})
    assert err["code"] == "body_not_array"
    r = await client.post(BULK, data=b"[]", headers={**seeded.headers, "Accept": "*/*"})
    assert r.content_type == "application/json"


# ---- the streamed diff equals the in-memory reference; slices; interruptions ---------------


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks, slices and staging batches of a few items: every boundary gets crossed."""
    import services.worker.bulk as wb
    import services.worker.slices as ws

    monkeypatch.setattr(wb, "CHUNK", 7)
    monkeypatch.setattr(ws, "SLICE_EFFECTS", 3)
    monkeypatch.setattr(ws, "STAGE_BATCH", 2)


def state_key(settings: Settings, group_key: str) -> str:
    rt = "_directory_employee"
    p = ks.partition_of(rt, group_key, settings.partitions)
    return ks.state_key(p, rt, group_key)


async def write_model(redis: Redis, settings: Settings, group_key: str) -> dict[str, Any]:
    """The scope's write model; asserts that its live count is exact."""
    raw = await redis.hgetall(state_key(settings, group_key))
    out = {}
    for k, v in raw.items():
        if not k.startswith(b"\x00"):
            value = writemodel.decode(v)  # a tombstone also carries its time
            assert value is not None
            out[k.decode()] = value
    if raw:
        live = sum(1 for h, _ in out.values() if h)
        assert int(raw[ks.STATE_LIVE_FIELD.encode()]) == live, "live count is off"
        assert int(raw[ks.STATE_DEAD_FIELD.encode()]) == len(out) - live, "dead count"
        assert len(raw) == len(out) + ks.STATE_OWN_FIELDS
    return out


async def singles_and_deletes(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, rng: random.Random
) -> None:
    """Some creates, updates, re-creates and deletes of the scope, as single events."""
    for _ in range(rng.randint(0, 6)):
        item = emp(f"r{rng.randint(0, 60)}", active=rng.random() < 0.5)
        r = await client.post(f"{EVENT}?groupKey=g", json=item, headers=seeded.headers)
        assert r.status == 202
    ids = ",".join(f"r{rng.randint(0, 60)}" for _ in range(rng.randint(1, 4)))
    r = await client.delete(
        f"/integration/custom-data/employee?groupKey=g&resourceIds={ids}", headers=seeded.headers
    )
    assert r.status == 202
    await pipeline.run()


def random_items(rng: random.Random, n: int, bad: float) -> list[Any]:
    items: list[Any] = []
    for _ in range(n):
        roll = rng.random()
        rid = f"r{rng.randint(0, 60)}"
        if roll < bad / 3:
            items.append({"active": True})
        elif roll < bad:
            items.append(emp(rid, active="bad"))
        else:
            items.append(emp(rid, active=rng.random() < 0.5, employee={"age": rng.randint(1, 3)}))
    return items


@pytest.mark.parametrize("seed", range(4))
async def test_streamed_diff_equals_the_reference(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
    tiny_chunks: None,
    seed: int,
) -> None:
    from shared.bulk import diff_snapshot
    from shared.events import RawMeta
    from shared.schema_rules import CompiledSchema, prepare_schema
    from tests.conftest import EMPLOYEE_SCHEMA

    rng = random.Random(seed)
    first = {emp(f"r{i}")["employeeId"]: emp(f"r{i}") for i in range(0, 60, 2)}
    await post_bulk(client, seeded, list(first.values()), "groupKey=g")
    await pipeline.run()
    for round_ in range(3):
        await singles_and_deletes(client, seeded, pipeline, rng)
        partial = rng.random() < 0.5
        items = random_items(rng, rng.randint(0, 50), bad=0.1 if partial else 0.03)
        current = await write_model(redis, settings, "g")
        meta = RawMeta("ev", "bulk", "i", "employee", "_directory_employee", "g", None, None, 0)
        schema = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
        want, _ = diff_snapshot(meta, items, schema, current, partial)
        cuts = sorted(rng.sample(range(len(items) + 1), 2)) if items else [0, 0]
        parts = [items[: cuts[0]], items[cuts[0] : cuts[1]], items[cuts[1] :]]
        sid = f"s{seed}-{round_}"
        extra = "groupKey=g" + ("&partial=true" if partial else "")
        eid = ""
        for n in (3, 1, 2):
            out = await post_bulk(client, seeded, parts[n - 1], part_query(sid, n, n == 3, extra))
            eid = out["eventId"]
        await pipeline.run()
        got = await receipt(client, seeded, eid)
        assert got["status"] == want.status
        for k, v in want.counts().items():
            assert got[k] == v, (k, got, want.counts())
        assert got["issuesTotal"] == want.issues_total
        resources = await scope(pool, "g")
        live = {k: v for k, v in current.items() if v[0]}
        for e in want.effects:
            if e.op == "deleted":
                live.pop(e.resource_id, None)
            else:
                live[e.resource_id] = (e.content_hash or "", e.version)
        assert {k: (r["content_hash"], r["version"]) for k, r in resources.items()} == live
        rows = await history(pool, eid)
        assert len(rows) == len(want.effects)
        events = await pool.fetch("SELECT 1 FROM ingest_events WHERE event_id = $1", eid)
        assert len(events) == 1
        await write_model(redis, settings, "g")  # the live count followed every change


async def test_write_model_of_an_older_format_is_rebuilt_with_its_live_count(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, redis: Redis, settings: Settings
) -> None:
    """A write model loaded before the live count existed (marker "1") is loaded again
    from PostgreSQL, so the count the deletion shortcut trusts is always exact."""
    await post_bulk(client, seeded, [emp("a"), emp("b"), emp("c")])
    await pipeline.run()
    key = state_key(settings, "")
    await redis.hset(key, mapping={ks.STATE_LOADED_FIELD: "1"})
    await redis.hdel(key, ks.STATE_LIVE_FIELD, ks.STATE_DEAD_FIELD)
    r = await post_bulk(client, seeded, [emp("a"), emp("b")])
    await pipeline.run()
    got = await receipt(client, seeded, r["eventId"])
    assert (got["status"], got["deleted"], got["unchanged"]) == ("applied", 1, 2)
    assert await redis.hget(key, ks.STATE_LOADED_FIELD) == ks.STATE_FORMAT
    assert set(await write_model(redis, settings, "")) == {"a", "b", "c"}


@pytest.mark.parametrize("skew", [-2, -3, 3])
async def test_a_live_count_that_is_off_falls_back_to_scanning_the_scope(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
    tiny_chunks: None,
    skew: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A count that disagrees with the hash's length must not hide a deletion: the scan
    runs in full and says so."""
    await post_bulk(client, seeded, [emp(f"e{i}") for i in range(10)])
    await pipeline.run()
    await redis.hincrby(state_key(settings, ""), ks.STATE_LIVE_FIELD, skew)
    r = await post_bulk(client, seeded, [emp(f"e{i}") for i in range(2, 10)])
    await pipeline.run()
    got = await receipt(client, seeded, r["eventId"])
    assert (got["deleted"], got["unchanged"]) == (2, 8)
    assert set(await scope(pool)) == {f"e{i}" for i in range(2, 10)}
    assert "counts of" in caplog.text


async def test_receipt_appears_only_with_the_last_slice(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
    tiny_chunks: None,
) -> None:
    from services.projector.apply import apply_batch
    from shared.pg.resources import ResourceStore

    r = await post_bulk(client, seeded, [emp(f"e{i}") for i in range(20)])
    await pipeline.registry.refresh(force=True)
    p = ks.partition_of("_directory_employee", "", settings.partitions)
    d = Drainer(redis, pipeline.resources, pipeline.registry, p, 100, "w")
    assert await d.run(10, idle_exit=True)
    entries = await redis.xrange(ks.changes_stream(p))
    assert len(entries) == 8  # 7 slices of at most 3 effects + the receipt entry
    raw = [(sid, f[ks.F_CHANGE]) for sid, f in entries]
    async with pool.acquire() as conn:
        await apply_batch(ResourceStore(conn), p, raw[:5])  # a projector that stops between slices
    assert await pool.fetchval("SELECT count(*) FROM resources") == 15
    assert (await receipt(client, seeded, r["eventId"]))["status"] == "pending"
    async with pool.acquire() as conn:
        await apply_batch(ResourceStore(conn), p, raw)  # resumes: the applied prefix is skipped
    rc = await receipt(client, seeded, r["eventId"])
    assert rc["status"] == "applied" and rc["created"] == 20
    assert await pool.fetchval("SELECT count(*) FROM resource_changes") == 20


async def test_lost_lease_before_exec_commits_nothing_and_the_retry_applies_once(
    client: Client,
    seeded: Seeded,
    pipeline: InlinePipeline,
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
    tiny_chunks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import services.worker.bulk as wb
    from shared.redis.txn import GuardedTransaction

    await _seed_abc(client, seeded, pipeline)
    before = await write_model(redis, settings, "")
    r = await post_bulk(client, seeded, [emp("a", active=True)] + [emp(f"n{i}") for i in range(10)])

    class StolenFirst(GuardedTransaction):
        async def begin(self) -> None:
            await redis.set(self.lease.key, "someone-else")  # the token check must refuse
            await super().begin()

    monkeypatch.setattr(wb, "GuardedTransaction", StolenFirst)
    p = ks.partition_of("_directory_employee", "", settings.partitions)
    d = Drainer(redis, pipeline.resources, pipeline.registry, p, 100, "w")
    assert await d.run(10, idle_exit=True)  # logs the lost lease and stops
    assert await redis.xlen(ks.changes_stream(p)) == 0
    assert await write_model(redis, settings, "") == before
    assert await redis.xlen(ks.ingest_stream(p)) == 1  # still there, still pending
    await redis.delete(ks.drain_lock(p))
    monkeypatch.setattr(wb, "GuardedTransaction", GuardedTransaction)
    await pipeline.run()
    rc = await receipt(client, seeded, r["eventId"])
    assert (rc["status"], rc["created"], rc["updated"], rc["deleted"]) == ("applied", 10, 1, 2)
    assert len(await history(pool, r["eventId"])) == 13
