"""The gateway's group-commit appender against a real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from services.gateway.appender import Appender, Connections
from shared.config import Settings
from shared.embedded import free_port
from shared.errors import ApiError
from shared.redis import keyspace as ks
from tests.helpers import poll


async def test_concurrent_appends_land_in_order_with_receipts(
    settings: Settings, redis: Redis
) -> None:
    appender = Appender(redis, settings.partitions, receipt_ttl=60)
    await appender.start()
    try:
        futs = [
            appender.append(
                i % 2,
                {ks.F_META: b"m%d" % i, ks.F_BODY: b'{"n":%d}' % i},
                ks.receipt_key(f"ev{i}"),
                b'{"i":"x"}',
            )
            for i in range(300)
        ]
        ids = await asyncio.gather(*futs)
    finally:
        await appender.stop()
    for p in (0, 1):
        rows = await redis.xrange(ks.ingest_stream(p))
        assert [f[ks.F_META] for _, f in rows] == [b"m%d" % i for i in range(p, 300, 2)]
        assert [sid for sid, _ in rows] == list(ids[p::2])
    assert await redis.get(ks.receipt_key("ev7")) == b'{"i":"x"}'
    assert 0 < await redis.ttl(ks.receipt_key("ev7")) <= 60


async def test_an_error_reply_fails_only_its_own_event(settings: Settings, redis: Redis) -> None:
    await redis.set(ks.ingest_stream(1), "not a stream")
    appender = Appender(redis, settings.partitions, receipt_ttl=60)
    await appender.start()
    try:
        good = appender.append(0, {ks.F_META: b"a"}, ks.receipt_key("a"), b"{}")
        bad = appender.append(1, {ks.F_META: b"b"}, ks.receipt_key("b"), b"{}")
        after = appender.append(0, {ks.F_META: b"c"}, ks.receipt_key("c"), b"{}")
        assert (await good) and (await after)
        with pytest.raises(ApiError) as e:
            await bad
        assert e.value.status == 503
    finally:
        await appender.stop()
    assert await redis.xlen(ks.ingest_stream(0)) == 2


async def test_unreachable_redis_is_503_not_a_hang() -> None:
    redis = Redis(port=free_port(), socket_connect_timeout=1)
    appender = Appender(redis, 4, receipt_ttl=60)
    await appender.start()
    try:
        fut = appender.append(0, {ks.F_META: b"x"}, ks.receipt_key("x"), b"{}")
        with pytest.raises(ApiError) as e:
            await asyncio.wait_for(fut, 10)
        assert e.value.status == 503
    finally:
        await appender.stop()
        await redis.aclose()


async def test_stop_ends_the_backlog_poll_even_when_the_driver_converts_the_cancel(
    settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wedge behind hung gateway stops: cancelled inside redis-py, the backlog
    poll got a connection error instead, took it for an outage and polled on."""
    appender = Appender(redis, settings.partitions, receipt_ttl=60)
    polled = asyncio.Event()

    async def poll() -> None:
        polled.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # as the driver does
            raise ConnectionError("Connection closed by server.") from None

    monkeypatch.setattr(appender, "poll_backlog", poll)
    await appender.start()
    await polled.wait()
    backlog = appender._backlog_task
    stopping = asyncio.ensure_future(appender.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)  # not wait_for: it would wait on
    assert done, "the appender did not stop"  # the stuck task once more when it times out
    assert backlog is not None and backlog.cancelled()


# ---- the linger under live traffic ----------------------------------------------------


def _event(appender: Appender, n: int) -> asyncio.Future[object]:
    return appender.append(n % 2, {ks.F_META: b"m%d" % n}, ks.receipt_key(f"ev{n}"), b"{}")  # type: ignore[return-value]


async def _lingering(
    settings: Settings, redis: Redis, senders: int, linger_ms: float
) -> tuple[Appender, Connections]:
    """An appender whose gateway has ``senders`` open connections, primed with a burst of
    events (their average gap is then far below the linger)."""
    conns = Connections()
    conns.open = senders
    appender = Appender(
        redis, settings.partitions, receipt_ttl=60, linger_ms=linger_ms, connections=conns
    )
    await appender.start()
    await asyncio.gather(*(_event(appender, 1000 + i) for i in range(senders * 2)))
    return appender, conns


async def test_a_small_batch_waits_for_more_while_most_senders_are_idle(
    settings: Settings, redis: Redis
) -> None:
    appender, _ = await _lingering(settings, redis, senders=8, linger_ms=300)
    try:
        held, sent = appender.lingered, appender.flushes
        first = _event(appender, 1)
        await asyncio.sleep(0.02)  # a second event, 20 ms later, from another connection
        second = _event(appender, 2)
        a, b = await asyncio.gather(first, second)
        assert (appender.lingered, appender.flushes) == (held + 1, sent + 1)  # one trip
        assert isinstance(a, bytes) and isinstance(b, bytes)  # stream ids: both appended
    finally:
        await appender.stop()
    assert await redis.get(ks.receipt_key("ev2")) == b"{}"


async def test_without_a_linger_each_event_goes_at_once(settings: Settings, redis: Redis) -> None:
    appender, _ = await _lingering(settings, redis, senders=8, linger_ms=0)
    try:
        sent = appender.flushes
        await _event(appender, 1)  # answered before the second is even queued
        await _event(appender, 2)
        assert (appender.lingered, appender.flushes) == (0, sent + 2)
    finally:
        await appender.stop()


async def test_closed_loop_senders_are_not_kept_waiting(settings: Settings, redis: Redis) -> None:
    # two connections and one event waiting: half the senders wait on their answers
    appender, conns = await _lingering(settings, redis, senders=2, linger_ms=5000)
    try:
        held = appender.lingered
        await asyncio.wait_for(_event(appender, 1), 2)
        assert appender.lingered == held
        # eight connections: a held batch goes as soon as four of them wait on it
        conns.open = 8
        t0 = time.monotonic()
        first = _event(appender, 2)
        await asyncio.sleep(0)
        rest = [_event(appender, n) for n in (3, 4, 5)]
        await asyncio.wait_for(asyncio.gather(first, *rest), 2)
        assert appender.lingered == held + 1
        assert time.monotonic() - t0 < 2  # far less than the 5 s linger
    finally:
        await appender.stop()


async def test_stopping_answers_a_held_batch(settings: Settings, redis: Redis) -> None:
    appender, _ = await _lingering(settings, redis, senders=8, linger_ms=60_000)
    held = appender.lingered
    fut = _event(appender, 1)

    async def holding() -> bool:
        return appender.lingered == held + 1

    await poll("the batch held", holding, 5, every=0.01)
    await appender.stop()
    with pytest.raises(ApiError) as e:
        await fut
    assert e.value.status == 503
    assert await redis.get(ks.receipt_key("ev1")) is None  # never sent
