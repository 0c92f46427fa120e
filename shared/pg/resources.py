"""Resource state and history: every statement on ``resources``, ``resource_changes``,
``ingest_events``, ``sync_issues`` and ``projector_positions``.

- The projector writes through :meth:`ResourceStore.projection`: ONE transaction per
  batch that locks the partition's position row, reads the previous state of the
  resources the batch touches, writes (delete, upsert, three binary COPYs) and records
  the new position, all or nothing. That recorded position is what makes the effect
  exactly-once.
- The read API lists (keyset pagination on the resource id), gets, reads history and
  sync issues; the ingest API reads receipts.
- The worker rebuilds its write model of a scope from one repeatable-read snapshot
  (:meth:`ResourceStore.scope_rows`) once the projector's position
  (:meth:`ResourceStore.position`) has caught up.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from shared.pg.feed import NOTIFY_SQL
from shared.pg.pool import Db, connection
from shared.projection import BatchRows, Key

# ---- the projector's batch ----------------------------------------------------------

#: each partition's transaction-level advisory lock, taken (in ascending partition order,
#: so two batches never wait on each other in a cycle) before the transaction has an
#: xid, then their position rows: one round trip (the simple protocol; every value is an
#: int). The lock orders the xids of one partition's batches by commit (shared.pg.feed,
#: step 3).
POSITION_LOCK_STEP_SQL = "SELECT pg_advisory_xact_lock({lock_class}, {p});"
#: first in the same script: every statement of the projector's transaction reaches rows
#: by key, so the planner is told not to scan (statistics lag a table that grows fast)
POSITION_PLANNER_SQL = "SET LOCAL enable_seqscan = off;"
POSITION_ROWS_SQL = (
    "INSERT INTO projector_positions (partition, stream_ms, stream_seq) VALUES {rows}"
    " ON CONFLICT (partition) DO NOTHING"
)
#: the advisory lock class of projector partitions (the migrations' lock is one number)
PARTITION_LOCK_CLASS = 0x1D6E
POSITION_LOCK_SQL = (
    "SELECT partition, stream_ms, stream_seq FROM projector_positions"
    " WHERE partition = ANY($1::int[]) ORDER BY partition FOR UPDATE"
)
POSITION_UPDATE_SQL = """
UPDATE projector_positions AS pp SET stream_ms = u.ms, stream_seq = u.seq, updated_at = now()
FROM unnest($1::int[], $2::bigint[], $3::bigint[]) AS u(p, ms, seq)
WHERE pp.partition = u.p
"""
#: the previous state of the batch's keys: one primary-key probe per key, whatever the
#: statistics say (LATERAL fixes the keys as the outer side, OFFSET 0 keeps the probe a
#: parameterized subquery, and :data:`POSITION_PLANNER_SQL` leaves it the index). A plan
#: made while a fresh table's statistics said it was empty seq-scanned all of it on every
#: batch, for as long as the plan stayed cached.
PREV_SQL = """
SELECT r.resource_type, r.group_key, r.resource_id, r.data
FROM unnest($1::text[], $2::text[], $3::text[]) AS k(rt, gk, rid)
CROSS JOIN LATERAL (
  SELECT r.resource_type, r.group_key, r.resource_id, r.data FROM resources r
  WHERE r.resource_type = k.rt AND r.group_key = k.gk AND r.resource_id = k.rid
  OFFSET 0
) r
"""
DELETE_SQL = """
DELETE FROM resources r
USING unnest($1::text[], $2::text[], $3::text[]) AS k(rt, gk, rid)
WHERE r.resource_type = k.rt AND r.group_key = k.gk AND r.resource_id = k.rid
"""
UPSERT_SQL = """
INSERT INTO resources (resource_type, group_key, resource_id, name, important_fields, data,
                       content_hash, version, created_at, updated_at, last_event_id)
SELECT rt, gk, rid, nm, imp, dat, h, v, $10::timestamptz, $10::timestamptz, ev
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
            $7::text[], $8::int[], $9::text[]) AS x(rt, gk, rid, nm, imp, dat, h, v, ev)
