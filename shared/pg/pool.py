"""The asyncpg pool every stage opens: orjson codecs for ``jsonb`` and ``json``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
import orjson

from shared.errors import TransientError
from shared.outage import Outages

Pool = asyncpg.Pool
#: what a store runs on: a pool, or one connection (a test's, or a caller's transaction)
Db: TypeAlias = "asyncpg.Pool | asyncpg.Connection"


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    # binary format: works for parameters, results and binary COPY alike
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        encoder=orjson.dumps,
        decoder=orjson.loads,
        schema="pg_catalog",
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond what asyncpg always does (roll back an
    open transaction, drop listener callbacks). asyncpg's default adds one more round
    trip per release (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``),
    which a pooled connection here never needs: every statement's locks and settings are
    transaction-scoped (``pg_advisory_xact_lock``, ``SET LOCAL``), no cursor outlives its
    transaction, and LISTEN runs on a dedicated connection, never a pooled one. The one
    session-level advisory lock (migrations, shared/pg/migrate.py) is taken on a
    connection of its own, outside any pool."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection,
            reset=_keep_session,
        )  # fmt: skip
    except (OSError, asyncpg.PostgresError) as e:
        raise TransientError(f"cannot reach PostgreSQL: {e}") from e
    assert pool is not None
    return pool


async def pool_when_reachable(dsn: str, size: int, log: logging.Logger) -> asyncpg.Pool:
    """A stage started before its database waits for it (one line), as it rides out an
    outage later."""
    outages = Outages(log)
    while True:
        try:
            pool = await create_pool(dsn, max_size=size)
        except TransientError as e:
            outages.failed(e)
            await asyncio.sleep(1)
            continue
        outages.all_answered()
        return pool


CONNECT_TIMEOUT_S = 2.0
#: how long a stopping stage waits for its pool's connections to be given back
CLOSE_TIMEOUT_S = 5.0


async def close_pool(pool: asyncpg.Pool, log: logging.Logger) -> None:
    """Close ``pool`` gracefully, but never wait forever: ``Pool.close()`` waits for every
    checked-out connection to be released, and a task stuck on one (a cut network, a
    hung server, a handler never cancelled) would keep the stage from ever stopping.
    After ``CLOSE_TIMEOUT_S`` the connections are terminated (their open transactions
    roll back on the server, which is what a crash would do: no state is half-applied)."""
    try:
        await asyncio.wait_for(asyncio.shield(pool.close()), CLOSE_TIMEOUT_S)
    except TimeoutError:
        log.warning(
            "PostgreSQL pool: connections still in use after %.0f s; terminated",
            CLOSE_TIMEOUT_S,
        )
        pool.terminate()


async def reachable(dsn: str) -> None:
    """Connect once and close; :class:`TransientError` when PostgreSQL does not answer."""
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        raise TransientError(f"cannot reach PostgreSQL: {e}") from e
    await conn.close()


async def ping(db: Db) -> None:
    """One round trip: raises whatever the driver raises when PostgreSQL does not answer."""
    await db.fetchval("SELECT 1")


@asynccontextmanager
async def connection(db: Db) -> AsyncIterator[asyncpg.Connection]:
    """One connection of ``db`` for the block: acquired from a pool, or ``db`` itself."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db
