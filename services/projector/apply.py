"""Applying one batch of change entries to PostgreSQL in one transaction.

A bulk snapshot with many effects arrives as consecutive entries of which only
the last (``Change.last``) writes the ``ingest_events`` row and sync issues: a
receipt reads ``applied`` only once every slice before it is applied (stream
order, and slices are committed by the worker all at once or not at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import jsonpatch

from shared.events import Change
from shared.redis import keyspace as ks

Key = tuple[str, str, str]

PREV_SQL = """
SELECT r.resource_type, r.group_key, r.resource_id, r.data
FROM resources r
JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(rt, gk, rid)
  ON r.resource_type = k.rt AND r.group_key = k.gk AND r.resource_id = k.rid
"""
DELETE_SQL = """
DELETE FROM resources r
USING unnest($1::text[], $2::text[], $3::text[]) AS k(rt, gk, rid)
WHERE r.resource_type = k.rt AND r.group_key = k.gk AND r.resource_id = k.rid
"""
UPSERT_SQL = """
INSERT INTO resources (resource_type, group_key, resource_id, name, important_fields, data,
                       content_hash, version, created_at, updated_at, last_event_id)
SELECT rt, gk, rid, nm, imp, dat, h, v, now(), now(), ev
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
            $7::text[], $8::int[], $9::text[]) AS x(rt, gk, rid, nm, imp, dat, h, v, ev)
ON CONFLICT (resource_type, group_key, resource_id) DO UPDATE SET
  name = EXCLUDED.name, important_fields = EXCLUDED.important_fields, data = EXCLUDED.data,
  content_hash = EXCLUDED.content_hash, version = EXCLUDED.version,
  updated_at = EXCLUDED.updated_at, last_event_id = EXCLUDED.last_event_id
"""
POSITION_SQL = """
INSERT INTO projector_positions (partition, stream_ms, stream_seq) VALUES ($1, 0, 0)
ON CONFLICT (partition) DO NOTHING
"""
CHANGE_COLS = [
    "resource_type",
    "group_key",
    "resource_id",
    "version",
    "op",
    "event",
    "actor",
    "patch",
    "after",
    "event_id",
    "received_at",
    "applied_at",
]
EVENT_COLS = [
    "event_id",
    "integration_id",
    "table_name",
    "resource_type",
    "group_key",
    "kind",
    "status",
    "event",
    "actor",
    "created",
    "updated",
    "deleted",
    "unchanged",
    "rejected",
    "ignored_ids",
    "issues",
    "issues_total",
    "received_at",
    "processed_at",
]
ISSUE_COLS = [
    "event_id",
    "integration_id",
    "table_name",
    "resource_type",
    "group_key",
    "resource_id",
    "item_index",
    "code",
    "message",
    "pointer",
    "created_at",
]


def _token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def json_patch(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 patch from ``before`` to ``after``. Creates and deletes (one side empty)
    are built directly; jsonpatch's general diff costs ~50x more and is kept for updates."""
    if not before:
        return [{"op": "add", "path": "/" + _token(k), "value": v} for k, v in after.items()]
    if not after:
        return [{"op": "remove", "path": "/" + _token(k)} for k in before]
    patch: list[dict[str, Any]] = jsonpatch.make_patch(before, after).patch
    return patch


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(slots=True)
class BatchRows:
    history: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    issues: list[tuple[Any, ...]] = field(default_factory=list)
    deletes: set[Key] = field(default_factory=set)
    final: dict[Key, tuple[Any, ...] | None] = field(default_factory=dict)


def _keys(changes: list[Change]) -> set[Key]:
    return {
        (c.meta.resource_type, c.meta.group_key, e.resource_id) for c in changes for e in c.effects
    }