ON CONFLICT (resource_type, group_key, resource_id) DO UPDATE SET
  name = EXCLUDED.name, important_fields = EXCLUDED.important_fields, data = EXCLUDED.data,
  content_hash = EXCLUDED.content_hash, version = EXCLUDED.version,
  updated_at = EXCLUDED.updated_at, last_event_id = EXCLUDED.last_event_id
"""
#: the column order of BatchRows.history, .events and .issues (shared.projection)
CHANGE_COLS = (
    "resource_type group_key resource_id version op event actor patch after event_id"
    " received_at applied_at name important_fields content_hash"
).split()
EVENT_COLS = (
    "event_id integration_id table_name resource_type group_key kind status event actor"
    " created updated deleted unchanged rejected skipped ignored_ids issues issues_total"
    " received_at processed_at idempotency_key request_fingerprint items items_total"
    " replay_of replay_item"
).split()
REJECTED_COLS = (
    "event_id item_index integration_id table_name resource_type group_key resource_id"
    " body created_at"
).split()
ISSUE_COLS = (
    "event_id integration_id table_name resource_type group_key resource_id item_index"
    " code message pointer created_at"
).split()

# ---- reads --------------------------------------------------------------------------

LIST_SQL = (
    "SELECT * FROM resources WHERE resource_type = $1 AND group_key = $2"
    " AND ($3::text IS NULL OR resource_id > $3) ORDER BY resource_id LIMIT $4"
)
LIST_ALL_SQL = (
    "SELECT * FROM resources WHERE resource_type = $1"
    " AND ($2::text IS NULL OR (group_key, resource_id) > ($2, $3))"
    " ORDER BY group_key, resource_id LIMIT $4"
)
GET_SQL = "SELECT * FROM resources WHERE resource_type = $1 AND group_key = $2 AND resource_id = $3"
HISTORY_SQL = (
    "SELECT * FROM resource_changes WHERE resource_type = $1 AND group_key = $2"
    " AND resource_id = $3 ORDER BY version"
)
ISSUES_SQL = (
    "SELECT * FROM sync_issues WHERE ($1::text IS NULL OR table_name = $1)"
    " AND ($2::uuid IS NULL OR integration_id = $2)"
    " AND ($3::timestamptz IS NULL OR created_at >= $3)"
    " AND ($5::bigint IS NULL OR id < $5)"
    " ORDER BY id DESC LIMIT $4"
)
RECEIPT_SQL = """
SELECT event_id, integration_id, status, created, updated, deleted, unchanged, rejected,
       skipped, ignored_ids, issues, issues_total, kind, table_name, group_key, received_at,
       processed_at, items, items_total, replay_of
FROM ingest_events WHERE event_id = $1
"""
IDEMPOTENCY_SQL = """
SELECT event_id, request_fingerprint FROM ingest_events
WHERE integration_id = $1 AND idempotency_key = $2
"""
APPLIED_EVENTS_SQL = "SELECT event_id FROM ingest_events WHERE event_id = ANY($1::text[])"
POSITION_READ_SQL = "SELECT stream_ms, stream_seq FROM projector_positions WHERE partition = $1"
SCOPE_LIVE_SQL = (
    "SELECT resource_id, content_hash, version FROM resources"
    " WHERE resource_type = $1 AND group_key = $2"
)
# the last version of each of these ids of the scope (ids compacted from the write model)
LAST_VERSIONS_SQL = (
    "SELECT resource_id, max(version) AS v FROM resource_changes WHERE resource_type = $1"
    " AND group_key = $2 AND resource_id = ANY($3::text[]) GROUP BY resource_id"
)
SCOPE_TOMBSTONES_SQL = (
    "SELECT c.resource_id, max(c.version) AS v FROM resource_changes c"
    " WHERE c.resource_type = $1 AND c.group_key = $2 AND NOT EXISTS ("
    " SELECT 1 FROM resources r WHERE r.resource_type = c.resource_type"
    " AND r.group_key = c.group_key AND r.resource_id = c.resource_id)"
    " GROUP BY c.resource_id"
)


@dataclass(frozen=True, slots=True)
class Resource:
    resource_type: str
    group_key: str
    resource_id: str
    name: str | None
    important_fields: dict[str, Any]
    data: dict[str, Any]
    content_hash: str
    version: int
    created_at: datetime
    updated_at: datetime
    last_event_id: str


@dataclass(frozen=True, slots=True)
class ResourcePage:
    """Up to ``limit`` resources after the cursor; ``more``: others follow the last."""

    items: list[Resource]
    more: bool


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One row of ``resource_changes``: a version of a resource and how it came about."""

    resource_type: str
    group_key: str
    resource_id: str
    version: int
    op: str
    event: str | None
    actor: Any
    patch: list[dict[str, Any]]
    after: dict[str, Any] | None
    event_id: str
    received_at: datetime
    applied_at: datetime


