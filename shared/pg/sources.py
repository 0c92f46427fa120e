"""Pull sources persistence: specs (every revision kept), sources and their runs.

:class:`SourceStore` holds every statement on the sources tables (the run half lives in
:mod:`shared.pg.source_runs`). It takes values the gateway has checked (a spec parsed by
``shared.pull.spec.parse_spec``, params checked against it, a parsed schedule) and
returns frozen dataclasses. Secret params are sealed with the
:class:`~shared.secrets.SecretBox` before they reach PostgreSQL and opened on the way
out: the database holds only ciphertext of them, and ``SourceRow.params`` (the only place
they exist in clear) is left out of the row's ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from shared.codes import Code
from shared.errors import ConfigError, ConflictError, NotFoundError
from shared.pg.pool import Db, connection
from shared.pg.source_runs import RunRow, RunStore, default_kind, new_run_id
from shared.pull.schedule import Schedule
from shared.secrets import SecretBox

__all__ = [
    "RunRow", "SourceInput", "SourceRow", "SourceStore", "SpecRow", "default_kind", "new_run_id",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class SpecRow:
    id: str
    name: str
    revision: int
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SourceRow:
    id: str
    name: str
    spec_id: str
    spec_name: str
    params: dict[str, Any] = field(repr=False)  # secrets in clear: never logged
    secret_names: frozenset[str]
    integration_id: str
    table_name: str
    group_key: str
    mode: str
    schedule: dict[str, Any] | None
    start_time: datetime | None
    paused: bool
    next_run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    group_id: str = ""  # the integration's schema group: where ``table_name`` lives


@dataclass(frozen=True, slots=True)
class SourceInput:
    """What a source is made of, as the admin API checked it (create and PUT alike)."""

    name: str
    spec_id: str
    params: dict[str, Any] = field(repr=False)
    secret_names: frozenset[str]
    integration_id: str
    table_name: str
    group_key: str
    mode: str
    schedule: Schedule | None
    start_time: datetime | None


def _uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


def _spec(r: asyncpg.Record) -> SpecRow:
    return SpecRow(
        str(r["id"]), r["name"], r["revision"], r["spec"], r["created_at"], r["updated_at"]
    )


_SOURCE = (
    "SELECT s.*, sp.name AS spec_name, i.group_id FROM sources s"
    " JOIN source_specs sp ON sp.id = s.spec_id JOIN integrations i ON i.id = s.integration_id"
)
_SOURCE_COLUMNS = (
    "name, spec_id, params, secret_params, integration_id, table_name, group_key, mode,"
    " schedule, start_time"
)


def _spec_not_found(ref: str) -> NotFoundError:
    return NotFoundError(Code.SOURCE_SPEC_NOT_FOUND, f"no source spec {ref!r}")


def _source_not_found(ref: str) -> NotFoundError:
    return NotFoundError(Code.SOURCE_NOT_FOUND, f"no source {ref!r}")


class SourceStore(RunStore):
    """Every statement on the sources tables. ``box`` seals and opens secret params;
    without one, a source holding secrets cannot be written or read (ConfigError)."""

    def __init__(self, db: Db, box: SecretBox | None = None) -> None:
        self._db = db
        self._box = box

    # ---- specs ------------------------------------------------------------------------

    async def create_spec(self, name: str, spec: dict[str, Any]) -> SpecRow:
        """Revision 1 of a new spec (409 ``duplicate_name``)."""
        async with connection(self._db) as conn, conn.transaction():
            try:
                async with conn.transaction():
                    r = await conn.fetchrow(
                        "INSERT INTO source_specs (name, spec) VALUES ($1, $2) RETURNING *",
                        name,
                        spec,
                    )
            except asyncpg.UniqueViolationError as e:
                raise ConflictError(
                    Code.DUPLICATE_NAME, "a source spec with this name exists"
                ) from e
            assert r is not None
            await conn.execute(
                "INSERT INTO source_spec_revisions (spec_id, revision, spec, created_at)"
                " VALUES ($1, 1, $2, $3)",
                r["id"],
                spec,
                r["created_at"],
            )
        return _spec(r)

    async def get_spec(self, ref: str) -> SpecRow:
        """By id, or by name."""
        r = await self._db.fetchrow(
            "SELECT * FROM source_specs WHERE id = $1 OR name = $2"
            " ORDER BY (id = $1) DESC NULLS LAST LIMIT 1",
            _uuid(ref),
            ref,
        )
        if r is None:
            raise _spec_not_found(ref)
        return _spec(r)

    async def list_specs(self) -> list[SpecRow]:
        return [_spec(r) for r in await self._db.fetch("SELECT * FROM source_specs ORDER BY name")]

    async def update_spec(self, ref: str, spec: dict[str, Any]) -> SpecRow:
        """A new current revision (runs claimed from now on use it)."""
        async with connection(self._db) as conn, conn.transaction():
            current = await self.get_spec(ref)
            r = await conn.fetchrow(
                "UPDATE source_specs SET revision = revision + 1, spec = $2, updated_at = now()"
                " WHERE id = $1 RETURNING *",
                UUID(current.id),
                spec,
            )
            if r is None:  # deleted meanwhile
                raise _spec_not_found(ref)
            await conn.execute(
                "INSERT INTO source_spec_revisions (spec_id, revision, spec, created_at)"
                " VALUES ($1, $2, $3, $4)",
                r["id"],
                r["revision"],
                spec,
                r["updated_at"],
            )
        return _spec(r)

    async def spec_revision(self, spec_id: str, revision: int) -> dict[str, Any]:
        """The sourceSpec a run used."""
        spec: dict[str, Any] | None = await self._db.fetchval(
            "SELECT spec FROM source_spec_revisions WHERE spec_id = $1 AND revision = $2",
            _uuid(spec_id),
            revision,
        )
        if spec is None:
            raise _spec_not_found(f"{spec_id} revision {revision}")
        return spec

    async def delete_spec(self, ref: str) -> None:
        """409 ``spec_in_use`` while a source uses it."""
        spec = await self.get_spec(ref)
        try:
            await self._db.execute("DELETE FROM source_specs WHERE id = $1", UUID(spec.id))
        except asyncpg.ForeignKeyViolationError as e:
            users = ", ".join(repr(n) for n in await self.sources_using(spec.id))
            raise ConflictError(
                Code.SPEC_IN_USE,
                f"source spec {spec.name!r} is used by source(s) {users}: delete them or"
                " point them at another spec first",
            ) from e

    # ---- sources ----------------------------------------------------------------------

    def _seal(self, src: SourceInput) -> tuple[dict[str, Any], bytes | None]:
        plain = {k: v for k, v in src.params.items() if k not in src.secret_names}
        secret = {k: v for k, v in src.params.items() if k in src.secret_names}
        if not secret:
            return plain, None
        return plain, self._require_box().seal(secret)

    def _require_box(self) -> SecretBox:
        if self._box is None:
            raise ConfigError("INGESTD_SECRET_KEY must be set to read or write pull sources")
        return self._box

    def _source(self, r: asyncpg.Record) -> SourceRow:
        params = dict(r["params"])
        secret_names: frozenset[str] = frozenset()
        if r["secret_params"] is not None:
            secret = self._require_box().open(r["secret_params"])
            secret_names = frozenset(secret)
            params.update(secret)
        return SourceRow(
            str(r["id"]), r["name"], str(r["spec_id"]), r["spec_name"], params, secret_names,
            str(r["integration_id"]), r["table_name"], r["group_key"], r["mode"],
            r["schedule"], r["start_time"], r["paused"], r["next_run_at"],
            r["created_at"], r["updated_at"], str(r["group_id"]),
        )  # fmt: skip

    def _values(self, src: SourceInput) -> list[Any]:
        plain, sealed = self._seal(src)
        return [
            src.name, _uuid(src.spec_id), plain, sealed, _uuid(src.integration_id),
            src.table_name, src.group_key, src.mode,
            None if src.schedule is None else src.schedule.as_json(), src.start_time,
        ]  # fmt: skip

    @staticmethod
    def _next_run(schedule: Schedule | None) -> datetime | None:
        return None if schedule is None else schedule.next_after(datetime.now(UTC))

    async def create_source(self, src: SourceInput) -> SourceRow:
        """A scheduled source first runs one period (or the cron's next time) from now."""
        try:
            r = await self._db.fetchrow(
                f"INSERT INTO sources ({_SOURCE_COLUMNS}, next_run_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                *self._values(src),
                self._next_run(src.schedule),
            )
        except asyncpg.UniqueViolationError as e:
            raise ConflictError(Code.DUPLICATE_NAME, "a source with this name exists") from e
        except asyncpg.ForeignKeyViolationError as e:  # the spec was deleted meanwhile
            raise _spec_not_found(src.spec_id) from e
        assert r is not None
        return await self.get_source(str(r["id"]))

    async def get_source(self, ref: str) -> SourceRow:
        """By id, or by name."""
        r = await self._db.fetchrow(
            _SOURCE + " WHERE s.id = $1 OR s.name = $2 ORDER BY (s.id = $1) DESC NULLS LAST"
            " LIMIT 1",
            _uuid(ref),
            ref,
        )
        if r is None:
            raise _source_not_found(ref)
        return self._source(r)

    async def list_sources(self) -> list[SourceRow]:
        return [self._source(r) for r in await self._db.fetch(_SOURCE + " ORDER BY s.name")]

    async def update_source(self, source_id: str, src: SourceInput) -> SourceRow:
        """Replace everything ``src`` holds; a changed schedule restarts its clock."""
        sets = ", ".join(f"{c.strip()} = ${n}" for n, c in enumerate(_SOURCE_COLUMNS.split(","), 2))
        try:
            done = await self._db.fetchval(
                f"UPDATE sources SET {sets}, updated_at = now(), next_run_at = CASE"
                " WHEN schedule IS NOT DISTINCT FROM $10 THEN next_run_at ELSE $12 END"
                " WHERE id = $1 RETURNING id",
                _uuid(source_id),
                *self._values(src),
                self._next_run(src.schedule),
            )
        except asyncpg.UniqueViolationError as e:
            raise ConflictError(Code.DUPLICATE_NAME, "a source with this name exists") from e
        except asyncpg.ForeignKeyViolationError as e:
            raise _spec_not_found(src.spec_id) from e
        if done is None:
            raise _source_not_found(source_id)
        return await self.get_source(source_id)

    async def delete_source(self, source_id: str) -> None:
        """Its open run is cancelled first (a stage running it stops at its next
        heartbeat), then the source and its runs go."""
        async with connection(self._db) as conn, conn.transaction():
            await conn.execute(
                "UPDATE source_runs SET status = 'cancelled', finished_at = now()"
                " WHERE source_id = $1 AND status IN ('queued', 'running')",
                _uuid(source_id),
            )
            done = await conn.fetchval(
                "DELETE FROM sources WHERE id = $1 RETURNING id", _uuid(source_id)
            )
        if done is None:
            raise _source_not_found(source_id)

    async def set_paused(self, source_id: str, paused: bool) -> SourceRow:
        """A paused source's schedule requests no run (runs asked for by hand still go)."""
        done = await self._db.fetchval(
            "UPDATE sources SET paused = $2, updated_at = now() WHERE id = $1 RETURNING id",
            _uuid(source_id),
            paused,
        )
        if done is None:
            raise _source_not_found(source_id)
        return await self.get_source(source_id)

    async def sources_using(self, spec_id: str) -> list[str]:
        """Names of the sources that use a spec (for messages)."""
        rows = await self._db.fetch(
            "SELECT name FROM sources WHERE spec_id = $1 ORDER BY name", _uuid(spec_id)
        )
        return [r["name"] for r in rows]
