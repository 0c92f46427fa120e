"""Repair: every statement on ``rejected_bodies`` and the replay bookkeeping of
``ingest_events`` (its ``replay_of`` / ``replay_item``).

The projector writes ``rejected_bodies`` (in its batch transaction, with the receipt:
:class:`shared.pg.projection.Projection`); this store reads them for a replay and purges
them after the retention period, in bounded batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.pg.pool import Db

EVENT_SQL = """
SELECT event_id, integration_id, table_name, resource_type, group_key, kind, status,
       event, actor
FROM ingest_events WHERE event_id = $1
"""
BODIES_SQL = (
    "SELECT item_index, resource_id, body FROM rejected_bodies WHERE event_id = $1"
    " ORDER BY item_index NULLS FIRST, id"
)
# items (NULL: the event itself) of ``event_id`` a replay of which was applied
REPLAYED_SQL = (
    "SELECT DISTINCT replay_item FROM ingest_events WHERE replay_of = $1 AND status = 'applied'"
)
MATCHING_SQL = """
SELECT s.event_id FROM sync_issues s
WHERE s.table_name = $1 AND ($2::text IS NULL OR s.code = $2)
  AND ($3::timestamptz IS NULL OR s.created_at >= $3)
  AND ($4::timestamptz IS NULL OR s.created_at < $4)
  AND EXISTS (SELECT 1 FROM rejected_bodies b WHERE b.event_id = s.event_id)
GROUP BY s.event_id ORDER BY min(s.id) LIMIT $5
"""
PURGE_SQL = """
DELETE FROM rejected_bodies WHERE id IN (
    SELECT id FROM rejected_bodies WHERE created_at < now() - make_interval(days => $1)
    ORDER BY id LIMIT $2)
"""


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """A processed event as a replay needs it: where it went, and what it was."""

    event_id: str
    integration_id: str | None
    table: str
    resource_type: str
    group_key: str
    kind: str
    status: str
    event: str | None
    actor: Any


@dataclass(frozen=True, slots=True)
class RejectedBody:
    index: int | None  # None: the body of a single event; else a bulk item's index
    resource_id: str | None
    body: bytes


class RepairStore:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def event(self, event_id: str) -> RejectedEvent | None:
        r = await self._db.fetchrow(EVENT_SQL, event_id)
        if r is None:
            return None
        integration = None if r["integration_id"] is None else str(r["integration_id"])
        return RejectedEvent(
            r["event_id"], integration, r["table_name"], r["resource_type"], r["group_key"],
            r["kind"], r["status"], r["event"], r["actor"],
        )  # fmt: skip

    async def bodies(self, event_id: str) -> list[RejectedBody]:
        """The kept bodies of the event's rejection (none once purged)."""
        rows = await self._db.fetch(BODIES_SQL, event_id)
        return [RejectedBody(r["item_index"], r["resource_id"], bytes(r["body"])) for r in rows]

    async def replayed(self, event_id: str) -> set[int | None]:
        """The items (None: the event itself) of ``event_id`` replayed successfully."""
        return {r["replay_item"] for r in await self._db.fetch(REPLAYED_SQL, event_id)}

    async def matching(
        self,
        table: str,
        code: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
    ) -> list[str]:
        """Events of ``table`` with a sync issue matching the filters and a kept body,
        oldest first."""
        rows = await self._db.fetch(MATCHING_SQL, table, code, since, until, limit)
        return [r["event_id"] for r in rows]

    async def purge(self, retention_days: int, batch: int = 5000) -> int:
        """Delete bodies older than ``retention_days``, ``batch`` rows per statement (no
        long lock, no huge transaction); how many went."""
        total = 0
        while True:
            status = await self._db.execute(PURGE_SQL, retention_days, batch)
            n = int(status.split()[-1])
            total += n
            if n < batch:
                return total
