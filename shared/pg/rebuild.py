"""Rebuilding ``resources`` from ``resource_changes``: every statement of ``ingestd rebuild``.

The fold: per resource, its latest history row; a resource whose latest row is a delete
is absent (as the projector leaves it). That row holds every column ``resources`` has
(``after`` is the data, with local fields merged, as the projector stored it; name,
important fields and content hash since migration 0011, which filled them in for the
latest version of every live resource). ``created_at`` is the ``applied_at`` of the
latest ``created`` row, ``updated_at`` that of the latest row: the times the projector
gives ``resources`` (the batch's time, since migration 0011). A resource whose latest
row predates 0011 without a content hash cannot be rebuilt: it is folded with the hash
``''`` (no real hash is empty), counted as ``unverifiable`` and left as stored.

The fold goes into the scratch table ``resources_rebuild`` inside the run's transaction;
the comparison is row by row on the state columns (timestamps are not compared: rows
written before migration 0011 took theirs from the database clock). A verify runs in one
repeatable-read snapshot and rolls back. A rebuild takes ``projector_positions`` in
EXCLUSIVE mode first: every projector transaction begins by writing its partition's row
there (:data:`shared.pg.projection.POSITION_ROWS_SQL`), so projection waits (it loses nothing:
its changes stay in the stream until it commits), and the rebuild waits for batches in
flight to commit before it reads history. Readers are not blocked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from shared.pg.pool import connection

PAUSE_PROJECTION_SQL = "LOCK TABLE projector_positions IN EXCLUSIVE MODE"
CLEAR_SQL = "TRUNCATE resources_rebuild"
COUNT_CHANGES_SQL = (
    "SELECT count(*) FROM resource_changes WHERE ($1::text IS NULL OR resource_type = $1)"
)
FOLD_SQL = """
INSERT INTO resources_rebuild (resource_type, group_key, resource_id, name, important_fields,
                               data, content_hash, version, created_at, updated_at,
                               last_event_id)
SELECT resource_type, group_key, resource_id, name, COALESCE(important_fields, '{}'), after,
       COALESCE(content_hash, ''), version, COALESCE(created_at, applied_at), applied_at,
       event_id
FROM (
    SELECT DISTINCT ON (resource_type, group_key, resource_id) *,
           max(applied_at) FILTER (WHERE op = 'created')
               OVER (PARTITION BY resource_type, group_key, resource_id) AS created_at
    FROM resource_changes
    WHERE ($1::text IS NULL OR resource_type = $1)
    ORDER BY resource_type, group_key, resource_id, version DESC
) latest
WHERE op <> 'deleted'
"""
# every difference: 'missing' (history has it, resources not), 'extra' (the reverse),
# 'different' (a state column differs); unverifiable folds (hash '') are left out
DIFF_CTE = """
WITH r AS (SELECT * FROM resources WHERE ($1::text IS NULL OR resource_type = $1)),
d AS (
    SELECT COALESCE(b.resource_type, r.resource_type) AS resource_type,
           COALESCE(b.group_key, r.group_key) AS group_key,
           COALESCE(b.resource_id, r.resource_id) AS resource_id,
           CASE WHEN r.resource_id IS NULL THEN 'missing'
                WHEN b.resource_id IS NULL THEN 'extra' ELSE 'different' END AS kind
    FROM resources_rebuild b
    FULL JOIN r ON r.resource_type = b.resource_type AND r.group_key = b.group_key
               AND r.resource_id = b.resource_id
    WHERE b.resource_id IS NULL OR r.resource_id IS NULL
       OR (b.content_hash <> '' AND (
           b.name IS DISTINCT FROM r.name OR b.important_fields <> r.important_fields
           OR b.data <> r.data OR b.content_hash <> r.content_hash
           OR b.version <> r.version OR b.last_event_id <> r.last_event_id))
)
"""
DIFF_COUNTS_SQL = DIFF_CTE + "SELECT kind, count(*) AS n FROM d GROUP BY kind"
DIFF_FIRST_SQL = (
    DIFF_CTE + "SELECT kind, resource_type, group_key, resource_id FROM ("
    " SELECT *, row_number() OVER (PARTITION BY kind"
    " ORDER BY resource_type, group_key, resource_id) AS n FROM d) x"
    " WHERE n <= $2 ORDER BY kind, resource_type, group_key, resource_id"
)
UNVERIFIABLE_SQL = "SELECT count(*) FROM resources_rebuild WHERE content_hash = ''"
FOLDED_SQL = "SELECT count(*) FROM resources_rebuild"
SWAP_DELETE_SQL = """
DELETE FROM resources r
WHERE ($1::text IS NULL OR r.resource_type = $1) AND NOT EXISTS (
    SELECT 1 FROM resources_rebuild b WHERE b.resource_type = r.resource_type
    AND b.group_key = r.group_key AND b.resource_id = r.resource_id)
