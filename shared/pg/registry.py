"""Registry persistence: schema groups, custom schemas, integrations, ingest keys.

:class:`RegistryStore` holds every registry statement. It takes values the gateway
has already checked (names, identifiers, a schema body prepared by
:func:`shared.schema_rules.prepare_schema`) and returns frozen dataclasses; a lookup
that finds nothing raises :class:`NotFoundError`, a unique clash :class:`ConflictError`.

:class:`RegistryCache` polls the registry's generation (``registry_state``, bumped by
triggers in the same transaction as every change to the registry tables) and reloads
the :class:`~shared.registry.RegistrySnapshot` when it moves, so a revoked key is
refused by every process within one poll interval (default 0.5 s) without a restart,
and no admin write depends on Redis being up.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from shared import keys, tasks
from shared.codes import Code
from shared.errors import ConflictError, NotFoundError
from shared.integration_data import slug
from shared.outage import UNREACHABLE, Outages
from shared.pg.pool import Db, connection
from shared.registry import KeyInfo, RegistrySnapshot, TableInfo

log = logging.getLogger("ingestd.registry")


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    name: str
    prefix: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Schema:
    """One version of a table's custom schema (``created_at``: when this version was)."""

    id: str
    group_id: str
    table: str
    resource_type: str
    title: str | None
    version: int
    body: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Integration:
    id: str
    name: str
    group_id: str
    created_at: datetime
    vendor_id: str = ""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An ingest key as listed: never its secret."""

    key_id: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just created: the only time its plaintext exists outside the client."""

    key_id: str
    plaintext: str
    created_at: datetime


def _uuid(value: str, code: Code, message: str) -> UUID:
    try:
        return UUID(value)
    except ValueError as e:  # not an id we could have issued: there is no such thing
        raise NotFoundError(code, message) from e


def _group_id(group_id: str) -> UUID:
    return _uuid(group_id, Code.SCHEMA_GROUP_NOT_FOUND, f"no schema group {group_id!r}")


def _group(r: asyncpg.Record) -> Group:
    return Group(str(r["id"]), r["name"], r["prefix"], r["created_at"])


def _schema(r: asyncpg.Record, version: int, body: Any, created: datetime) -> Schema:
    return Schema(
        str(r["id"]),
        str(r["group_id"]),
        r["table_name"],
        r["resource_type"],
        r["title"],
        version,
        body,
        created,
    )


#: the rules of migration 0006 (its index and trigger) a clash names as its constraint
_TITLE_RULES: dict[str, tuple[Code, str]] = {
    "schemas_group_title": (
        Code.DUPLICATE_TITLE,
        "another table of this schema group is titled {title!r}",
    ),
    "schemas_title_is_a_table": (
        Code.AMBIGUOUS_TITLE,
        "title {title!r} is the name of another table of this schema group: a URL naming "
        "it could mean either table",
    ),
    "schemas_table_is_a_title": (
        Code.AMBIGUOUS_TITLE,
        "table name {table!r} is the title of another table of this schema group: a URL "
        "naming it could mean either table",
    ),
    "schemas_title_is_a_resource_type": (
        Code.AMBIGUOUS_TITLE,
        "title {title!r} reads as resource type <prefix>_{title}, which another table has: "
        "a read URL naming it could mean either table",
    ),
    "schemas_resource_type_is_a_title": (
        Code.AMBIGUOUS_TITLE,
        "resource type {rt!r} is how another table's title reads in the read API "
        "(<prefix>_<title>): a read URL naming it could mean either table",
    ),
}


def _title_clash(
    e: asyncpg.UniqueViolationError, title: str | None, table: str, rt: str
) -> ConflictError | None:
    rule = _TITLE_RULES.get(e.constraint_name or "")
    if rule is None:
        return None
    return ConflictError(rule[0], rule[1].format(title=title, table=table, rt=rt))


def _integration(r: asyncpg.Record) -> Integration:
    return Integration(str(r["id"]), r["name"], str(r["group_id"]), r["created_at"], r["vendor_id"])