@dataclass(frozen=True, slots=True)
class SyncIssue:
    id: int
    event_id: str
    integration_id: str | None  # None: an admin's PATCH (no integration sent it)
    table: str
    resource_type: str
    group_key: str
    resource_id: str | None
    index: int | None
    code: str
    message: str
    pointer: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Receipt:
    """The outcome of one accepted request, once the projector has applied it."""

    event_id: str
    integration_id: str | None  # None: an admin's PATCH (no integration sent it)
    status: str
    kind: str
    table: str
    group_key: str
    created: int
    updated: int
    deleted: int
    unchanged: int
    rejected: int
    ignored: list[str]
    issues: list[dict[str, Any]]
    issues_total: int
    received_at: datetime
    processed_at: datetime
    skipped: int = 0
    items: list[dict[str, Any]] | None = None  # a batch event's per-item outcomes
    items_total: int | None = None
    replay_of: str | None = None  # the event this one replays


def _uuid_text(v: Any) -> str | None:
    return None if v is None else str(v)


def _resource(r: asyncpg.Record) -> Resource:
    return Resource(
        r["resource_type"],
        r["group_key"],
        r["resource_id"],
        r["name"],
        r["important_fields"],
        r["data"],
        r["content_hash"],
        r["version"],
        r["created_at"],
        r["updated_at"],
        r["last_event_id"],
    )


def _history(r: asyncpg.Record) -> HistoryEntry:
    return HistoryEntry(
        r["resource_type"],
        r["group_key"],
        r["resource_id"],
        r["version"],
        r["op"],
        r["event"],
        r["actor"],
        r["patch"],
        r["after"],
        r["event_id"],
        r["received_at"],
        r["applied_at"],
    )


def _sync_issue(r: asyncpg.Record) -> SyncIssue:
    return SyncIssue(
        r["id"],
        r["event_id"],
        _uuid_text(r["integration_id"]),
        r["table_name"],
        r["resource_type"],
        r["group_key"],
        r["resource_id"],
        r["item_index"],
        r["code"],
        r["message"],
        r["pointer"],
        r["created_at"],
    )


def _receipt(r: asyncpg.Record) -> Receipt:
    return Receipt(
        r["event_id"],
        _uuid_text(r["integration_id"]),
        r["status"],
        r["kind"],
        r["table_name"],
        r["group_key"],
        r["created"],
        r["updated"],
        r["deleted"],
        r["unchanged"],
        r["rejected"],
        r["ignored_ids"],
        r["issues"],
        r["issues_total"],
        r["received_at"],
        r["processed_at"],
        r["skipped"],
        r["items"],
        r["items_total"],
        r["replay_of"],
    )


def _cols(keys: list[Key]) -> tuple[list[str], list[str], list[str]]:
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


def position_lock_sql(partitions: list[int]) -> str:
    """The advisory locks and position rows of ``partitions`` (ascending), one script."""
    ps = sorted({int(p) for p in partitions})
    steps = [POSITION_LOCK_STEP_SQL.format(lock_class=PARTITION_LOCK_CLASS, p=p) for p in ps]
    rows = ", ".join(f"({p}, 0, 0)" for p in ps)
    return "\n".join([POSITION_PLANNER_SQL, *steps, POSITION_ROWS_SQL.format(rows=rows)])


