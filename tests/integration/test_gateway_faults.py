"""The gateway while Redis or PostgreSQL is down, frozen or restarted.

Every route answers 503 ``unavailable`` with ``Retry-After`` (never 500, never a hang,
never a traceback in the log) within ``INGESTD_REDIS_TIMEOUT_MS``, and recovers by
itself. Redis faults use a private redis-server; PostgreSQL faults cut a proxy in
front of the test database (the shared servers are never stopped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from services.gateway.app import create_app
from services.gateway.appender import Appender
from services.gateway.state import APPENDER, SETTINGS
from shared.config import Settings
from shared.errors import ApiError
from shared.redis import keyspace as ks
from tests.conftest import ADMIN, Seeded, seed_directory
from tests.helpers import poll
from tests.netfaults import CutProxy, PrivateRedis

Client = TestClient[Any, Any]
INGEST = "/integration/custom-data"
TIMEOUT_MS = 300
#: what a bound of TIMEOUT_MS may take on a loaded test machine
SLACK_S = 1.5
RT = "_directory_employee"


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def gateway(settings: Settings, private_redis: PrivateRedis) -> AsyncIterator[Client]:
    """An in-process gateway on the private Redis, with a short Redis timeout."""
    s = replace(settings, redis_url=private_redis.url, redis_timeout_ms=TIMEOUT_MS)
    async with TestClient(TestServer(create_app(s))) as c:
        yield c


@pytest.fixture
async def key(gateway: Client) -> Seeded:
    return await seed_directory(gateway)


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the gateway logged as a defect: ERROR records or any record with a traceback."""
    return [
        r
        for r in caplog.records
        if r.name.startswith(("ingestd.gateway", "aiohttp"))
        and (r.levelno >= logging.ERROR or r.exc_info)
    ]


async def _unavailable(r: Any) -> dict[str, Any]:
    body = await r.json()
    assert r.status == 503, body
    assert body["code"] == "unavailable", body
    assert int(r.headers["Retry-After"]) >= 1
    return dict(body)


async def _accepted(c: Client, who: Seeded) -> bool:
    return bool((await _single(c, who)).status == 202)


def _single(c: Client, who: Seeded, rid: str = "e1") -> Any:
    return c.post(f"{INGEST}/event/employee", json={"employeeId": rid},
                  headers={"X-Ingest-Key": who.key})  # fmt: skip


# ---- the group-commit append --------------------------------------------------------------


async def test_a_frozen_redis_is_503_within_the_timeout_not_a_hang(
    gateway: Client, key: Seeded, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await _single(gateway, key)).status == 202
    with private_redis.frozen():
        started = time.monotonic()
        answers = await asyncio.wait_for(
            asyncio.gather(*(_single(gateway, key, f"e{i}") for i in range(20))), 30
        )
        elapsed = time.monotonic() - started
        for r in answers:
            await _unavailable(r)
        assert elapsed < TIMEOUT_MS / 1000 + SLACK_S, elapsed
    await poll("the gateway to append again", lambda: _accepted(gateway, key), 10)
    assert not _errors(caplog)


async def test_the_first_append_after_a_redis_restart_succeeds(
    gateway: Client, key: Seeded, private_redis: PrivateRedis
) -> None:
    """The appender's held connection was closed by the old server while the gateway
    was idle: it is replaced before sending, not answered 503."""
    assert (await _single(gateway, key)).status == 202
    private_redis.restart()
    r = await _single(gateway, key, "e2")
    assert r.status == 202, await r.text()


async def test_every_event_is_answered_within_the_timeout_of_its_arrival(
    private_redis: PrivateRedis,
) -> None:
    """Events queued behind a batch that hangs are not given a full timeout of their own
    after it: each is answered within the timeout of being queued."""
    redis = Redis.from_url(private_redis.url)
    appender = Appender(redis, 1, receipt_ttl=60, timeout_ms=TIMEOUT_MS)
    await appender.start()
    try:
        assert await appender.append(0, {ks.F_META: b"warm"}, ks.receipt_key("w"), b"{}")
        with private_redis.frozen():
            loop = asyncio.get_running_loop()
            waits: list[float] = []

            async def one(i: int) -> None:
                queued = loop.time()
                with pytest.raises(ApiError) as e:
                    await appender.append(0, {ks.F_META: b"%d" % i}, ks.receipt_key(f"{i}"), b"")
                assert e.value.status == 503
                waits.append(loop.time() - queued)

            tasks = []
            for i in range(6):  # arriving while the first batch hangs, and after it failed
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(TIMEOUT_MS / 1000 / 3)
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert max(waits) < TIMEOUT_MS / 1000 + SLACK_S / 3, waits
    finally:
        await appender.stop()
        await redis.aclose()


async def test_a_timeout_after_sending_is_503_though_the_event_may_be_stored(
    gateway: Client, key: Seeded, private_redis: PrivateRedis
) -> None:
    """At least once from the producer's side: Redis frozen after the append was sent
    answers 503 (the gateway cannot know), and the event is stored once Redis resumes;
    the producer's retry would store it a second time."""
    r = Redis.from_url(private_redis.url)
    try:
        assert (await _single(gateway, key)).status == 202  # the connection is open
        with private_redis.frozen():
            body = await _unavailable(await _single(gateway, key, "e2"))
            assert "may or may not have been stored" in body["message"]

        async def stored() -> bool:
            return bool(await r.xlen(ks.ingest_stream(_partition(gateway))) == 2)

        await poll("the frozen append to land once Redis resumed", stored, 10)
    finally:
        await r.aclose()