class RegistryStore:
    """Every statement on the registry tables and ``registry_state``."""

    def __init__(self, db: Db) -> None:
        self._db = db

    # ---- the snapshot every process holds ------------------------------------------

    async def generation(self) -> int:
        gen: int = await self._db.fetchval("SELECT generation FROM registry_state WHERE id = 1")
        return gen

    async def load_snapshot(self) -> RegistrySnapshot:
        snap = RegistrySnapshot()
        rows = await self._db.fetch(
            "SELECT s.id, s.group_id, s.table_name, s.resource_type, s.current_version, s.title,"
            " v.body FROM schemas s JOIN schema_versions v"
            " ON v.schema_id = s.id AND v.version = s.current_version"
        )
        for r in rows:
            snap.add_table(
                TableInfo(
                    str(r["id"]),
                    str(r["group_id"]),
                    r["table_name"],
                    r["resource_type"],
                    r["current_version"],
                    r["title"],
                    r["body"],
                )
            )
        for r in await self._db.fetch(
            "SELECT k.id, k.integration_id, i.group_id, k.secret_sha256, i.vendor_id"
            " FROM ingest_keys k"
            " JOIN integrations i ON i.id = k.integration_id WHERE k.revoked_at IS NULL"
        ):
            snap.add_key(
                KeyInfo(
                    r["id"],
                    str(r["integration_id"]),
                    str(r["group_id"]),
                    bytes(r["secret_sha256"]),
                    r["vendor_id"],
                )
            )
        return snap

    # ---- schema groups -------------------------------------------------------------

    async def create_group(self, name: str, prefix: str) -> Group:
        try:
            r = await self._db.fetchrow(
                "INSERT INTO schema_groups (name, prefix) VALUES ($1, $2) RETURNING *",
                name,
                prefix,
            )
        except asyncpg.UniqueViolationError as e:
            if "prefix" in (e.constraint_name or ""):
                raise ConflictError(
                    Code.DUPLICATE_PREFIX, "a schema group with this prefix exists"
                ) from e
            raise ConflictError(Code.DUPLICATE_NAME, "a schema group with this name exists") from e
        assert r is not None
        return _group(r)

    async def list_groups(self) -> list[Group]:
        return [
            _group(r) for r in await self._db.fetch("SELECT * FROM schema_groups ORDER BY name")
        ]

    async def get_group(self, group_id: str) -> Group:
        return _group(await self._group_row(self._db, group_id))

    @staticmethod
    async def _group_row(db: Db, group_id: str) -> asyncpg.Record:
        r = await db.fetchrow("SELECT * FROM schema_groups WHERE id = $1", _group_id(group_id))
        if r is None:
            raise NotFoundError(Code.SCHEMA_GROUP_NOT_FOUND, f"no schema group {group_id!r}")
        return r

    # ---- custom schemas and their versions -----------------------------------------

    async def create_schema(
        self, group_id: str, table: str, body: dict[str, Any], title: str | None
    ) -> Schema:
        """Version 1 of a new table; its resource type is the group's prefix + table."""
        async with connection(self._db) as conn, conn.transaction():
            group = await self._group_row(conn, group_id)
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
                raise _title_clash(e, title, table, rt) or await self._schema_clash(
                    conn, group["id"], table, rt
                ) from e
            assert r is not None
            v = await conn.fetchrow(
                "INSERT INTO schema_versions (schema_id, version, body) VALUES ($1, 1, $2)"
                " RETURNING created_at",
                r["id"],
                body,
            )
            assert v is not None
        return _schema(r, 1, body, v["created_at"])

    @staticmethod
    async def _schema_clash(
        conn: asyncpg.Connection, group_id: UUID, table: str, rt: str
    ) -> ConflictError:
        owner = await conn.fetchval("SELECT group_id FROM schemas WHERE resource_type = $1", rt)
        if owner is not None and owner != group_id:
            return ConflictError(
                Code.DUPLICATE_RESOURCE_TYPE,
                f"resource type {rt!r} is already used by a table of another schema group",
            )
        return ConflictError(
            Code.DUPLICATE_TABLE, f"table {table!r} (resource type {rt!r}) exists already"
        )

    async def update_schema(
        self, group_id: str, table: str, body: dict[str, Any], title: str | None = None
    ) -> Schema:
        """A new current version; ``title`` None keeps the table's title. ``table`` is
        the table's name or its title."""
        async with connection(self._db) as conn, conn.transaction():
            r = await self._schema_row(conn, group_id, table, lock=True)
            version = r["current_version"] + 1
            v = await conn.fetchrow(
                "INSERT INTO schema_versions (schema_id, version, body) VALUES ($1, $2, $3)"
                " RETURNING created_at",
                r["id"],
                version,
                body,
            )
            try:
                r = await conn.fetchrow(
                    "UPDATE schemas SET current_version = $2, updated_at = now(),"
                    " title = COALESCE($3, title) WHERE id = $1 RETURNING *",
                    r["id"],
                    version,
                    title,
                )
            except asyncpg.UniqueViolationError as e:
                clash = _title_clash(e, title, r["table_name"], r["resource_type"])
                if clash is None:
                    raise
                raise clash from e
            assert r is not None and v is not None
        return _schema(r, version, body, v["created_at"])

    async def check_title(self, group_id: str, table: str, title: str) -> None:
        """Refuse, as :meth:`update_schema` would, a title the table cannot take; stores
        nothing (the title is tried in a transaction that is always rolled back)."""
        async with connection(self._db) as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                r = await self._schema_row(conn, group_id, table)
                try:
                    await conn.execute(
                        "UPDATE schemas SET title = $2 WHERE id = $1", r["id"], title
                    )
                except asyncpg.UniqueViolationError as e:
                    clash = _title_clash(e, title, r["table_name"], r["resource_type"])
                    if clash is None:
                        raise
                    raise clash from e
            finally:
                await tx.rollback()

    async def list_schemas(self, group_id: str) -> list[Schema]:
        """The current version of every table of the group, by table name."""
        await self._group_row(self._db, group_id)
        rows = await self._db.fetch(
            "SELECT s.*, v.body, v.created_at AS vcreated FROM schemas s JOIN schema_versions v"
            " ON v.schema_id = s.id AND v.version = s.current_version"
            " WHERE s.group_id = $1 ORDER BY s.table_name",
            _group_id(group_id),
        )
        return [_schema(r, r["current_version"], r["body"], r["vcreated"]) for r in rows]

    async def get_schema(self, group_id: str, table: str) -> Schema:
        r = await self._schema_row(self._db, group_id, table)
        v = await self._db.fetchrow(
            "SELECT body, created_at FROM schema_versions WHERE schema_id = $1 AND version = $2",
            r["id"],
            r["current_version"],
        )
        assert v is not None
        return _schema(r, r["current_version"], v["body"], v["created_at"])

    async def list_versions(self, group_id: str, table: str) -> list[Schema]:
        r = await self._schema_row(self._db, group_id, table)
        rows = await self._db.fetch(
            "SELECT version, body, created_at FROM schema_versions WHERE schema_id = $1"
            " ORDER BY version",
            r["id"],
        )
        return [_schema(r, v["version"], v["body"], v["created_at"]) for v in rows]

    async def _schema_row(
        self, db: Db, group_id: str, table: str, lock: bool = False
    ) -> asyncpg.Record:
        """The table named ``table``, or else the one titled ``table`` (one at most: a title
        is never another table's name, see migration 0006)."""
        r = await db.fetchrow(
            "SELECT * FROM schemas WHERE group_id = $1 AND (table_name = $2 OR title = $2)"
            " ORDER BY table_name = $2 DESC LIMIT 1" + (" FOR UPDATE" if lock else ""),
            _group_id(group_id),
            table,
        )
        if r is None:
            await self._group_row(db, group_id)
            raise NotFoundError(Code.SCHEMA_NOT_FOUND, f"no table {table!r} in this schema group")
        return r

    # ---- integrations and their ingest keys ----------------------------------------

    async def create_integration(
        self, name: str, group_id: str, vendor_id: str | None = None
    ) -> tuple[Integration, IssuedKey]:
        """The integration and its first ingest key, in one transaction. ``vendor_id``
        None: its name slugged, with ``-2``, ``-3``… when another integration has it; a
        vendor id given and taken is 409 ``duplicate_vendor_id``."""
        async with connection(self._db) as conn, conn.transaction():
            group = await self._group_row(conn, group_id)
            vid = vendor_id or await self._free_vendor_id(conn, slug(name))
            try:
                r = await conn.fetchrow(
                    "INSERT INTO integrations (name, group_id, vendor_id) VALUES ($1, $2, $3)"
                    " RETURNING *",
                    name,
                    group["id"],
                    vid,
                )
            except asyncpg.UniqueViolationError as e:
                raise ConflictError(
                    Code.DUPLICATE_VENDOR_ID, f"another integration has vendor id {vid!r}"
                ) from e
            assert r is not None
            key = await self._insert_key(conn, r["id"])
        return _integration(r), key

    @staticmethod
    async def _free_vendor_id(conn: asyncpg.Connection, base: str) -> str:
        taken = {
            v
            for (v,) in await conn.fetch(
                "SELECT vendor_id FROM integrations WHERE vendor_id = $1 OR vendor_id LIKE $2",
                base,
                base.replace("_", "\\_") + "-%",
            )
        }
        n, vid = 1, base
        while vid in taken:
            n += 1
            vid = f"{base}-{n}"
        return vid

    async def list_integrations(self) -> list[Integration]:
        rows = await self._db.fetch("SELECT * FROM integrations ORDER BY created_at, id")
        return [_integration(r) for r in rows]

    async def get_integration(self, integration_id: str) -> Integration:
        return _integration(await self._integration_row(self._db, integration_id))

    async def add_key(self, integration_id: str) -> IssuedKey:
        async with connection(self._db) as conn, conn.transaction():
            r = await self._integration_row(conn, integration_id)
            return await self._insert_key(conn, r["id"])

    async def list_keys(self, integration_id: str) -> list[KeyRecord]:
        r = await self._integration_row(self._db, integration_id)
        rows = await self._db.fetch(
            "SELECT id, created_at, revoked_at FROM ingest_keys WHERE integration_id = $1"
            " ORDER BY created_at, id",
            r["id"],
        )
        return [KeyRecord(k["id"], k["created_at"], k["revoked_at"]) for k in rows]

    async def revoke_key(self, integration_id: str, key_id: str) -> None:
        """Revoked at once for good (revoking again keeps the first time)."""
        r = await self._integration_row(self._db, integration_id)
        done = await self._db.fetchval(
            "UPDATE ingest_keys SET revoked_at = COALESCE(revoked_at, now())"
            " WHERE id = $1 AND integration_id = $2 RETURNING id",
            key_id,
            r["id"],
        )
        if done is None:
            raise NotFoundError(Code.KEY_NOT_FOUND, f"no key {key_id!r} for this integration")

    @staticmethod
    async def _integration_row(db: Db, iid: str) -> asyncpg.Record:
        message = f"no integration {iid!r}"
        r = await db.fetchrow(
            "SELECT * FROM integrations WHERE id = $1",
            _uuid(iid, Code.INTEGRATION_NOT_FOUND, message),
        )
        if r is None:
            raise NotFoundError(Code.INTEGRATION_NOT_FOUND, message)
        return r

    @staticmethod
    async def _insert_key(conn: asyncpg.Connection, integration_id: UUID) -> IssuedKey:
        k = keys.new_key()
        r = await conn.fetchrow(
            "INSERT INTO ingest_keys (id, integration_id, secret_sha256) VALUES ($1, $2, $3)"
            " RETURNING created_at",
            k.key_id,
            integration_id,
            k.secret_sha256,
        )
        assert r is not None
        return IssuedKey(k.key_id, k.plaintext, r["created_at"])