class Projection:
    """One projector transaction over one or more partitions, open for the ``async with``
    block of :meth:`ResourceStore.projection`; ``positions`` maps each partition to the
    last stream id of it applied (``position``: that of the only one)."""

    def __init__(self, conn: asyncpg.Connection, positions: dict[int, tuple[int, int]]) -> None:
        self._conn = conn
        self.positions = positions
        self._wrote_history = False

    @property
    def position(self) -> tuple[int, int]:
        (only,) = self.positions.values()
        return only

    async def previous(self, keys: list[Key]) -> dict[Key, Any]:
        """The current data of those of ``keys`` that exist."""
        prev: dict[Key, Any] = {}
        if keys:
            for r in await self._conn.fetch(PREV_SQL, *_cols(keys)):
                prev[(r["resource_type"], r["group_key"], r["resource_id"])] = r["data"]
        return prev

    async def applied_events(self, event_ids: list[str]) -> set[str]:
        """Those of ``event_ids`` whose receipt is stored already: their effect is here."""
        if not event_ids:
            return set()
        return {r["event_id"] for r in await self._conn.fetch(APPLIED_EVENTS_SQL, event_ids)}

    def savepoint(self) -> Any:
        """A nested transaction: a statement that fails inside it undoes only its block."""
        return self._conn.transaction()

    async def write(self, rows: BatchRows, upto: tuple[int, int] | dict[int, Any]) -> None:
        """Write the batch's rows and record the partitions' new positions (``upto``: a
        stream id of the only partition, or one per partition)."""
        await self.write_rows(rows)
        await self.record(upto)

    async def record(self, upto: tuple[int, int] | dict[int, Any]) -> None:
        """Record the last stream id applied of each partition (a bare stream id: of the
        only one); when the batch wrote history, notify the change feed's listeners
        (delivered at commit)."""
        if not isinstance(upto, dict):
            (p,) = self.positions
            upto = {p: upto}
        ps = sorted(upto)
        await self._conn.execute(
            POSITION_UPDATE_SQL, ps, [upto[p][0] for p in ps], [upto[p][1] for p in ps]
        )
        if self._wrote_history:
            await self._conn.execute(NOTIFY_SQL)

    async def write_rows(self, rows: BatchRows) -> None:
        conn = self._conn
        if rows.deletes:
            await conn.execute(DELETE_SQL, *_cols(list(rows.deletes)))
        ups = [(k, v) for k, v in rows.final.items() if v is not None]
        if ups:
            cols: list[list[Any]] = [[] for _ in range(9)]
            for (rt, gk, rid), (name, imp, data, h, v, ev) in ups:
                for i, val in enumerate((rt, gk, rid, name, imp, data, h, v, ev)):
                    cols[i].append(val)
            await conn.execute(UPSERT_SQL, *cols, rows.now or datetime.now(UTC))
        if rows.history:
            self._wrote_history = True
            await conn.copy_records_to_table(
                "resource_changes", records=rows.history, columns=CHANGE_COLS
            )
        if rows.events:
            await conn.copy_records_to_table(
                "ingest_events", records=rows.events, columns=EVENT_COLS
            )
        if rows.issues:
            await conn.copy_records_to_table("sync_issues", records=rows.issues, columns=ISSUE_COLS)
        if rows.rejected:
            await conn.copy_records_to_table(
                "rejected_bodies", records=rows.rejected, columns=REJECTED_COLS
            )


