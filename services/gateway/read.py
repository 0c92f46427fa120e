"""Read API for current state, history and sync issues (admin token)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any
from uuid import UUID

from aiohttp import web

from services.gateway.admin import admin
from services.gateway.http import json_response
from services.gateway.state import PG, REGISTRY
from shared.codes import Code
from shared.errors import ApiError, NotFoundError

routes = web.RouteTableDef()
MAX_LIMIT = 1000


def _limit(request: web.Request, default: int = 100) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"limit must be an integer from 1 to {MAX_LIMIT}",
            pointer="/query/limit",
        )
    return int(raw)


def _text(request: web.Request, name: str, default: str | None = None) -> str | None:
    """A query parameter compared with text columns: PostgreSQL text cannot hold U+0000,
    and asking it to fails the query, so such a value is refused up front."""
    value = request.query.get(name, default)
    if value is not None and "\x00" in value:
        raise ApiError(
            Code.INVALID_PARAMETER, f"{name} must not contain U+0000", pointer=f"/query/{name}"
        )
    return value


def _group_key(request: web.Request) -> str:
    return _text(request, "groupKey", "") or ""


def _resource_id(request: web.Request, rt: str) -> str:
    rid = request.match_info["id"]
    if "\x00" in rid:  # cannot be stored, so there is no such resource
        raise NotFoundError(Code.RESOURCE_NOT_FOUND, f"no {rt} resource {rid!r} in this group")
    return rid


def _resource_type(request: web.Request) -> str:
    rt = request.match_info["resourceType"]
    if rt not in request.app[REGISTRY].snapshot.by_type:
        raise NotFoundError(Code.RESOURCE_TYPE_NOT_FOUND, f"no resource type {rt!r}")
    return rt


def resource_json(r: Any) -> dict[str, Any]:
    return {
        "id": r["resource_id"],
        "name": r["name"],
        "importantFields": r["important_fields"],
        "data": r["data"],
        "_meta": {
            "resourceType": r["resource_type"],
            "groupKey": r["group_key"],
            "version": r["version"],
            "contentHash": r["content_hash"],
            "createdAt": r["created_at"].isoformat(),
            "updatedAt": r["updated_at"].isoformat(),
            "lastEventId": r["last_event_id"],
        },
    }


def _encode_cursor(rid: str) -> str:
    return base64.urlsafe_b64encode(rid.encode()).decode().rstrip("=")


def _decode_cursor(raw: str) -> str:
    """Strict: a cursor with characters outside the URL-safe alphabet (which the lenient
    decoder would drop, restarting the listing) or one PostgreSQL cannot compare is refused."""
    try:
        padded = (raw + "=" * (-len(raw) % 4)).encode("ascii")
        rid = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError) as e:
        raise ApiError(
            Code.INVALID_CURSOR, "cursor is not one this API returned", pointer="/query/cursor"
        ) from e
    if not rid or "\x00" in rid:
        raise ApiError(
            Code.INVALID_CURSOR, "cursor is not one this API returned", pointer="/query/cursor"
        )
    return rid


@routes.get("/api/v1/resources/{resourceType}")
async def list_resources(request: web.Request) -> web.Response:
    admin(request)
    rt = _resource_type(request)
    group_key = _group_key(request)
    limit = _limit(request)
    cursor = request.query.get("cursor")
    after = _decode_cursor(cursor) if cursor else None
    rows = await request.app[PG].fetch(
        "SELECT * FROM resources WHERE resource_type = $1 AND group_key = $2"
        " AND ($3::text IS NULL OR resource_id > $3) ORDER BY resource_id LIMIT $4",
        rt,
        group_key,
        after,
        limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = _encode_cursor(rows[-1]["resource_id"]) if more else None
    return json_response({"items": [resource_json(r) for r in rows], "next": nxt})


@routes.get("/api/v1/resources/{resourceType}/{id}")
async def get_resource(request: web.Request) -> web.Response:
    admin(request)
    rt = _resource_type(request)
    rid = _resource_id(request, rt)
    row = await request.app[PG].fetchrow(
        "SELECT * FROM resources WHERE resource_type = $1 AND group_key = $2 AND resource_id = $3",
        rt,
        _group_key(request),
        rid,
    )
    if row is None:
        raise NotFoundError(Code.RESOURCE_NOT_FOUND, f"no {rt} resource {rid!r} in this group")
    return json_response(resource_json(row))


@routes.get("/api/v1/resources/{resourceType}/{id}/history")
async def history(request: web.Request) -> web.Response:
    admin(request)
    rt = _resource_type(request)
    rows = await request.app[PG].fetch(
        "SELECT * FROM resource_changes WHERE resource_type = $1 AND group_key = $2"
        " AND resource_id = $3 ORDER BY version",
        rt,
        _group_key(request),
        _resource_id(request, rt),
    )
    items = [
        {
            "version": r["version"],
            "op": r["op"],
            "event": r["event"],
            "actor": r["actor"],
            "patch": r["patch"],
            "after": r["after"],
            "eventId": r["event_id"],
            "receivedAt": r["received_at"].isoformat(),
            "appliedAt": r["applied_at"].isoformat(),
        }
        for r in rows
    ]
    return json_response({"items": items})


def _since(request: web.Request) -> datetime | None:
    raw = request.query.get("since")
    if raw is None:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as e:
        raise ApiError(
            Code.INVALID_PARAMETER, "since must be an ISO-8601 timestamp", pointer="/query/since"
        ) from e


def _integration(request: web.Request) -> UUID | None:
    raw = request.query.get("integration")
    if raw is None:
        return None
    try:
        return UUID(raw)
    except ValueError as e:
        raise ApiError(
            Code.INVALID_PARAMETER,
            "integration must be an integration id",
            pointer="/query/integration",
        ) from e


@routes.get("/api/v1/sync-issues")
async def sync_issues(request: web.Request) -> web.Response:
    admin(request)
    rows = await request.app[PG].fetch(
        "SELECT * FROM sync_issues WHERE ($1::text IS NULL OR table_name = $1)"
        " AND ($2::uuid IS NULL OR integration_id = $2)"
        " AND ($3::timestamptz IS NULL OR created_at >= $3)"
        " ORDER BY id DESC LIMIT $4",
        _text(request, "table"),
        _integration(request),
        _since(request),
        _limit(request),
    )
    items = [
        {
            "id": r["id"],
            "eventId": r["event_id"],
            "integration": str(r["integration_id"]),
            "table": r["table_name"],
            "resourceType": r["resource_type"],
            "groupKey": r["group_key"],
            "resourceId": r["resource_id"],
            "index": r["item_index"],
            "code": r["code"],
            "message": r["message"],
            "pointer": r["pointer"],
            "createdAt": r["created_at"].isoformat(),
        }
        for r in rows
    ]
    return json_response({"items": items})
