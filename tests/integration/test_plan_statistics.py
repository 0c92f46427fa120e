"""A plan cached while ``resources`` was empty must not scan it once it holds 100,000
rows (shared/pg/statistics.py): the projector's previous-state lookup, prepared and run
on an empty table as a fresh installation does, then EXPLAINed on a full one."""

from __future__ import annotations

import asyncpg

from shared.pg import statistics
from shared.pg.projection import DELETE_SQL, PREV_SQL
from shared.pg.resources import ResourceStore

FILL_SQL = """
INSERT INTO resources (resource_type, group_key, resource_id, name, important_fields, data,
                       content_hash, version, created_at, updated_at, last_event_id)
SELECT 't', 'g', 'r' || i, NULL, '{}'::jsonb, '{}'::jsonb, 'h', 1, now(), now(), 'e'
FROM generate_series(1, $1::int) AS i
"""
KEYS = "('{t,t,t}', '{g,g,g}', '{r5,r77,r90000}')"


async def plan(conn: asyncpg.Connection, statement: str = "prev") -> str:
    rows = await conn.fetch(f"EXPLAIN EXECUTE {statement}{KEYS}")
    return "\n".join(r[0] for r in rows)


async def test_a_plan_cached_on_an_empty_table_is_replanned_once_it_grew(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE resources")  # empty, as after the migrations
        await conn.execute(f"PREPARE prev(text[], text[], text[]) AS {PREV_SQL}")
        try:
            for _ in range(7):  # past five runs PostgreSQL settles on a generic plan
                assert await conn.fetch(f"EXECUTE prev{KEYS}") == []
            await conn.execute(FILL_SQL, 100_000)
            await conn.execute("SELECT pg_stat_force_next_flush()")
            stale = await plan(conn)
            assert "Seq Scan on resources" in stale, stale  # the defect this guards against
            assert await statistics.refresh_if_grown(pool) == ["resources"]
            fresh = await plan(conn)
            assert "Index Scan" in fresh and "Seq Scan on resources" not in fresh, fresh
            assert len(await conn.fetch(f"EXECUTE prev{KEYS}")) == 3
            # in step now: nothing to do until the table doubles again
            assert await statistics.refresh_if_grown(pool) == []
        finally:
            await conn.execute("DEALLOCATE prev")


async def test_the_refresh_analyzes_the_key_columns_only(pool: asyncpg.Pool) -> None:
    """Statistics of the jsonb documents cost 10-13 times the keys' (statistics.py):
    the refresh leaves them to autovacuum, and still gives the planner the row count."""
    async with pool.acquire() as conn:
        # the statistics must be the refresh's alone: earlier tests' rows left autovacuum's
        # (of every column; TRUNCATE keeps them), and autovacuum would analyze these
        # 20,000 rows too at its next round
        await conn.execute("ALTER TABLE resources SET (autovacuum_enabled = false)")
        try:
            await conn.execute("DELETE FROM pg_statistic WHERE starelid = 'resources'::regclass")
            await conn.execute(FILL_SQL, 20_000)
            await conn.execute("SELECT pg_stat_force_next_flush()")
            assert await statistics.refresh_if_grown(pool) == ["resources"]
            cols = await conn.fetch(
                "SELECT attname FROM pg_stats WHERE tablename = 'resources' ORDER BY attname"
            )
            assert [r["attname"] for r in cols] == sorted(statistics.TABLES["resources"])
            sized = await conn.fetchval(
                "SELECT reltuples FROM pg_class WHERE relname = 'resources'"
            )
            assert sized == 20_000
        finally:
            await conn.execute("ALTER TABLE resources RESET (autovacuum_enabled)")


async def test_small_tables_are_left_to_autovacuum(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(FILL_SQL, statistics.MIN_ROWS - 1)
        await conn.execute("SELECT pg_stat_force_next_flush()")
    assert await statistics.refresh_if_grown(pool) == []


async def test_the_projector_probes_by_key_even_while_statistics_say_empty(
    pool: asyncpg.Pool,
) -> None:
    """The fresh installation's case, without waiting for any ANALYZE: inside the
    projector's transaction the lookup is prepared and cached while ``resources`` is
    empty (and analyzed so), the table then holds 100,000 rows, and the cached plan is
    still one index probe per key."""
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE resources")
    store = ResourceStore(pool)
    async with store.projection(0) as tx:
        conn = tx._conn
        await conn.execute(f"PREPARE prev(text[], text[], text[]) AS {PREV_SQL}")
        for _ in range(7):  # past five runs PostgreSQL settles on a generic plan
            assert await conn.fetch(f"EXECUTE prev{KEYS}") == []
        await conn.execute(FILL_SQL, 100_000)
        shown = await plan(conn)
        assert "Index Scan using resources_pkey" in shown, shown
        assert "Seq Scan on resources" not in shown, shown
        assert len(await conn.fetch(f"EXECUTE prev{KEYS}")) == 3
        await conn.execute("DEALLOCATE prev")


async def test_the_projector_deletes_by_key_even_while_statistics_say_empty(
    pool: asyncpg.Pool,
) -> None:
    """The same for the projector's delete of a batch's deleted resources: cached inside
    its transaction on an empty table, it still probes the primary key at 100,000 rows
    (the transaction's planner setting covers it; it is not written as a LATERAL)."""
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE resources")
    store = ResourceStore(pool)
    async with store.projection(0) as tx:
        conn = tx._conn
        await conn.execute(f"PREPARE del(text[], text[], text[]) AS {DELETE_SQL}")
        for _ in range(7):  # past five runs PostgreSQL settles on a generic plan
            assert await conn.execute(f"EXECUTE del{KEYS}") == "DELETE 0"
        await conn.execute(FILL_SQL, 100_000)
        shown = await plan(conn, "del")
        assert "Index Scan using resources_pkey" in shown, shown
        assert "Seq Scan on resources" not in shown, shown
        assert await conn.execute(f"EXECUTE del{KEYS}") == "DELETE 3"
        await conn.execute("DEALLOCATE del")
