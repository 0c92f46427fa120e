"""Bulk snapshots end to end in one process: gateway → worker diff → projector → receipts."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.config import Settings
from shared.redis import keyspace as ks
from tests.conftest import InlinePipeline, Seeded, seed_directory
from tests.helpers import emp, post_bulk, receipt

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
