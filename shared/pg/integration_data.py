"""Integration data: every statement on ``integration_data`` and ``integration_data_changes``.

Written synchronously by the gateway (a PUT answers after its commit). These tables are
not resource state: the projector never writes them, and a PUT never touches
``resources`` (it only takes a KEY SHARE lock on the live row, so the resource cannot be
deleted under it). A map outlives its resource's deletion and is read again when the same
id is re-created.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.codes import Code
from shared.errors import ApiError, NotFoundError
from shared.pg.pool import Db, connection

LIVE_SQL = (
    "SELECT 1 FROM resources WHERE resource_type = $1 AND group_key = $2 AND resource_id = $3"
)
ROWS_SQL = """
SELECT d.vendor_id, d.data, d.names, d.etag, d.updated_at, d.updated_by
FROM integration_data d
WHERE d.resource_type = $1 AND d.group_key = $2 AND d.resource_id = $3
  AND ($4::text IS NULL OR d.vendor_id = $4)
ORDER BY d.vendor_id OFFSET $5 LIMIT $6
"""
#: one statement (one snapshot): whether the resource is live, and its maps (none when not)
READ_SQL = """
SELECT l.live, d.vendor_id, d.data, d.names, d.etag, d.updated_at, d.updated_by
FROM (SELECT EXISTS (SELECT 1 FROM resources
                     WHERE resource_type = $1 AND group_key = $2 AND resource_id = $3) AS live) l
LEFT JOIN LATERAL (
    SELECT * FROM integration_data
    WHERE l.live AND resource_type = $1 AND group_key = $2 AND resource_id = $3
      AND ($4::text IS NULL OR vendor_id = $4)
    ORDER BY vendor_id OFFSET $5 LIMIT $6
) d ON true
"""
#: many instance reads in one statement (one snapshot): per key, in the order given, whether
#: the resource is live and the vendor's map when it is (``i`` is the key's 1-based index)
MANY_SQL = """
SELECT k.i, EXISTS (SELECT 1 FROM resources r
                    WHERE r.resource_type = k.rt AND r.group_key = k.gk
                      AND r.resource_id = k.rid) AS live,
       d.vendor_id, d.data, d.names, d.etag, d.updated_at, d.updated_by
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
     WITH ORDINALITY AS k(rt, gk, rid, vendor, i)
LEFT JOIN integration_data d
    ON d.resource_type = k.rt AND d.group_key = k.gk AND d.resource_id = k.rid
   AND d.vendor_id = k.vendor
ORDER BY k.i
"""
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended($1, 15))"
UPSERT_SQL = """
INSERT INTO integration_data
    (resource_type, group_key, resource_id, vendor_id, data, names, etag, updated_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (resource_type, group_key, resource_id, vendor_id) DO UPDATE SET
    data = EXCLUDED.data, names = EXCLUDED.names, etag = EXCLUDED.etag,
    updated_at = now(), updated_by = EXCLUDED.updated_by
RETURNING updated_at
"""
CHANGE_SQL = """
INSERT INTO integration_data_changes
    (resource_type, group_key, resource_id, vendor_id, old_data, new_data, actor,
     integration_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""


@dataclass(frozen=True, slots=True)
class Entry:
    vendor_id: str
    data: dict[str, str]  # in the order its names were given
    etag: str
    updated_at: datetime
    updated_by: str  # 'admin' or an integration id


@dataclass(frozen=True, slots=True)
class Writer:
    """Who writes: the admin token (``integration_id`` None) or an integration's key."""

    integration_id: str | None

    @property
    def actor(self) -> str:
        return "admin" if self.integration_id is None else "integration"


def _entry(r: asyncpg.Record) -> Entry:
    data = r["data"]
    ordered = {n: data[n] for n in r["names"] if n in data}
    return Entry(r["vendor_id"], ordered, r["etag"], r["updated_at"], r["updated_by"])


def not_live(rt: str, rid: str) -> NotFoundError:
    return NotFoundError(Code.RESOURCE_NOT_FOUND, f"no {rt} resource {rid!r} in this group")


def _precondition(message: str) -> ApiError:
    return ApiError(Code.PRECONDITION_FAILED, message, status=412)


class IntegrationDataStore:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def entries(
        self,
        rt: str,
        gk: str,
        rid: str,
        vendor: str | None = None,
        skip: int = 0,
        top: int | None = None,
    ) -> list[Entry]:
        """The maps of a LIVE resource (``vendor``: that vendor's only), by vendor id;
        404 ``resource_not_found`` while the resource is not live."""
        rows = await self._db.fetch(READ_SQL, rt, gk, rid, vendor, skip, top)
        if not rows[0]["live"]:
            raise not_live(rt, rid)
        return [_entry(r) for r in rows if r["vendor_id"] is not None]

    async def instances(
        self, keys: list[tuple[str, str, str, str]]
    ) -> list[tuple[bool, Entry | None]]:
        """For each (resource type, group key, id, vendor), in order: (the resource is
        live, the vendor's map or None), all read in one statement. A map of a resource
        that is not live is never answered."""
        cols = [list(c) for c in zip(*keys, strict=True)] if keys else [[], [], [], []]
        rows = await self._db.fetch(MANY_SQL, *cols)
        return [
            (bool(r["live"]), _entry(r) if r["live"] and r["vendor_id"] is not None else None)
            for r in rows
        ]

    async def put(
        self,
        rt: str,
        gk: str,
        rid: str,
        vendor: str,
        data: dict[str, str],
        writer: Writer,
        if_match: list[str] | None = None,
        if_none_match: list[str] | None = None,
    ) -> tuple[Entry, bool]:
        """Replace (or create) the vendor's map of a live resource: (the stored entry,
        created). ``if_match``/``if_none_match``: None when the header is absent, else its
        entity tags (``["*"]`` for ``*``) (412 ``precondition_failed`` when they do not hold).
        An unchanged map is not written again (same ETag, no history row)."""
        async with connection(self._db) as conn, conn.transaction():
            live = await conn.fetchval(LIVE_SQL + " FOR KEY SHARE", rt, gk, rid)
            if live is None:
                raise not_live(rt, rid)
            await conn.execute(LOCK_SQL, f"{rt}\x1f{gk}\x1f{rid}\x1f{vendor}")
            rows = await conn.fetch(ROWS_SQL, rt, gk, rid, vendor, 0, 1)
            old = _entry(rows[0]) if rows else None
            _check(old, if_match, if_none_match)
            if old is not None and old.data == data and list(old.data) == list(data):
                return old, False
            etag = f'"{secrets.token_hex(12)}"'
            by = writer.integration_id or "admin"
            at = await conn.fetchval(UPSERT_SQL, rt, gk, rid, vendor, data, list(data), etag, by)
            await conn.execute(
                CHANGE_SQL, rt, gk, rid, vendor, old.data if old else None, data,
                writer.actor, writer.integration_id,
            )  # fmt: skip
        return Entry(vendor, dict(data), etag, at, by), old is None


def _check(
    old: Entry | None,
    if_match: list[str] | None,
    if_none_match: list[str] | None,
) -> None:
    if if_match is not None:
        if old is None:
            raise _precondition("If-Match: there is no map for this vendor yet")
        if "*" not in if_match and old.etag not in if_match:
            raise _precondition(f"If-Match: the map has changed since (its ETag is now {old.etag})")
    if if_none_match is not None and old is not None:
        if "*" in if_none_match or old.etag in if_none_match:
            raise _precondition(f"If-None-Match: the map exists (ETag {old.etag})")
