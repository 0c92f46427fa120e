"""Registry persistence (schema groups, schemas, integrations, keys) and its cache.

Every process keeps a :class:`RegistrySnapshot` in memory. A :class:`RegistryCache`
polls the registry's generation in PostgreSQL (``registry_state``, bumped by
triggers in the same transaction as every change to the registry tables) and
reloads the snapshot when it moves, so a revoked key is refused by every gateway
within one poll interval (default 0.5 s) without a restart, and no admin write
depends on Redis being up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from shared import keys
from shared.codes import Code
from shared.errors import ApiError, ConflictError, NotFoundError
from shared.schema_rules import CompiledSchema, check_identifier, prepare_schema

log = logging.getLogger("ingestd.registry")


@dataclass(frozen=True, slots=True)
class TableInfo:
    schema_id: str
    group_id: str
    table: str
    resource_type: str
    version: int
    title: str | None
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    integration_id: str
    group_id: str
    secret_sha256: bytes


@dataclass(slots=True)
class RegistrySnapshot:
    tables: dict[tuple[str, str], TableInfo] = field(default_factory=dict)
    by_type: dict[str, TableInfo] = field(default_factory=dict)
    keys: dict[str, KeyInfo] = field(default_factory=dict)
    _compiled: dict[tuple[str, int], CompiledSchema] = field(default_factory=dict)
    _verified: dict[str, KeyInfo] = field(default_factory=dict)

    def authenticate(self, plaintext: str) -> KeyInfo | None:
        """The key's integration, or None. Verified keys are remembered for the life of
        this snapshot (any registry change, a revocation included, replaces it), so the
        hot path skips the SHA-256; unknown keys are never remembered."""
        hit = self._verified.get(plaintext)
        if hit is not None:
            return hit
        parts = keys.split_key(plaintext)
        if parts is None:
            return None
        info = self.keys.get(parts[0])
        if info is None or not keys.matches(parts[1], info.secret_sha256):
            return None
        self._verified[plaintext] = info
        return info

    def compiled(self, t: TableInfo) -> CompiledSchema:
        k = (t.resource_type, t.version)
        c = self._compiled.get(k)
        if c is None:
            c = self._compiled[k] = CompiledSchema(t.body)
        return c


async def load_snapshot(conn: asyncpg.Connection | asyncpg.Pool) -> RegistrySnapshot:
    snap = RegistrySnapshot()
    rows = await conn.fetch(
        "SELECT s.id, s.group_id, s.table_name, s.resource_type, s.current_version, s.title,"
        " v.body FROM schemas s JOIN schema_versions v"
        " ON v.schema_id = s.id AND v.version = s.current_version"
    )
    for r in rows:
        t = TableInfo(
            str(r["id"]),
            str(r["group_id"]),
            r["table_name"],
            r["resource_type"],
            r["current_version"],
            r["title"],
            r["body"],
        )
        snap.tables[(t.group_id, t.table)] = t
        snap.by_type[t.resource_type] = t
    for r in await conn.fetch(
        "SELECT k.id, k.integration_id, i.group_id, k.secret_sha256 FROM ingest_keys k"
        " JOIN integrations i ON i.id = k.integration_id WHERE k.revoked_at IS NULL"
    ):
        snap.keys[r["id"]] = KeyInfo(
            r["id"], str(r["integration_id"]), str(r["group_id"]), bytes(r["secret_sha256"])
        )
    return snap


class RegistryCache:
    def __init__(self, pool: asyncpg.Pool, poll_ms: int) -> None:
        self._pool = pool
        self._poll = poll_ms / 1000
        self._gen: int | None = None
        self.snapshot = RegistrySnapshot()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh(force=True)
        self._task = asyncio.create_task(self._loop(), name="registry-poll")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self, force: bool = False) -> None:
        gen = await self._pool.fetchval("SELECT generation FROM registry_state WHERE id = 1")
        if force or gen != self._gen:
            snap = await load_snapshot(self._pool)
            old = self.snapshot
            # keep compiled validators of unchanged versions
            for k, c in old._compiled.items():
                t = snap.by_type.get(k[0])
                if t is not None and t.version == k[1]:
                    snap._compiled[k] = c
            self.snapshot = snap
            self._gen = gen

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                await self.refresh()
            except Exception:  # keep serving the last snapshot; log and retry
                log.exception("registry refresh failed")


# ---- admin operations -------------------------------------------------------


def _uuid(value: str, what: str) -> UUID:
    try:
        return UUID(value)
    except ValueError as e:
        raise NotFoundError(
            Code(f"{what}_not_found"), f"no {what.replace('_', ' ')} {value!r}"
        ) from e


def group_json(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "name": r["name"],
        "prefix": r["prefix"],
        "createdAt": r["created_at"].isoformat(),
    }


async def create_group(pool: asyncpg.Pool, name: Any, prefix: Any) -> dict[str, Any]:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ApiError(
            Code.INVALID_NAME,
            "name must be a non-empty string of at most 200 characters",
            pointer="/name",
        )
    check_identifier(prefix, "prefix")
    try:
        r = await pool.fetchrow(
            "INSERT INTO schema_groups (name, prefix) VALUES ($1, $2) RETURNING *", name, prefix
        )
    except asyncpg.UniqueViolationError as e:
        which = "prefix" if "prefix" in (e.constraint_name or "") else "name"
        raise ConflictError(
            Code(f"duplicate_{which}"), f"a schema group with this {which} exists"
        ) from e
    assert r is not None
    return group_json(r)


async def list_groups(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    return [group_json(r) for r in await pool.fetch("SELECT * FROM schema_groups ORDER BY name")]


async def get_group(conn: asyncpg.Connection | asyncpg.Pool, group_id: str) -> asyncpg.Record:
    r = await conn.fetchrow(
        "SELECT * FROM schema_groups WHERE id = $1", _uuid(group_id, "schema_group")
    )
    if r is None:
        raise NotFoundError(Code.SCHEMA_GROUP_NOT_FOUND, f"no schema group {group_id!r}")
    return r


def schema_json(r: asyncpg.Record, version: int, body: Any, created: Any) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "table": r["table_name"],
        "resourceType": r["resource_type"],
        "title": r["title"],
        "version": version,
        "schema": body,
        "createdAt": created.isoformat(),
    }


async def create_schema(
    pool: asyncpg.Pool, group_id: str, table: Any, schema: Any, title: Any
) -> dict[str, Any]:
    check_identifier(table, "table")
    if title is not None and (not isinstance(title, str) or len(title) > 200):
        raise ApiError(
            Code.INVALID_TITLE, "title must be a string of at most 200 characters", pointer="/title"
        )
    body = prepare_schema(schema)
    async with pool.acquire() as conn, conn.transaction():
        group = await get_group(conn, group_id)
        rt = f"{group['prefix']}_{table}"
        try:
            async with conn.transaction():  # savepoint: the clash is looked up below
                r = await conn.fetchrow(
                    "INSERT INTO schemas (group_id, table_name, resource_type, title)"
                    " VALUES ($1, $2, $3, $4) RETURNING *",
                    group["id"],
                    table,
                    rt,
                    title,
                )
        except asyncpg.UniqueViolationError as e:
            owner = await conn.fetchval("SELECT group_id FROM schemas WHERE resource_type = $1", rt)
            if owner is not None and owner != group["id"]:
                raise ConflictError(
                    Code.DUPLICATE_RESOURCE_TYPE,
                    f"resource type {rt!r} is already used by a table of another schema group",
                ) from e
            raise ConflictError(
                Code.DUPLICATE_TABLE, f"table {table!r} (resource type {rt!r}) exists already"
            ) from e
        assert r is not None
        v = await conn.fetchrow(
            "INSERT INTO schema_versions (schema_id, version, body) VALUES ($1, 1, $2)"
            " RETURNING created_at",
            r["id"],
            body,
        )
        assert v is not None
    return schema_json(r, 1, body, v["created_at"])


async def _schema_row(
    conn: asyncpg.Connection | asyncpg.Pool, group_id: str, table: str, lock: bool = False
) -> asyncpg.Record:
    r = await conn.fetchrow(
        "SELECT * FROM schemas WHERE group_id = $1 AND table_name = $2"
        + (" FOR UPDATE" if lock else ""),
        _uuid(group_id, "schema_group"),
        table,
    )
    if r is None:
        await get_group(conn, group_id)
        raise NotFoundError(Code.SCHEMA_NOT_FOUND, f"no table {table!r} in this schema group")
    return r


async def update_schema(
    pool: asyncpg.Pool, group_id: str, table: str, schema: Any, title: Any = None
) -> dict[str, Any]:
    body = prepare_schema(schema)
    async with pool.acquire() as conn, conn.transaction():
        r = await _schema_row(conn, group_id, table, lock=True)
        version = r["current_version"] + 1
        v = await conn.fetchrow(
            "INSERT INTO schema_versions (schema_id, version, body) VALUES ($1, $2, $3)"
            " RETURNING created_at",
            r["id"],
            version,
            body,
        )
        r = await conn.fetchrow(
            "UPDATE schemas SET current_version = $2, updated_at = now(),"
            " title = COALESCE($3, title) WHERE id = $1 RETURNING *",
            r["id"],
            version,
            title if isinstance(title, str) else None,
        )
        assert r is not None and v is not None
    return schema_json(r, version, body, v["created_at"])


async def list_schemas(pool: asyncpg.Pool, group_id: str) -> list[dict[str, Any]]:
    await get_group(pool, group_id)
    rows = await pool.fetch(
        "SELECT s.*, v.body, v.created_at AS vcreated FROM schemas s JOIN schema_versions v"
        " ON v.schema_id = s.id AND v.version = s.current_version"
        " WHERE s.group_id = $1 ORDER BY s.table_name",
        _uuid(group_id, "schema_group"),
    )
    return [schema_json(r, r["current_version"], r["body"], r["vcreated"]) for r in rows]


async def get_schema(pool: asyncpg.Pool, group_id: str, table: str) -> dict[str, Any]:
    r = await _schema_row(pool, group_id, table)
    v = await pool.fetchrow(
        "SELECT body, created_at FROM schema_versions WHERE schema_id = $1 AND version = $2",
        r["id"],
        r["current_version"],
    )
    assert v is not None
    return schema_json(r, r["current_version"], v["body"], v["created_at"])


async def list_versions(pool: asyncpg.Pool, group_id: str, table: str) -> list[dict[str, Any]]:
    r = await _schema_row(pool, group_id, table)
    rows = await pool.fetch(
        "SELECT version, body, created_at FROM schema_versions WHERE schema_id = $1"
        " ORDER BY version",
        r["id"],
    )
    return [schema_json(r, v["version"], v["body"], v["created_at"]) for v in rows]


def _integration_json(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "name": r["name"],
        "schemaGroup": str(r["group_id"]),
        "createdAt": r["created_at"].isoformat(),
    }


async def _insert_key(conn: asyncpg.Connection, integration_id: UUID) -> dict[str, Any]:
    k = keys.new_key()
    r = await conn.fetchrow(
        "INSERT INTO ingest_keys (id, integration_id, secret_sha256) VALUES ($1, $2, $3)"
        " RETURNING created_at",
        k.key_id,
        integration_id,
        k.secret_sha256,
    )
    assert r is not None
    return {"keyId": k.key_id, "ingestKey": k.plaintext, "createdAt": r["created_at"].isoformat()}


async def create_integration(pool: asyncpg.Pool, name: Any, group_id: Any) -> dict[str, Any]:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ApiError(
            Code.INVALID_NAME,
            "name must be a non-empty string of at most 200 characters",
            pointer="/name",
        )
    if not isinstance(group_id, str):
        raise ApiError(
            Code.INVALID_SCHEMA_GROUP,
            "schemaGroup must be a schema group id",
            pointer="/schemaGroup",
        )
    async with pool.acquire() as conn, conn.transaction():
        group = await get_group(conn, group_id)
        r = await conn.fetchrow(
            "INSERT INTO integrations (name, group_id) VALUES ($1, $2) RETURNING *",
            name,
            group["id"],
        )
        assert r is not None
        key = await _insert_key(conn, r["id"])
    return {**_integration_json(r), "ingestKey": key["ingestKey"], "keyId": key["keyId"]}


async def _integration(conn: asyncpg.Connection | asyncpg.Pool, iid: str) -> asyncpg.Record:
    r = await conn.fetchrow("SELECT * FROM integrations WHERE id = $1", _uuid(iid, "integration"))
    if r is None:
        raise NotFoundError(Code.INTEGRATION_NOT_FOUND, f"no integration {iid!r}")
    return r


async def list_integrations(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM integrations ORDER BY created_at, id")
    return [_integration_json(r) for r in rows]


async def add_key(pool: asyncpg.Pool, integration_id: str) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.transaction():
        r = await _integration(conn, integration_id)
        return await _insert_key(conn, r["id"])


async def list_keys(pool: asyncpg.Pool, integration_id: str) -> list[dict[str, Any]]:
    r = await _integration(pool, integration_id)
    rows = await pool.fetch(
        "SELECT id, created_at, revoked_at FROM ingest_keys WHERE integration_id = $1"
        " ORDER BY created_at, id",
        r["id"],
    )
    return [
        {
            "keyId": k["id"],
            "createdAt": k["created_at"].isoformat(),
            "revokedAt": k["revoked_at"].isoformat() if k["revoked_at"] else None,
        }
        for k in rows
    ]


async def revoke_key(pool: asyncpg.Pool, integration_id: str, key_id: str) -> None:
    r = await _integration(pool, integration_id)
    done = await pool.fetchval(
        "UPDATE ingest_keys SET revoked_at = COALESCE(revoked_at, now())"
        " WHERE id = $1 AND integration_id = $2 RETURNING id",
        key_id,
        r["id"],
    )
    if done is None:
        raise NotFoundError(Code.KEY_NOT_FOUND, f"no key {key_id!r} for this integration")
