"""Ingest API refusals: each answers a specific status and JSON code and enqueues nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from services.gateway.app import create_app
from shared.config import Settings
from shared.redis import keyspace as ks
from tests.conftest import Seeded, seed_directory
from tests.helpers import poll

EVENT = "/integration/custom-data/event/employee"
DOC = {"employeeId": "e1", "active": True}
MiB = 1 << 20


async def backlog(redis: Redis, settings: Settings) -> list[int]:
    pipe = redis.pipeline(transaction=False)
    for p in range(settings.partitions):
        pipe.xlen(ks.ingest_stream(p))
    return [int(n) for n in await pipe.execute()]


async def assert_refused(
    r: Any, status: int, code: str, redis: Redis, settings: Settings
) -> dict[str, Any]:
    body = await r.json()
    assert r.status == status, body
    assert r.content_type == "application/json"
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert await backlog(redis, settings) == [0] * settings.partitions
    return dict(body)


# ---- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_ingest_key"),
        ({"X-Ingest-Key": ""}, "missing_ingest_key"),
        ({"Authorization": "Bearer "}, "missing_ingest_key"),
        ({"X-Ingest-Key": "igk_0123456789abcdef_notthesecret"}, "invalid_ingest_key"),
        ({"X-Ingest-Key": "not-a-key"}, "invalid_ingest_key"),
        ({"X-Ingest-Key": "igk_"}, "invalid_ingest_key"),
        ({"X-Ingest-Key": "igk_abc"}, "invalid_ingest_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing_ingest_key"),
    ],
)
async def test_refuses_missing_unknown_or_malformed_key(
    client: TestClient[Any, Any],
    seeded: Seeded,
    redis: Redis,
    settings: Settings,
    headers: dict[str, str],
    code: str,
) -> None:
    r = await client.post(EVENT, json=DOC, headers=headers)
    await assert_refused(r, 401, code, redis, settings)
    r = await client.delete("/integration/custom-data/employee?resourceIds=a", headers=headers)
    await assert_refused(r, 401, code, redis, settings)


async def test_right_key_id_with_wrong_secret_is_refused(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    forged = f"igk_{seeded.key_id}_{'x' * 43}"
    r = await client.post(EVENT, json=DOC, headers={"X-Ingest-Key": forged})
    await assert_refused(r, 401, "invalid_ingest_key", redis, settings)


async def test_revoked_key_is_refused(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    from tests.conftest import ADMIN

    r = await client.delete(
        f"/admin/v1/integrations/{seeded.integration_id}/keys/{seeded.key_id}", headers=ADMIN
    )
    assert r.status == 204
    r = await client.post(EVENT, json=DOC, headers=seeded.headers)
    await assert_refused(r, 401, "invalid_ingest_key", redis, settings)


async def test_bearer_ingest_key_works_like_the_header(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    r = await client.post(EVENT, json=DOC, headers={"Authorization": f"Bearer {seeded.key}"})
    assert r.status == 202, await r.text()
    eid = (await r.json())["eventId"]
    assert sum(await backlog(redis, settings)) == 1
    r = await client.get(
        f"/integration/custom-data/events/{eid}",
        headers={"Authorization": f"Bearer {seeded.key}"},
    )
    assert r.status == 200
    assert (await r.json())["status"] == "pending"


# ---- table resolution -------------------------------------------------------------------


async def test_table_not_in_group_is_404(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    r = await client.post("/integration/custom-data/event/device", json=DOC, headers=seeded.headers)
    alone = await assert_refused(r, 404, "table_not_found", redis, settings)

    # another group has a table called "device": the answer must not change
    other = await seed_directory(client, prefix="_assets", table="device")
    r = await client.post("/integration/custom-data/event/device", json=DOC, headers=seeded.headers)
    shadowed = await assert_refused(r, 404, "table_not_found", redis, settings)
    assert shadowed == alone
    r = await client.delete("/integration/custom-data/device?resourceIds=a", headers=seeded.headers)
    await assert_refused(r, 404, "table_not_found", redis, settings)

    # and the other group's key does not reach "employee" of the first group
    r = await client.post(EVENT, json=DOC, headers=other.headers)
    await assert_refused(r, 404, "table_not_found", redis, settings)
    # while each key reaches its own table
    r = await client.post("/integration/custom-data/event/device", json=DOC, headers=other.headers)
    assert r.status == 202


async def test_same_table_name_in_two_groups_resolves_per_key(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    other = await seed_directory(client, prefix="_other", table="employee")
    r1 = await client.post(EVENT, json=DOC, headers=seeded.headers)
    r2 = await client.post(EVENT, json=DOC, headers=other.headers)
    assert r1.status == r2.status == 202
    metas = []
    for p in range(settings.partitions):
        for _, fields in await redis.xrange(ks.ingest_stream(p)):
            metas.append(orjson.loads(fields[ks.F_META]))
    assert sorted(m["rt"] for m in metas) == ["_directory_employee", "_other_employee"]


# ---- parameters and body ----------------------------------------------------------------


async def test_malformed_json_says_where(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    r = await client.post(EVENT, data=b'{"employeeId": "e1",\n "x": }', headers=seeded.headers)
    body = await assert_refused(r, 400, "invalid_json", redis, settings)
    assert "line 2" in body["message"] and "column" in body["message"], body


@pytest.mark.parametrize("raw", [b"[]", b'[{"employeeId": "e1"}]', b'"e1"', b"42", b"null"])
async def test_body_not_an_object(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings, raw: bytes
) -> None:
    r = await client.post(EVENT, data=raw, headers=seeded.headers)
    await assert_refused(r, 400, "body_not_object", redis, settings)


async def test_empty_body_is_malformed_json(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    r = await client.post(EVENT, data=b"", headers=seeded.headers)
    await assert_refused(r, 400, "invalid_json", redis, settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [("groupKey", "g" * 101), ("event", "e" * 101), ("actor", '"' + "a" * 999 + '"')],
)
async def test_parameter_too_long(
    client: TestClient[Any, Any],
    seeded: Seeded,
    redis: Redis,
    settings: Settings,
    name: str,
    value: str,
) -> None:
    r = await client.post(EVENT, params={name: value}, json=DOC, headers=seeded.headers)
    body = await assert_refused(r, 400, "invalid_parameter", redis, settings)
    assert name in body["message"]
    assert body["pointer"] == f"/query/{name}"
    r = await client.delete(
        "/integration/custom-data/employee",
        params={name: value, "resourceIds": "a"},
        headers=seeded.headers,
    )
    await assert_refused(r, 400, "invalid_parameter", redis, settings)


async def test_parameters_at_the_limit_are_accepted(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    params = {"groupKey": "g" * 100, "event": "e" * 100, "actor": '"' + "a" * 998 + '"'}
    r = await client.post(EVENT, params=params, json=DOC, headers=seeded.headers)
    assert r.status == 202, await r.text()


@pytest.mark.parametrize("actor", ["alice", "{name: alice}", '{"a":', ""])
async def test_actor_must_be_json(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings, actor: str
) -> None:
    r = await client.post(EVENT, params={"actor": actor}, json=DOC, headers=seeded.headers)
    body = await assert_refused(r, 400, "invalid_parameter", redis, settings)
    assert body["pointer"] == "/query/actor"


async def test_body_over_1_mib_is_413(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    big = b'{"employeeId": "e1", "pad": "' + b"x" * MiB + b'"}'
    r = await client.post(EVENT, data=big, headers=seeded.headers)
    await assert_refused(r, 413, "body_too_large", redis, settings)


async def test_chunked_body_over_1_mib_is_413_before_it_is_all_read(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"employeeId": "e1", "pad": "'
        for _ in range(64):  # 4 MiB in all, far past the limit
            yield b"x" * (64 * 1024)
        yield b'"}'

    try:
        r = await client.post(EVENT, data=chunks(), headers=seeded.headers)
    except Exception as e:  # the server may close while we are still sending
        pytest.fail(f"client saw {e!r} instead of a 413 answer")
    await assert_refused(r, 413, "body_too_large", redis, settings)


async def test_chunked_body_under_limit_is_accepted(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"employeeId": '
        yield b'"e1"}'

    r = await client.post(EVENT, data=chunks(), headers=seeded.headers)
    assert r.status == 202, await r.text()
    assert sum(await backlog(redis, settings)) == 1


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "text/csv"])
async def test_unsupported_content_type_is_415(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings, ctype: str
) -> None:
    headers = {**seeded.headers, "Content-Type": ctype}
    r = await client.post(EVENT, data=orjson.dumps(DOC), headers=headers)
    await assert_refused(r, 415, "unsupported_media_type", redis, settings)


async def test_json_content_type_with_charset_is_accepted(
    client: TestClient[Any, Any], seeded: Seeded
) -> None:
    headers = {**seeded.headers, "Content-Type": "application/json; charset=utf-8"}
    r = await client.post(EVENT, data=orjson.dumps(DOC), headers=headers)
    assert r.status == 202, await r.text()


async def test_delete_needs_resource_ids(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    for q in ("", "?resourceIds=", "?resourceIds=,,"):
        r = await client.delete(f"/integration/custom-data/employee{q}", headers=seeded.headers)
        body = await assert_refused(r, 400, "invalid_parameter", redis, settings)
        assert body["pointer"] == "/query/resourceIds"


# ---- backlog ----------------------------------------------------------------------------


async def test_backlog_over_limit_is_429_with_retry_after(settings: Settings, redis: Redis) -> None:
    s = replace(settings, max_backlog=3)
    async with TestClient(TestServer(create_app(s))) as c:
        seeded = await seed_directory(c)
        url = EVENT + "?groupKey=busy"
        for _ in range(4):  # backlog 4 > 3 once the gateway has polled it
            r = await c.post(url, json=DOC, headers=seeded.headers)
            assert r.status == 202
        p = ks.partition_of("_directory_employee", "busy", s.partitions)
        before = await backlog(redis, s)
        assert before[p] == 4

        async def throttled() -> ClientResponse | None:
            nonlocal before
            r = await c.post(url, json=DOC, headers=seeded.headers)
            if r.status == 429:
                return r
            assert r.status == 202, await r.text()
            before = await backlog(redis, s)  # accepted before the poll saw the backlog
            return None

        r = await poll("a 429 once the gateway polled the backlog", throttled, 5, every=0.05)
        body = await r.json()
        assert body["code"] == "backlog_full"
        assert int(r.headers["Retry-After"]) >= 1
        assert await backlog(redis, s) == before
        # other partitions are not throttled
        other = next(
            g
            for g in (f"g{i}" for i in range(100))
            if ks.partition_of("_directory_employee", g, s.partitions) != p
        )
        r = await c.post(EVENT + f"?groupKey={other}", json=DOC, headers=seeded.headers)
        assert r.status == 202
        # draining the backlog lifts the limit
        await redis.delete(ks.ingest_stream(p))

        async def accepted() -> bool:
            r = await c.post(url, json=DOC, headers=seeded.headers)
            return bool(r.status == 202)

        await poll("a 202 once the backlog is drained", accepted, 5, every=0.05)


# ---- receipts ---------------------------------------------------------------------------


async def test_receipt_of_unknown_event_is_404(
    client: TestClient[Any, Any], seeded: Seeded
) -> None:
    for eid in ("ev_000000000000deadbeefdeadbeef", "nonsense"):
        r = await client.get(f"/integration/custom-data/events/{eid}", headers=seeded.headers)
        assert r.status == 404
        assert (await r.json())["code"] == "event_not_found"


async def test_pending_receipt_only_for_own_integration(
    client: TestClient[Any, Any], seeded: Seeded
) -> None:
    r = await client.post(EVENT, json=DOC, headers=seeded.headers)
    eid = (await r.json())["eventId"]
    other = await seed_directory(client, prefix="_other")
    r = await client.get(f"/integration/custom-data/events/{eid}", headers=other.headers)
    assert r.status == 404
    assert (await r.json())["code"] == "event_not_found"
    r = await client.get(f"/integration/custom-data/events/{eid}", headers=seeded.headers)
    body = await r.json()
    assert body["status"] == "pending" and body["eventId"] == eid
    r = await client.get(f"/integration/custom-data/events/{eid}")
    assert r.status == 401


async def test_accepted_event_is_on_the_stream_with_its_metadata(
    client: TestClient[Any, Any], seeded: Seeded, redis: Redis, settings: Settings
) -> None:
    params = {"groupKey": "acme", "event": "hired", "actor": '{"name": "hr"}'}
    raw = b'{"employeeId":  "e1"}'
    r = await client.post(EVENT, params=params, data=raw, headers=seeded.headers)
    assert r.status == 202
    eid = (await r.json())["eventId"]
    p = ks.partition_of("_directory_employee", "acme", settings.partitions)
    entries = await redis.xrange(ks.ingest_stream(p))
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[ks.F_BODY] == raw  # exactly as received
    meta = orjson.loads(fields[ks.F_META])
    assert meta["id"] == eid and meta["g"] == "acme" and meta["ev"] == "hired"
    assert meta["a"] == {"name": "hr"} and meta["i"] == seeded.integration_id
