"""The live resources of one resource type, read for the compatibility check.

One read-only repeatable-read transaction (one snapshot of the table, whatever the
projector writes meanwhile) and a server-side cursor fetched in batches: memory holds
one batch at a time. Rows come by (groupKey, id), the primary key's order, so the first
refused resources a report lists are the same on every run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from shared.compat import LiveRow
from shared.pg.pool import Db, connection

LIVE_SQL = (
    "SELECT group_key, resource_id, data::text AS data FROM resources"
    " WHERE resource_type = $1 ORDER BY group_key, resource_id"
)
BATCH = 1000


class LiveResourceStore:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def scan(
        self,
        resource_type: str,
        consume: Callable[[list[LiveRow]], Awaitable[None]],
        batch: int = BATCH,
    ) -> None:
        """Hand every live resource of the type to ``consume``, ``batch`` rows at a time
        (the transaction ends with this call, whatever ``consume`` raises)."""
        async with (
            connection(self._db) as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            cursor = await conn.cursor(LIVE_SQL, resource_type)
            while rows := await cursor.fetch(batch):
                await consume([(r["group_key"], r["resource_id"], r["data"]) for r in rows])
