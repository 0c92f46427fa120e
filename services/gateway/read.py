"""Read API for current state, history and sync issues (admin token)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from uuid import UUID

from aiohttp import web

from services.gateway import views
from services.gateway.admin import admin
from services.gateway.http import json_response
from services.gateway.state import REGISTRY, RESOURCES
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
    page = await request.app[RESOURCES].list_resources(rt, group_key, after, limit)
    nxt = _encode_cursor(page.items[-1].resource_id) if page.more else None
    return json_response({"items": [views.resource_view(r) for r in page.items], "next": nxt})


@routes.get("/api/v1/resources/{resourceType}/{id}")
async def get_resource(request: web.Request) -> web.Response:
    admin(request)
    rt = _resource_type(request)
    rid = _resource_id(request, rt)
    found = await request.app[RESOURCES].get_resource(rt, _group_key(request), rid)
    if found is None:
        raise NotFoundError(Code.RESOURCE_NOT_FOUND, f"no {rt} resource {rid!r} in this group")
    return json_response(views.resource_view(found))


@routes.get("/api/v1/resources/{resourceType}/{id}/history")
async def history(request: web.Request) -> web.Response:
    admin(request)
    rt = _resource_type(request)
    entries = await request.app[RESOURCES].history(
        rt, _group_key(request), _resource_id(request, rt)
    )
    return json_response({"items": [views.history_view(h) for h in entries]})


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
    issues = await request.app[RESOURCES].sync_issues(
        _text(request, "table"), _integration(request), _since(request), _limit(request)
    )
    return json_response({"items": [views.sync_issue_view(i) for i in issues]})