"""
SWAP_UPSERT_SQL = """
INSERT INTO resources AS r (resource_type, group_key, resource_id, name, important_fields,
                            data, content_hash, version, created_at, updated_at,
                            last_event_id)
SELECT b.resource_type, b.group_key, b.resource_id, b.name, b.important_fields, b.data,
       b.content_hash, b.version, b.created_at, b.updated_at, b.last_event_id
FROM resources_rebuild b WHERE b.content_hash <> ''
ON CONFLICT (resource_type, group_key, resource_id) DO UPDATE SET
  name = EXCLUDED.name, important_fields = EXCLUDED.important_fields, data = EXCLUDED.data,
  content_hash = EXCLUDED.content_hash, version = EXCLUDED.version,
  created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
  last_event_id = EXCLUDED.last_event_id
WHERE r.name IS DISTINCT FROM EXCLUDED.name OR r.important_fields <> EXCLUDED.important_fields
   OR r.data <> EXCLUDED.data OR r.content_hash <> EXCLUDED.content_hash
   OR r.version <> EXCLUDED.version OR r.last_event_id <> EXCLUDED.last_event_id
"""


@dataclass(slots=True)
class Differences:
    """What the comparison found: counts per kind and the first ids of each."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class RebuildRun:
    """One run's transaction (see :meth:`RebuildStore.run`)."""

    def __init__(self, conn: asyncpg.Connection, resource_type: str | None) -> None:
        self._conn = conn
        self.resource_type = resource_type

    async def changes(self) -> int:
        """How many history rows the fold reads."""
        return int(await self._conn.fetchval(COUNT_CHANGES_SQL, self.resource_type))

    async def fold(self) -> tuple[int, int]:
        """Fold history into the scratch table: (resources folded, unverifiable ones)."""
        await self._conn.execute(CLEAR_SQL)
        await self._conn.execute(FOLD_SQL, self.resource_type)
        folded = await self._conn.fetchval(FOLDED_SQL)
        return int(folded), int(await self._conn.fetchval(UNVERIFIABLE_SQL))

    async def compare(self, show: int) -> Differences:
        out = Differences()
        for r in await self._conn.fetch(DIFF_COUNTS_SQL, self.resource_type):
            out.counts[r["kind"]] = r["n"]
        if out.counts:
            for r in await self._conn.fetch(DIFF_FIRST_SQL, self.resource_type, show):
                key = (r["resource_type"], r["group_key"], r["resource_id"])
                out.first.setdefault(r["kind"], []).append(key)
        return out

    async def swap(self) -> tuple[int, int]:
        """Put the folded rows in place of those that differ: (deleted, written)."""
        deleted = await self._conn.execute(SWAP_DELETE_SQL, self.resource_type)
        written = await self._conn.execute(SWAP_UPSERT_SQL)
        await self._conn.execute(CLEAR_SQL)
        return int(deleted.split()[-1]), int(written.split()[-1])


class RebuildStore:
    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db

    @asynccontextmanager
    async def run(self, resource_type: str | None, verify: bool) -> AsyncIterator[RebuildRun]:
        """A verify: one repeatable-read snapshot, rolled back at the end. A rebuild:
        projection paused (see the module doc), committed when the block ends."""
        async with connection(self._db) as conn:
            tx = conn.transaction(isolation="repeatable_read" if verify else "read_committed")
            await tx.start()
            try:
                if not verify:
                    await conn.execute(PAUSE_PROJECTION_SQL)
                yield RebuildRun(conn, resource_type)
            except BaseException:
                await tx.rollback()
                raise
            if verify:
                await tx.rollback()
            else:
                await tx.commit()