def build_rows(changes: list[Change], prev: dict[Key, Any], now: datetime) -> BatchRows:
    """Pure: the rows one batch writes, with patches computed against the previous state."""
    out = BatchRows()
    current = dict(prev)
    for ch in changes:
        m = ch.meta
        received = _ts(m.received_ms)
        for e in ch.effects:
            key = (m.resource_type, m.group_key, e.resource_id)
            before = current.get(key) or {}
            after = e.data if e.op != "deleted" else None
            patch = json_patch(before, after or {})
            out.history.append(
                (
                    m.resource_type,
                    m.group_key,
                    e.resource_id,
                    e.version,
                    e.op,
                    m.event,
                    m.actor,
                    patch,
                    after,
                    m.id,
                    received,
                    now,
                )
            )
            current[key] = after
            if e.op == "deleted":
                out.deletes.add(key)
                out.final[key] = None
            else:
                out.final[key] = (e.name, e.important or {}, after, e.content_hash, e.version, m.id)
        if not ch.last:
            continue
        c = ch.counts()
        integration = m.integration  # asyncpg takes a uuid column's value as text
        out.events.append(
            (
                m.id,
                integration,
                m.table,
                m.resource_type,
                m.group_key,
                m.kind,
                ch.status,
                m.event,
                m.actor,
                c["created"],
                c["updated"],
                c["deleted"],
                c["unchanged"],
                c["rejected"],
                ch.ignored,
                ch.issues,
                ch.issues_total,
                received,
                now,
            )
        )
        for i in ch.issues:
            out.issues.append(
                (
                    m.id,
                    integration,
                    m.table,
                    m.resource_type,
                    m.group_key,
                    i.get("resourceId"),
                    i.get("index"),
                    i["code"],
                    i["message"],
                    i.get("pointer"),
                    now,
                )
            )
    return out


def _cols(keys: list[Key]) -> tuple[list[str], list[str], list[str]]:
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


async def apply_batch(conn: asyncpg.Connection, p: int, entries: list[tuple[bytes, bytes]]) -> int:
    """Apply entries (stream id, encoded change) past the recorded position; return how many."""
    async with conn.transaction():
        await conn.execute(POSITION_SQL, p)
        pos = await conn.fetchrow(
            "SELECT stream_ms, stream_seq FROM projector_positions WHERE partition = $1 FOR UPDATE",
            p,
        )
        assert pos is not None
        floor = (pos["stream_ms"], pos["stream_seq"])
        fresh = [
            (ks.stream_id_tuple(sid), raw)
            for sid, raw in entries
            if ks.stream_id_tuple(sid) > floor
        ]
        if not fresh:
            return 0
        changes = [c for _, raw in fresh for c in Change.decode_many(raw)]
        keys = list(_keys(changes))
        prev: dict[Key, Any] = {}
        if keys:
            for r in await conn.fetch(PREV_SQL, *_cols(keys)):
                prev[(r["resource_type"], r["group_key"], r["resource_id"])] = r["data"]
        now = datetime.now(UTC)
        rows = build_rows(changes, prev, now)
        await _write(conn, rows)
        last = fresh[-1][0]
        await conn.execute(
            "UPDATE projector_positions SET stream_ms = $2, stream_seq = $3, updated_at = now()"
            " WHERE partition = $1",
            p,
            last[0],
            last[1],
        )
    return len(fresh)


async def _write(conn: asyncpg.Connection, rows: BatchRows) -> None:
    if rows.deletes:
        await conn.execute(DELETE_SQL, *_cols(list(rows.deletes)))
    ups = [(k, v) for k, v in rows.final.items() if v is not None]
    if ups:
        cols: list[list[Any]] = [[] for _ in range(9)]
        for (rt, gk, rid), (name, imp, data, h, v, ev) in ups:
            for i, val in enumerate((rt, gk, rid, name, imp, data, h, v, ev)):
                cols[i].append(val)
        await conn.execute(UPSERT_SQL, *cols)
    if rows.history:
        await conn.copy_records_to_table(
            "resource_changes", records=rows.history, columns=CHANGE_COLS
        )
    if rows.events:
        await conn.copy_records_to_table("ingest_events", records=rows.events, columns=EVENT_COLS)
    if rows.issues:
        await conn.copy_records_to_table("sync_issues", records=rows.issues, columns=ISSUE_COLS)
