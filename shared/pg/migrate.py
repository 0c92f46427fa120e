"""The migration runner: numbered SQL files in ``shared/pg/migrations``, applied in order.

Only migrations contain DDL, ``schema_migrations`` itself included (``0000``). Each
file runs in its own transaction together with the row recording it; an advisory
lock makes concurrent runs safe.
"""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

from shared.errors import ConfigError, TransientError

log = logging.getLogger("ingestd.db")

_MIGRATION_LOCK = 0x1D6E57D
APPLIED_SQL = "SELECT version FROM schema_migrations"
RECORD_SQL = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"


def migration_files() -> list[tuple[int, str, str]]:
    """(number, file name, SQL) of every migration, in order."""
    out = []
    folder = Path(__file__).parent / "migrations"
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        number = int(name.split("_", 1)[0])
        out.append((number, name, entry.read_text()))
    return sorted(out)


async def _applied(db: asyncpg.Pool | asyncpg.Connection) -> set[int]:
    """Versions recorded so far; none when ``schema_migrations`` does not exist yet."""
    try:
        return {r["version"] for r in await db.fetch(APPLIED_SQL)}
    except asyncpg.UndefinedTableError:
        return set()


async def require_migrated(db: asyncpg.Pool | asyncpg.Connection) -> None:
    """Refuse to start a stage on a database this version has not migrated yet."""
    want = {number for number, _, _ in migration_files()}
    missing = sorted(want - await _applied(db))
    if missing:
        raise ConfigError(
            f"the database lacks migration(s) {missing} this version of ingestd needs: "
            "run `ingestd migrate` first"
        )


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; return the names applied now."""
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as e:  # unreachable, refused, unknown database
        raise TransientError(f"cannot reach PostgreSQL: {e}") from e
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        done = await _applied(conn)
        for number, name, sql in migration_files():
            if number in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(RECORD_SQL, number, name)
            applied_now.append(name)
            log.info("applied migration %s", name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await conn.close()
    return applied_now
