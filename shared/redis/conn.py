"""A pooled connection held for a stretch of work that writes the wire protocol itself."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ResponseError

_POOL_WANTS_COMMAND = (  # redis-py < 5.3 requires a command name here; 5.3 deprecates it
    inspect.signature(ConnectionPool.get_connection).parameters["command_name"].default
    is inspect.Parameter.empty
)


class HeldConnection:
    """One connection of the client's pool (so URL, auth, TLS and database stay the
    client's), kept for commands packed with :mod:`shared.redis.wire`. Any failure
    drops it: its replies may be out of step."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._conn: AbstractConnection | None = None

    async def get(self) -> AbstractConnection:
        if self._conn is None:
            pool = self.redis.connection_pool
            if _POOL_WANTS_COMMAND:
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

    async def read(self, replies: int, *, errors_as_values: bool = False) -> list[Any]:
        """Read ``replies`` replies. An error reply raises once all are read (the
        connection stays in step), or, with ``errors_as_values``, is returned in place."""
        conn = await self.get()
        out: list[Any] = []
        try:
            for _ in range(replies):
                try:
                    out.append(await conn.read_response(disable_decoding=True))
                except ResponseError as e:  # an error reply: the stream stays in step
                    out.append(e)
        except BaseException:
            await self.drop()
            raise
        if not errors_as_values:
            for r in out:
                if isinstance(r, Exception):
                    raise r
        return out

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
