"""INGESTD_READ_LINGER_MS: after a read that did not fill its batch, the next read of the
partition waits, so under live traffic one cycle carries what arrived meanwhile; a full
batch (a backlog) is followed by the next read at once."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from shared.redis.consumer import GroupReader, ack
from shared.redis.lease import Lease

STREAM = "linger-test:stream"


async def _reader(redis: Redis, count: int, linger_s: float) -> GroupReader:
    lease = Lease(redis, "linger-test:lease")
    assert await lease.acquire()
    return GroupReader(redis, STREAM, "g", "c", lease, count, linger_s)


async def _batches(reader: GroupReader, total: int, started: asyncio.Event) -> list[int]:
    sizes: list[int] = []
    async for rows in reader.batches(until=time.monotonic() + 30):
        sizes.append(len(rows))
        await ack(reader.redis, STREAM, "g", [sid for sid, _ in rows])  # as a consumer does
        started.set()
        if sum(sizes) >= total:
            break
    return sizes


async def _trickle(redis: Redis, started: asyncio.Event) -> None:
    """Once the first batch is in hand: five entries, 20 ms apart."""
    await started.wait()
    for i in range(5):
        await redis.xadd(STREAM, {"n": str(i)})
        await asyncio.sleep(0.02)


async def _trickled_batches(redis: Redis, linger_s: float) -> list[int]:
    """The batch sizes a reader sees of one entry, then five trickling in."""
    reader = await _reader(redis, count=100, linger_s=linger_s)
    await redis.xadd(STREAM, {"n": "first"})
    started = asyncio.Event()
    trickle = asyncio.create_task(_trickle(redis, started))
    sizes = await _batches(reader, 6, started)
    await trickle
    return sizes


async def test_a_short_read_lingers_and_the_next_batch_carries_what_arrived(redis: Redis) -> None:
    sizes = await _trickled_batches(redis, linger_s=0.5)
    assert sizes == [1, 5]


async def test_without_linger_each_arrival_is_its_own_batch(redis: Redis) -> None:
    sizes = await _trickled_batches(redis, linger_s=0.0)
    assert len(sizes) >= 4  # the read returns as soon as an entry is there


async def test_a_full_batch_is_followed_by_the_next_read_at_once(redis: Redis) -> None:
    reader = await _reader(redis, count=3, linger_s=5.0)
    for i in range(7):
        await redis.xadd(STREAM, {"n": str(i)})
    t0 = time.monotonic()
    sizes = await _batches(reader, 6, asyncio.Event())
    assert sizes == [3, 3]
    assert time.monotonic() - t0 < 2.5  # no 5 s linger after the first, full, batch
