"""The planner's statistics of the tables the pipeline grows, kept in step with them.

asyncpg prepares every statement and PostgreSQL caches a generic plan for it after five
executions. A plan cached while ``resources`` was empty (a fresh database) joins the
projector's key array against a sequential scan of the whole table, and it stays cached
while the table grows to millions of rows: autovacuum's analyze comes only after 10 %
of the table changed and a naptime, too late for a new installation's first sync.

ANALYZE invalidates every backend's cached plans of the table, so they are planned
again with the real size. :func:`refresh_if_grown` analyzes a table once it holds more
than twice the rows its statistics say (and at least :data:`MIN_ROWS`): a handful of
ANALYZE runs over a table's life (1k, 2k, 4k … rows), each one sampling at most 30,000
rows. The projector calls it every few seconds; of several callers at once, one runs it.

It analyzes only the columns those statements look rows up by (:data:`TABLES`); the
row count the planner sizes a table by is updated whatever the columns. The whole
table's statistics (its jsonb documents sorted and compared to find common values) cost
10-13 times more: 508 and 778 ms for ``resources`` and ``resource_changes`` at 25,000
rows, against 46 and 59 ms, and they were 41 % of PostgreSQL's CPU in a 10 s live bench
run from a fresh database. The other columns are autovacuum's, as on any table.
"""

from __future__ import annotations

from shared.pg.pool import Db, connection

#: the tables whose growth the pipeline's hot statements join against, and the columns
#: they join on (their keys)
TABLES = {
    "resources": ("resource_type", "group_key", "resource_id"),
    "resource_changes": ("resource_type", "group_key", "resource_id", "version", "txid"),
    "integration_data": ("resource_type", "group_key", "resource_id", "vendor_id"),
}
MIN_ROWS = 1000
#: one analyzer at a time, whatever number of projector processes call
LOCK_KEY = 0x1D57_0A7A

GROWN_SQL = """
SELECT s.relname
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND s.relname = ANY($1::text[])
  AND s.n_live_tup >= $2 AND s.n_live_tup > 2 * greatest(c.reltuples, 0)
ORDER BY s.relname
"""
TRY_LOCK_SQL = "SELECT pg_try_advisory_xact_lock($1)"


async def refresh_if_grown(db: Db) -> list[str]:
    """ANALYZE the tables of :data:`TABLES` that outgrew their statistics; their names
    (none when another caller holds the turn)."""
    async with connection(db) as conn, conn.transaction():
        grown = [r["relname"] for r in await conn.fetch(GROWN_SQL, list(TABLES), MIN_ROWS)]
        if not grown or not await conn.fetchval(TRY_LOCK_SQL, LOCK_KEY):
            return []
        for name in grown:  # names from TABLES only: never a caller's text
            await conn.execute(f"ANALYZE {name} ({', '.join(TABLES[name])})")
        return grown
