"""Stream plumbing both consumers use: groups, claiming pending entries, leases.

A lease (SET NX PX with a random token; refreshed and released only by its
holder) makes one consumer at a time the drainer of a partition.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import uuid
from collections.abc import Awaitable
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ResponseError

_REFRESH = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_GUARDED_HSET = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('pexpire', KEYS[1], ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('hset', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Lease:
    def __init__(self, redis: Redis, key: str, ttl_ms: int = 10_000) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = uuid.uuid4().hex

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def _eval(self, script: str, keys: list[str], args: list[str]) -> Any:
        # redis-py types commands as "Awaitable[T] | T" (sync and async share stubs)
        return await cast(Awaitable[Any], self.redis.eval(script, len(keys), *keys, *args))

    async def refresh(self) -> bool:
        return bool(await self._eval(_REFRESH, [self.key], [self.token, str(self.ttl_ms)]))

    async def release(self) -> None:
        await self._eval(_RELEASE, [self.key], [self.token])

    async def hset_if_held(self, key: str, mapping: dict[str, str]) -> bool:
        """HSET ``mapping`` into ``key`` and refresh the lease, atomically, only while this
        lease is held: a holder that lost its lease can never overwrite newer state."""
        args = [self.token, str(self.ttl_ms)]
        for field, value in mapping.items():
            args += [field, value]
        return bool(await self._eval(_GUARDED_HSET, [self.key, key], args))


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


async def claim_pending(redis: Redis, stream: str, group: str, consumer: str) -> None:
    """Move every pending entry of the group to ``consumer`` (the caller holds the lease),
    so entries delivered to a consumer that died are re-read, in stream order."""
    start: str | bytes = "0-0"
    while True:
        res = await redis.xautoclaim(stream, group, consumer, 0, start, count=1000)
        start = res[0]
        if start in (b"0-0", "0-0"):
            return


def consumer_name() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"


_POOL_WANTS_COMMAND = (
    inspect.signature(ConnectionPool.get_connection).parameters["command_name"].default
    is inspect.Parameter.empty
)


async def run_script(redis: Redis, source: str, keys: list[str], *args: Any) -> Any:
    """EVAL with typed arguments (redis-py's stubs want str for every ARGV)."""
    return await redis.eval(source, len(keys), *keys, *args)  # type: ignore[misc]


class HeldConnection:
    """One pooled connection kept for a stretch of work that writes RESP itself
    (:mod:`shared.resp`). Any failure drops it: replies may be out of step."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._conn: AbstractConnection | None = None

    async def get(self) -> AbstractConnection:
        if self._conn is None:
            pool = self.redis.connection_pool
            if _POOL_WANTS_COMMAND:  # redis-py < 5.3
                self._conn = await pool.get_connection("MULTI")
            else:
                self._conn = await pool.get_connection()
        return self._conn

    async def exchange(self, payload: bytes, replies: int) -> list[Any]:
        """Send packed commands and read their replies; an error reply raises."""
        await self.send(payload)
        return await self.read(replies)

    async def send(self, payload: bytes) -> None:
        """Send packed commands; read their replies later with :meth:`read`, in order."""
        conn = await self.get()
        try:
            await conn.send_packed_command(payload, check_health=False)
        except BaseException:
            await self.drop()
            raise

    async def read(self, replies: int) -> list[Any]:
        conn = await self.get()
        try:
            return [await conn.read_response() for _ in range(replies)]
        except BaseException:
            await self.drop()
            raise

    async def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()
            with contextlib.suppress(Exception):
                await self.redis.connection_pool.release(conn)

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.redis.connection_pool.release(conn)
