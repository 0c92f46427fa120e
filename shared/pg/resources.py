"""Resource state and history: every statement on ``resources``, ``resource_changes``,
``ingest_events``, ``sync_issues`` and ``projector_positions``.

- The projector writes through :meth:`ResourceStore.projection`: ONE transaction per
  batch, all or nothing, whose statements live in :mod:`shared.pg.projection`.
- The read API lists (keyset pagination on the resource id), gets, reads history and
  sync issues; the ingest API reads receipts.
- The worker rebuilds its write model of a scope from one repeatable-read snapshot
  (:meth:`ResourceStore.scope_rows`) once the projector's position
  (:meth:`ResourceStore.position`) has caught up.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from shared.pg.pool import Db, connection
from shared.pg.projection import APPLIED_EVENTS_SQL, Projection, projection

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


class ResourceStore:
    """Every statement on resource state, history, receipts, sync issues and positions."""

    def __init__(self, db: Db) -> None:
        self._db = db

    # ---- the projector ---------------------------------------------------------------

    def projection(self, p: int | list[int]) -> AbstractAsyncContextManager[Projection]:
        """One transaction holding the position rows of partition ``p`` (or of each of a
        list) locked: committed when the block ends, rolled back when it raises
        (:func:`shared.pg.projection.projection`)."""
        return projection(self._db, p)

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
