"""The direct synchronous peer of figure 15: what a team would build instead of ingestd.

One aiohttp process (``python -m tests.bench.peer --port P --dsn D``) that, per
single-event POST and before answering, authenticates the ingest key (a dict lookup,
as the gateway's hot path), parses the body with orjson, validates it with jsonschema-rs
against the bench's ``employee`` schema (``prepare_schema(EMPLOYEE_SCHEMA)``, the
validator options ingestd uses), extracts id, name and important fields (the same
dict walk of the schema's ``resmo`` paths), takes the content hash
(``shared.schema_rules.content_hash``) and in ONE PostgreSQL transaction (an asyncpg
pool made by ``shared.pg.pool.create_pool``, ingestd's codecs and release) does
``SELECT … FOR UPDATE`` of the current row, the upsert (version + 1; skipped when the
hash is unchanged), a history row with the RFC 6902 patch (``shared.projection.
json_patch``: jsonpatch for updates, as the projector) and a receipt row; then answers
200. A body that is not JSON or not valid against the schema: 400, nothing written.

Its own tables, ``peer_resources`` / ``peer_changes`` / ``peer_receipts``, are made
``LIKE`` ingestd's ``resources`` / ``resource_changes`` / ``ingest_events`` ``INCLUDING
ALL``: the same columns, defaults, constraints and indexes (:func:`create_tables`).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import asyncpg
import jsonschema_rs
import orjson
from aiohttp import web

from shared.events import new_event_id
from shared.paths import MISSING, Step, path_steps, walk
from shared.pg.pool import create_pool
from shared.projection import json_patch
from shared.schema_rules import content_hash, prepare_schema
from tests.conftest import EMPLOYEE_SCHEMA

TABLES = {
    "peer_resources": "resources",
    "peer_changes": "resource_changes",
    "peer_receipts": "ingest_events",
}
PATH = "/integration/custom-data/event/employee"

SELECT_SQL = """
SELECT data, content_hash, version FROM peer_resources
WHERE resource_type = $1 AND group_key = $2 AND resource_id = $3 FOR UPDATE
"""
UPSERT_SQL = """
INSERT INTO peer_resources (resource_type, group_key, resource_id, name, important_fields,
    data, content_hash, version, created_at, updated_at, last_event_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)
ON CONFLICT (resource_type, group_key, resource_id) DO UPDATE SET
    name = EXCLUDED.name, important_fields = EXCLUDED.important_fields, data = EXCLUDED.data,
    content_hash = EXCLUDED.content_hash, version = EXCLUDED.version,
    updated_at = EXCLUDED.updated_at, last_event_id = EXCLUDED.last_event_id
