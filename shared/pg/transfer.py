"""Pull transfer sessions (seed 003's ``pull/transfer``): every statement on
``pull_transfers``, and the snapshot read of history they page through.

A session reads one (resource type, groupKey) scope: first its live resources as of the
session's start, then every change after that. The start is ``bound``, the feed's xmin
when the session was created (:mod:`shared.pg.feed`): the history rows with
``txid < bound`` are final, so the snapshot is each resource's latest version among them
whose op is not ``deleted``, paged by resource id (versions of a resource carry
increasing txids, so its latest version below the bound is its highest). It is read
from ``resource_changes`` rather than ``resources`` because ``resources`` moves on while
the pages are read and a page-by-page read of it is no snapshot; history below the
bound never changes, so every page (and every replay of one) reads the same state
without holding a transaction open between calls. The changes follow from the feed
position ``(bound - 1, LAST_ID)``: exactly the rows with ``txid >= bound``, in feed order.

Each call runs in one transaction holding the session row locked (two concurrent calls
of one session take turns). The row keeps where the last batch started (``from_*``) and
ended (``at_*``) and its request id: the same request id reads that range again, which
holds the same rows (all of it is below an xmin read before), so a client that lost an
answer gets it again; a new request id reads on from ``at_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from shared import feed
from shared.feed import Position
from shared.pg.feed import FeedChange, FeedStore
from shared.pg.pool import Db, connection

SNAPSHOT = "snapshot"
CHANGES = "changes"

LOCK_SQL = "SELECT * FROM pull_transfers WHERE integration_id = $1 AND session_id = $2 FOR UPDATE"
CREATE_SQL = """
INSERT INTO pull_transfers (integration_id, session_id, resource_type, group_key, bound,
                            from_phase, at_phase)
VALUES ($1, $2, $3, $4, pg_snapshot_xmin(pg_current_snapshot()), 'snapshot', 'snapshot')
ON CONFLICT (integration_id, session_id) DO NOTHING
"""
ADVANCE_SQL = """
UPDATE pull_transfers SET
  from_phase = at_phase, from_key = at_key, from_txid = at_txid, from_id = at_id,
  at_phase = $3, at_key = $4, at_txid = $5, at_id = $6,
  last_request_id = $7, last_has_more = $8, batches = batches + 1, updated_at = now()
