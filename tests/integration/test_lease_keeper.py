"""A busy event loop never costs a process its leases: the keeper renews them from a thread."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from shared.config import Settings
from shared.redis.lease import Lease, LeaseKeeper


def _busy(seconds: float) -> None:
    """CPU work on the event loop's thread (a long validation, say): no await for a while."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1


async def test_leases_outlive_a_busy_loop_while_held_and_expire_once_dropped(
    redis: Redis, settings: Settings
) -> None:
    assert settings.redis_url
    keeper = LeaseKeeper(settings.redis_url, every_s=0.1)
    keeper.start()
    try:
        kept, other = Lease(redis, "kept", ttl_ms=400), Lease(redis, "unkept", ttl_ms=400)
        assert await kept.acquire() and await other.acquire()
        keeper.hold(kept, hold_s=30)
        _busy(1.2)  # three TTLs without the loop running
        assert await redis.get("kept") == kept.token.encode()
        assert await redis.get("unkept") is None  # the barrier: the TTL did run out
        keeper.drop(kept)
        assert keeper.held() == []
        assert await kept.refresh()
        _busy(1.0)
        assert await redis.get("kept") is None
    finally:
        keeper.stop()


async def test_a_holder_past_its_hold_time_loses_the_lease(
    redis: Redis, settings: Settings
) -> None:
    assert settings.redis_url
    keeper = LeaseKeeper(settings.redis_url, every_s=0.05)
    keeper.start()
    try:
        lease = Lease(redis, "stuck", ttl_ms=300)
        assert await lease.acquire()
        keeper.hold(lease, hold_s=0.2)
        _busy(1.0)
        assert keeper.held() == [] and await redis.get("stuck") is None
        other = Lease(redis, "taken", ttl_ms=5000)  # another holder's lease is never renewed
        assert await other.acquire()
        await redis.set("taken", "someone-else", px=300)
        keeper.hold(other, hold_s=30)
        _busy(0.8)
        assert keeper.held() == [] and await redis.get("taken") is None
    finally:
        keeper.stop()