"""
HISTORY_SQL = """
INSERT INTO peer_changes (resource_type, group_key, resource_id, version, op, patch, after,
    event_id, received_at, applied_at, name, important_fields, content_hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
"""
RECEIPT_SQL = """
INSERT INTO peer_receipts (event_id, integration_id, table_name, resource_type, group_key,
    kind, status, created, updated, unchanged, received_at, processed_at)
VALUES ($1, $2, $3, $4, $5, 'single', 'applied', $6, $7, $8, $9, $10)
"""


async def create_tables(conn: asyncpg.Connection, *, empty: bool = True) -> None:
    """The peer's tables (a bench fixture, not the product), emptied when ``empty``."""
    for table, like in TABLES.items():
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (LIKE {like} INCLUDING ALL)")
    if empty:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")


class Schema:
    """The employee schema's validator and its resmo id / name / important-field paths."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = prepare_schema(body)
        self.validator = jsonschema_rs.Draft202012Validator(
            self.body, validate_formats=True, offline=True
        )
        resmo = self.body["resmo"]
        self.id = self._steps(resmo["id"])
        self.name = self._steps(resmo["name"]) if resmo.get("name") else None
        self.important = [(p, self._steps(p)) for p in resmo.get("importantFields", [])]

    @staticmethod
    def _steps(path: str) -> tuple[Step, ...]:
        steps = path_steps(path)
        if steps is None:
            raise ValueError(f"the peer walks singular paths only: {path!r}")
        return steps

    def error(self, doc: Any) -> str | None:
        """None when valid, else the first validation error's message."""
        if self.validator.is_valid(doc):
            return None
        first = next(iter(self.validator.iter_errors(doc)), None)
        return str(getattr(first, "message", first)) if first is not None else "invalid"

    def extract(self, doc: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
        rid = walk(doc, self.id)
        rid = rid if isinstance(rid, str) and rid else None
        name = None
        if self.name is not None:
            v = walk(doc, self.name)
            if v is not MISSING and v is not None and not isinstance(v, dict | list):
                name = v if isinstance(v, str) else orjson.dumps(v).decode()
        important = {}
        for raw, steps in self.important:
            v = walk(doc, steps)
            if v is not MISSING:
                important[raw] = v
        return rid, name, important


def _bad(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, dumps=_dumps)


def _dumps(v: Any) -> str:
    return orjson.dumps(v).decode()


def make_app(
    pool: asyncpg.Pool, keys: dict[str, str], resource_type: str = "employee"
) -> web.Application:
    schema = Schema(EMPLOYEE_SCHEMA)
    table = "employee"

    async def ingest(request: web.Request) -> web.Response:
        integration = keys.get(request.headers.get("X-Ingest-Key", ""))
        if integration is None:
            return _bad(401, "unknown or missing ingest key")
        received = datetime.now(UTC)
        raw = await request.read()
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            return _bad(400, f"the body is not JSON: {e}")
        if not isinstance(doc, dict):
            return _bad(400, "the body must be a JSON object")
        err = schema.error(doc)
        if err is not None:
            return _bad(400, f"invalid: {err}")
        rid, name, important = schema.extract(doc)
        if rid is None:
            return _bad(400, "the resource has no id")
        digest = content_hash(doc)
        gk = request.query.get("groupKey", "")
        event_id = new_event_id()
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(SELECT_SQL, resource_type, gk, rid)
            now = datetime.now(UTC)
            if row is not None and row["content_hash"] == digest:
                op, version = "unchanged", row["version"]
            else:
                op = "created" if row is None else "updated"
                version = 1 if row is None else row["version"] + 1
                patch = json_patch({} if row is None else row["data"], doc)
                await conn.execute(
                    UPSERT_SQL, resource_type, gk, rid, name, important, doc, digest,
                    version, now, event_id,
                )  # fmt: skip
                await conn.execute(
                    HISTORY_SQL, resource_type, gk, rid, version, op, patch, doc, event_id,
                    received, now, name, important, digest,
                )  # fmt: skip
            await conn.execute(
                RECEIPT_SQL, event_id, integration, table, resource_type, gk,
                int(op == "created"), int(op == "updated"), int(op == "unchanged"),
                received, now,
            )  # fmt: skip
        body = {"id": event_id, "status": "applied", "op": op, "resourceId": rid}
        return web.json_response(body, dumps=_dumps)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post(PATH, ingest)
    app.router.add_get("/health", health)
    return app


async def serve(args: argparse.Namespace) -> web.Application:
    pool = await create_pool(args.dsn, max_size=args.pool)
    async with pool.acquire() as conn:
        await create_tables(conn, empty=False)
    app = make_app(pool, {args.key: args.integration}, args.resource_type)

    async def close_pool(_: web.Application) -> None:
        await pool.close()

    app.on_cleanup.append(close_pool)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.peer", description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--key", default="peer-key", help="the ingest key it accepts")
    ap.add_argument("--integration", default="00000000-0000-0000-0000-000000000001")
    ap.add_argument("--resource-type", default="employee")
    ap.add_argument("--pool", type=int, default=10, help="pool size (the gateway's is 10)")
    args = ap.parse_args()
    web.run_app(serve(args), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
