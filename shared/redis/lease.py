"""Partition leases: SET NX PX with a random token, refreshed and released only by its holder.

A lease makes one consumer at a time the drainer (worker) or applier (projector)
of a partition. Every write a holder makes under it goes through
:class:`shared.redis.txn.GuardedTransaction` or :meth:`Lease.hset_if_held`, so a
holder that lost its lease can never overwrite newer state.
"""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from shared.redis.scripts import Script

REFRESH = Script(
    "lease-refresh",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""",
)
RELEASE = Script(
    "lease-release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""",
)
GUARDED_HSET = Script(
    "lease-guarded-hset",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
""",
)

DEFAULT_TTL_MS = 10_000


class LostLease(Exception):
    """This holder's lease expired or was taken over: stop, write nothing more."""


class Lease:
    def __init__(self, redis: Redis, key: str, ttl_ms: int = DEFAULT_TTL_MS) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = uuid.uuid4().hex

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def refresh(self, ttl_ms: int | None = None) -> bool:
        """Extend the lease (by ``ttl_ms``, default its own TTL) while it is held."""
        ttl = self.ttl_ms if ttl_ms is None else ttl_ms
        return bool(await REFRESH.run(self.redis, [self.key], self.token, ttl))

    async def keep(self, ttl_ms: int | None = None) -> None:
        """:meth:`refresh`, raising :class:`LostLease` when the lease is gone."""
        if not await self.refresh(ttl_ms):
            raise LostLease(self.key)

    async def release(self) -> None:
        await RELEASE.run(self.redis, [self.key], self.token)

    async def hset_if_held(self, key: str, mapping: dict[str, str]) -> bool:
        """HSET ``mapping`` into ``key`` and refresh the lease, atomically, only while this
        lease is held."""
        args: list[str | int] = [self.token, self.ttl_ms]
        for field, value in mapping.items():
            args += [field, value]
        return bool(await GUARDED_HSET.run(self.redis, [self.key, key], *args))