WHERE integration_id = $1 AND session_id = $2
"""
_SNAPSHOT_COLS = """
SELECT resource_id, version, op, after FROM (
  SELECT DISTINCT ON (resource_id) resource_id, version, op, after
  FROM resource_changes
  WHERE resource_type = $1 AND group_key = $2 AND txid < $3::xid8 AND resource_id > $4
"""
#: live resources as of the bound after resource id $4 ('' : from the first)
SNAPSHOT_SQL = f"""{_SNAPSHOT_COLS}
  ORDER BY resource_id, version DESC
) s WHERE op <> 'deleted' ORDER BY resource_id LIMIT $5
"""
#: the same up to resource id $6 (a replay)
SNAPSHOT_UPTO_SQL = f"""{_SNAPSHOT_COLS} AND resource_id <= $6
  ORDER BY resource_id, version DESC
) s WHERE op <> 'deleted' ORDER BY resource_id LIMIT $5
"""


@dataclass(frozen=True, slots=True)
class At:
    """A place in a session: in the snapshot after resource id ``key`` ('' : before the
    first), or in the changes after feed position ``pos``."""

    phase: str
    key: str = ""
    pos: Position = feed.START


@dataclass(frozen=True, slots=True)
class TransferItem:
    resource_id: str
    op: str  # "snapshot" in the snapshot phase; the change's op after it
    version: int
    data: dict[str, Any] | None  # stored form; None for a delete


@dataclass(frozen=True, slots=True)
class Batch:
    items: list[TransferItem]
    has_more: bool
    replayed: bool


class ScopeMismatch(Exception):
    """The session exists for another (resource type, groupKey)."""

    def __init__(self, resource_type: str, group_key: str) -> None:
        super().__init__(resource_type, group_key)
        self.resource_type = resource_type
        self.group_key = group_key


def _at(r: asyncpg.Record, side: str) -> At:
    return At(r[f"{side}_phase"], r[f"{side}_key"] or "", (r[f"{side}_txid"], r[f"{side}_id"]))


class TransferStore:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def next_batch(
        self,
        integration_id: str,
        session_id: str,
        resource_type: str,
        group_key: str,
        limit: int,
        request_id: str | None,
    ) -> Batch:
        """The session's next batch (created at its first call), or the last one again
        when ``request_id`` repeats the last call's. :class:`ScopeMismatch` when the
        session reads another scope."""
        async with connection(self._db) as conn, conn.transaction():
            row = await conn.fetchrow(LOCK_SQL, integration_id, session_id)
            if row is None:
                await conn.execute(CREATE_SQL, integration_id, session_id, resource_type, group_key)
                row = await conn.fetchrow(LOCK_SQL, integration_id, session_id)
                assert row is not None
            if (row["resource_type"], row["group_key"]) != (resource_type, group_key):
                raise ScopeMismatch(row["resource_type"], row["group_key"])
            reader = _Reader(conn, resource_type, group_key, row["bound"])
            if request_id is not None and request_id == row["last_request_id"]:
                items = await reader.between(_at(row, "from"), _at(row, "at"))
                return Batch(items, row["last_has_more"], replayed=True)
            items, end, more = await reader.after(_at(row, "at"), limit)
            await conn.execute(
                ADVANCE_SQL, integration_id, session_id, end.phase, end.key or None,
                end.pos[0], end.pos[1], request_id, more,
            )  # fmt: skip
            return Batch(items, more, replayed=False)


class _Reader:
    """Reads of one session's scope inside its transaction."""

    def __init__(self, conn: asyncpg.Connection, rt: str, gk: str, bound: int) -> None:
        self._conn = conn
        self._rt = rt
        self._gk = gk
        self._bound = bound
        self._feed = FeedStore(conn)
        #: the changes start right after the snapshot: every row with txid >= bound
        self.changes_start = At(CHANGES, pos=(max(bound - 1, 0), feed.LAST_ID))

    async def _snapshot(self, after: str, limit: int, upto: str | None) -> list[TransferItem]:
        if upto is None:
            rows = await self._conn.fetch(
                SNAPSHOT_SQL, self._rt, self._gk, self._bound, after, limit
            )
        else:
            rows = await self._conn.fetch(
                SNAPSHOT_UPTO_SQL, self._rt, self._gk, self._bound, after, limit, upto
            )
        return [TransferItem(r["resource_id"], SNAPSHOT, r["version"], r["after"]) for r in rows]

    async def _changes(
        self, start: Position, limit: int, upto: Position | None = None
    ) -> tuple[list[FeedChange], Position]:
        return await self._feed.read_at(start, limit, [self._rt], self._gk, upto=upto)

    async def after(self, at: At, limit: int) -> tuple[list[TransferItem], At, bool]:
        """Up to ``limit`` items after ``at``, where they end, and whether more follow now."""
        if at.phase == SNAPSHOT:
            items = await self._snapshot(at.key, limit + 1, None)
            if len(items) > limit:
                return items[:limit], At(SNAPSHOT, items[limit - 1].resource_id), True
            more, _ = await self._changes(self.changes_start.pos, 1)
            return items, self.changes_start, bool(more)
        got, end = await self._changes(at.pos, limit + 1)
        if len(got) > limit:
            got, end = got[:limit], got[limit - 1].position
            return _items(got), At(CHANGES, pos=end), True
        return _items(got), At(CHANGES, pos=end), False

    async def between(self, start: At, end: At) -> list[TransferItem]:
        """The items after ``start`` up to ``end`` again (a replay of one batch)."""
        if start.phase == SNAPSHOT:
            upto = end.key if end.phase == SNAPSHOT else None
            return await self._snapshot(start.key, MAX_BATCH + 1, upto)
        if start == end:
            return []
        got, _ = await self._changes(start.pos, MAX_BATCH + 1, upto=end.pos)
        return _items(got)


def _items(changes: list[FeedChange]) -> list[TransferItem]:
    return [TransferItem(c.resource_id, c.op, c.version, c.after) for c in changes]


#: the largest batch a call may ask for (a replay reads at most this many)
MAX_BATCH = 1000
