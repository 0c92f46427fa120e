"""PostgreSQL access: pool with an orjson ``jsonb`` codec, and the migration runner.

Only migrations contain DDL; :func:`migrate` applies the numbered files in
``shared/migrations`` in order, each in its own transaction, recording them in
``schema_migrations``. An advisory lock makes concurrent runs safe.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from shared.errors import ConfigError, TransientError

log = logging.getLogger("ingestd.db")

_MIGRATION_LOCK = 0x1D6E57D
Pool = asyncpg.Pool


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


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection
        )
    except (OSError, asyncpg.PostgresError) as e:
        raise TransientError(f"cannot reach PostgreSQL: {e}") from e
    assert pool is not None
    return pool


def migration_files() -> list[tuple[int, str, str]]:
    out = []
    folder = Path(__file__).parent / "migrations"
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        number = int(name.split("_", 1)[0])
        out.append((number, name, entry.read_text()))
    return sorted(out)


async def require_migrated(pool: asyncpg.Pool | asyncpg.Connection) -> None:
    """Refuse to start a stage on a database this version has not migrated yet."""
    want = {number for number, _, _ in migration_files()}
    try:
        done = {r["version"] for r in await pool.fetch("SELECT version FROM schema_migrations")}
    except asyncpg.UndefinedTableError:
        done = set()
    missing = sorted(want - done)
    if missing:
        raise ConfigError(
            f"the database lacks migration(s) {missing} this version of ingestd needs: "
            "run `ingestd migrate` first"
        )


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; return the names applied now."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for number, name, sql in migration_files():
            if number in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name
                )
            applied_now.append(name)
            log.info("applied migration %s", name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await conn.close()
    return applied_now