def _partition(c: Client, group_key: str = "") -> int:
    return ks.partition_of(RT, group_key, c.app[SETTINGS].partitions)


# ---- every other route ---------------------------------------------------------------------

ROUTES = [
    ("post", f"{INGEST}/bulk-event/employee", [{"employeeId": "a"}]),
    ("post", f"{INGEST}/bulk-event/employee?session=s1&part=1", [{"employeeId": "a"}]),
    ("post", f"{INGEST}/bulk-event/employee?session=s1&part=2&final=true", [{"employeeId": "b"}]),
    ("get", f"{INGEST}/bulk-event/employee/sessions/s1", None),
    ("delete", f"{INGEST}/bulk-event/employee/sessions/s1", None),
    ("get", f"{INGEST}/events/ev_00000000000000000000000000", None),
    ("post", f"{INGEST}/event/employee", {"employeeId": "a"}),
    ("delete", f"{INGEST}/employee?resourceIds=a,b", None),
]


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
async def test_every_ingest_route_is_503_while_redis_is_unavailable(
    gateway: Client,
    key: Seeded,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    h = {"X-Ingest-Key": key.key}
    # a session part stored first, so GET/DELETE of it would find it with Redis up
    r = await gateway.post(ROUTES[1][1], json=ROUTES[1][2], headers=h)
    assert r.status == 202, await r.text()
    if fault == "stopped":
        private_redis.stop()
    else:
        freeze = private_redis.frozen()
        freeze.__enter__()
    try:
        for method, path, body in ROUTES:
            started = time.monotonic()
            r = await asyncio.wait_for(getattr(gateway, method)(path, json=body, headers=h), 30)
            elapsed = time.monotonic() - started
            msg = await _unavailable(r)
            assert elapsed < TIMEOUT_MS / 1000 + SLACK_S, (path, elapsed)
            assert "Redis" in msg["message"] or "event store" in msg["message"], msg
    finally:
        if fault == "stopped":
            private_redis.start()
        else:
            freeze.__exit__(None, None, None)
    assert not _errors(caplog), [r.getMessage() for r in _errors(caplog)]

    async def readable() -> bool:
        return bool((await gateway.get(ROUTES[3][1], headers=h)).status == 200)

    await poll("the session to be readable again", readable, 10)


# ---- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture
async def pg_proxy(settings: Settings) -> AsyncIterator[CutProxy]:
    assert settings.database_url
    proxy = CutProxy(settings.database_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.cut()


async def test_admin_read_and_receipt_routes_are_503_while_postgres_is_down(
    settings: Settings, pg_proxy: CutProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The registry lives in PostgreSQL, and so do resources and applied receipts: those
    routes answer 503 while it is down. Ingest keeps working (the registry is held in
    memory, events go to Redis)."""
    app = create_app(replace(settings, database_url=pg_proxy.dsn))
    async with TestClient(TestServer(app)) as c:
        key = await seed_directory(c)
        await pg_proxy.cut()
        for path in (
            "/admin/v1/schema-groups",
            "/admin/v1/integrations",
            f"/api/v1/resources/{RT}",
            f"/api/v1/resources/{RT}/e1?groupKey=g",
            f"/api/v1/resources/{RT}/e1/history",
            "/api/v1/sync-issues",
        ):
            msg = await _unavailable(await c.get(path, headers=ADMIN))
            assert msg["message"] == "PostgreSQL is unavailable; retry", (path, msg)
        r = await c.post("/admin/v1/schema-groups", json={"name": "n", "prefix": "_n"},
                         headers=ADMIN)  # fmt: skip
        await _unavailable(r)
        r = await c.get(f"{INGEST}/events/ev_00000000000000000000000000",
                        headers={"X-Ingest-Key": key.key})  # fmt: skip
        await _unavailable(r)
        assert (await _single(c, key)).status == 202
    assert not _errors(caplog), [r.getMessage() for r in _errors(caplog)]


# ---- backpressure --------------------------------------------------------------------------


async def test_a_changes_backlog_over_the_limit_is_429(
    settings: Settings, redis: Redis, pool: asyncpg.Pool
) -> None:
    """PostgreSQL down: the worker keeps turning raw events into change entries that the
    projector cannot apply, so ``changes:{p}`` grows while ``ingest:{p}`` stays short.
    The limit counts both, so producers are slowed before Redis fills up."""
    async with TestClient(TestServer(create_app(replace(settings, max_backlog=5)))) as c:
        key = await seed_directory(c)
        p = _partition(c, "g")
        for i in range(8):
            await redis.xadd(ks.changes_stream(p), {"n": str(i)})

        async def seen() -> bool:
            return bool(c.app[APPENDER].backlog[p] == 8)

        await poll("the gateway to count the changes backlog", seen, 5, every=0.05)
        r = await c.post(f"{INGEST}/event/employee", params={"groupKey": "g"},
                         json={"employeeId": "a"}, headers={"X-Ingest-Key": key.key})  # fmt: skip
        body = await r.json()
        assert r.status == 429, body
        assert body["code"] == "backlog_full" and r.headers["Retry-After"] == "1"
        assert "8 to apply" in body["message"], body
        r = await c.post(f"{INGEST}/bulk-event/employee", params={"groupKey": "g"},
                         json=[{"employeeId": "a"}], headers={"X-Ingest-Key": key.key})  # fmt: skip
        assert r.status == 429
    assert await redis.xlen(ks.ingest_stream(p)) == 0