class ResourceStore:
    """Every statement on resource state, history, receipts, sync issues and positions."""

    def __init__(self, db: Db) -> None:
        self._db = db

    # ---- the projector ---------------------------------------------------------------

    @asynccontextmanager
    async def projection(self, p: int | list[int]) -> AsyncIterator[Projection]:
        """One transaction holding the position rows of partition ``p`` (or of each of a
        list) locked: committed when the block ends, rolled back when it raises."""
        ps = sorted({int(x) for x in ([p] if isinstance(p, int) else p)})
        async with connection(self._db) as conn, conn.transaction():
            await conn.execute(position_lock_sql(ps))
            rows = await conn.fetch(POSITION_LOCK_SQL, ps)
            positions = {r["partition"]: (r["stream_ms"], r["stream_seq"]) for r in rows}
            assert len(positions) == len(ps)
            yield Projection(conn, positions)

    async def applied_events(self, event_ids: list[str]) -> set[str]:
        """Those of ``event_ids`` whose receipt is stored: their effect is in PostgreSQL."""
        if not event_ids:
            return set()
        return {r["event_id"] for r in await self._db.fetch(APPLIED_EVENTS_SQL, event_ids)}

    async def position(self, p: int) -> tuple[int, int] | None:
        """The last stream id of ``changes:{p}`` the projector applied, if it ever did."""
        row = await self._db.fetchrow(POSITION_READ_SQL, p)
        return None if row is None else (row["stream_ms"], row["stream_seq"])

    # ---- the worker's write-model rebuild ---------------------------------------------

    async def scope_rows(
        self, resource_type: str, group_key: str
    ) -> AsyncGenerator[tuple[str, str, int], None]:
        """(id, content hash, version) of every resource the scope ever had, from one
        repeatable-read snapshot: live ones first, then the deleted ones with hash ''
        and their last version. Read through server-side cursors; a caller that may stop
        early closes the iterator (``contextlib.aclosing``) to end the transaction."""
        async with connection(self._db) as conn, conn.transaction(isolation="repeatable_read"):
            async for r in conn.cursor(SCOPE_LIVE_SQL, resource_type, group_key):
                yield r["resource_id"], r["content_hash"], r["version"]
            async for r in conn.cursor(SCOPE_TOMBSTONES_SQL, resource_type, group_key):
                yield r["resource_id"], "", r["v"]

    async def last_versions(
        self, resource_type: str, group_key: str, ids: list[str]
    ) -> dict[str, int]:
        """The last version in history of those of ``ids`` the scope ever had."""
        rows = await self._db.fetch(LAST_VERSIONS_SQL, resource_type, group_key, ids)
        return {r["resource_id"]: r["v"] for r in rows}

    # ---- the read and ingest APIs ---------------------------------------------------

    async def list_resources(
        self, resource_type: str, group_key: str, after: str | None, limit: int
    ) -> ResourcePage:
        """Up to ``limit`` resources of the scope with ids above ``after``, by id."""
        rows = await self._db.fetch(LIST_SQL, resource_type, group_key, after, limit + 1)
        return ResourcePage([_resource(r) for r in rows[:limit]], len(rows) > limit)

    async def list_all_groups(
        self, resource_type: str, after: tuple[str, str] | None, limit: int
    ) -> ResourcePage:
        """Up to ``limit`` resources of every groupKey, by (groupKey, id), after ``after``."""
        gk, rid = after if after is not None else (None, None)
        rows = await self._db.fetch(LIST_ALL_SQL, resource_type, gk, rid, limit + 1)
        return ResourcePage([_resource(r) for r in rows[:limit]], len(rows) > limit)

    async def get_resource(
        self, resource_type: str, group_key: str, resource_id: str
    ) -> Resource | None:
        row = await self._db.fetchrow(GET_SQL, resource_type, group_key, resource_id)
        return None if row is None else _resource(row)

    async def history(
        self, resource_type: str, group_key: str, resource_id: str
    ) -> list[HistoryEntry]:
        """Every version of the resource, oldest first (a deleted one's too)."""
        rows = await self._db.fetch(HISTORY_SQL, resource_type, group_key, resource_id)
        return [_history(r) for r in rows]

    async def sync_issues(
        self,
        table: str | None = None,
        integration: UUID | None = None,
        since: datetime | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[SyncIssue]:
        """The newest issues first (ids below ``before``); each filter applies only when
        given."""
        rows = await self._db.fetch(ISSUES_SQL, table, integration, since, limit, before)
        return [_sync_issue(r) for r in rows]

    async def idempotent_event(self, integration: str, key: str) -> tuple[str, str] | None:
        """(event id, request fingerprint) of the integration's receipt row holding this
        Idempotency-Key, if PostgreSQL has one."""
        row = await self._db.fetchrow(IDEMPOTENCY_SQL, integration, key)
        return None if row is None else (row["event_id"], row["request_fingerprint"])

    async def receipt(self, event_id: str) -> Receipt | None:
        """The applied outcome of an event; None while it is pending (or unknown)."""
        row = await self._db.fetchrow(RECEIPT_SQL, event_id)
        return None if row is None else _receipt(row)