class RegistryCache:
    """The snapshot a process serves from, reloaded whenever the generation moves."""

    def __init__(self, store: RegistryStore, poll_ms: int) -> None:
        self._store = store
        self._poll = poll_ms / 1000
        self._gen: int | None = None
        self.snapshot = RegistrySnapshot()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh(force=True)
        self._task = asyncio.create_task(self._loop(), name="registry-poll")

    async def stop(self) -> None:
        await tasks.stop(self._task, log)

    async def at_least(self, generation: int) -> None:
        """Refresh now unless this cache already holds ``generation`` (or a later one)."""
        if self._gen is None or self._gen < generation:
            await self.refresh()

    async def refresh(self, force: bool = False) -> None:
        gen = await self._store.generation()
        if force or gen != self._gen:
            snap = await self._store.load_snapshot()
            snap.keep_compiled(self.snapshot)
            self.snapshot = snap
            self._gen = gen

    async def _loop(self) -> None:
        outages = Outages(log)
        while True:
            await asyncio.sleep(self._poll)
            try:
                await self.refresh()
            except UNREACHABLE as e:  # keep serving the last snapshot; one line per outage
                tasks.reraise_if_cancelled()
                outages.failed(e)
                continue
            except Exception:
                tasks.reraise_if_cancelled()
                log.exception("registry refresh failed")
                continue
            outages.all_answered()
