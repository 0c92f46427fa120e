"""Read API for current state, history and sync issues (admin token)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any
from uuid import UUID

from aiohttp import web

from services.gateway import views
from services.gateway.admin import admin
from services.gateway.http import respond
from services.gateway.state import CURSOR_KEY, INTEGRATION_DATA, REGISTRY, RESOURCES
from shared import cursors
from shared.codes import Code
from shared.errors import ApiError, NotFoundError
from shared.pg.resources import Resource

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
    """The resource type the URL names: ``<prefix>_<table>``, or ``<prefix>_<title>`` with
    the table's title in place of its name (percent-encoded, case-sensitive)."""
    rt = request.match_info["resourceType"]
    table = request.app[REGISTRY].snapshot.resource_type(rt)
    if table is None:
        raise NotFoundError(Code.RESOURCE_TYPE_NOT_FOUND, f"no resource type {rt!r}")
    return table.resource_type


def _cursor(request: web.Request, query: list[Any]) -> list[Any] | None:
    """The position of ``cursor``, which must be one this API issued for ``query``."""
    raw = request.query.get("cursor")
    if raw is None:
        return None
    try:
        return cursors.position(request.app[CURSOR_KEY], query, raw)
    except cursors.BadCursor as e:
        raise ApiError(
            Code.INVALID_CURSOR,
            "cursor is not one this API returned for this query",
            pointer="/query/cursor",
        ) from e


def _next(request: web.Request, query: list[Any], last: list[Any] | None) -> str | None:
    return None if last is None else cursors.issue(request.app[CURSOR_KEY], query, last)


def _all_groups(request: web.Request) -> bool:
    raw = request.query.get("allGroups", "false").strip().lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(
            Code.INVALID_PARAMETER, "allGroups must be true or false", pointer="/query/allGroups"
        )
    if raw in ("true", "1") and "groupKey" in request.query:
        raise ApiError(
            Code.INVALID_PARAMETER,
            "allGroups lists every groupKey: leave groupKey out",
            pointer="/query/groupKey",
        )
    return raw in ("true", "1")


def _resource_view(request: web.Request, r: Resource) -> dict[str, Any]:
    """A stored resource as read: completed with the defaults of the table's CURRENT
    schema that it lacks (stored before they were declared; the row is not rewritten),
    whose pointers ``_meta.defaultsApplied`` lists."""
    snapshot = request.app[REGISTRY].snapshot
    table = snapshot.by_type.get(r.resource_type)
    applied: list[str] = []
    if table is not None:
        data, applied = snapshot.compiled(table).plan.with_defaults(r.data)
        if applied:
            r = dataclasses.replace(r, data=data)
    view = views.resource_view(r)
    view["_meta"]["defaultsApplied"] = applied
    return view


@routes.get("/api/v1/resources/{resourceType}")
async def list_resources(request: web.Request) -> web.Response:
    admin(request)
    rt = _resource_type(request)
    limit = _limit(request)
    store = request.app[RESOURCES]
    if _all_groups(request):
        query: list[Any] = ["resources", rt, None]
        at = _cursor(request, query)
        page = await store.list_all_groups(rt, (at[0], at[1]) if at else None, limit)
        last = [page.items[-1].group_key, page.items[-1].resource_id] if page.more else None
    else:
        query = ["resources", rt, _group_key(request)]
        at = _cursor(request, query)
        page = await store.list_resources(rt, query[2], at[0] if at else None, limit)
        last = [page.items[-1].resource_id] if page.more else None
    items = [_resource_view(request, r) for r in page.items]
    return respond(request, {"items": items, "next": _next(request, query, last)}, root="resources")


@routes.get("/api/v1/resources/{resourceType}/{id}")
async def get_resource(request: web.Request) -> web.Response:
    admin(request)
    rt = _resource_type(request)
    rid = _resource_id(request, rt)
    gk = _group_key(request)
    expand = _expand(request)
    found = await request.app[RESOURCES].get_resource(rt, gk, rid)
    if found is None:
        raise NotFoundError(Code.RESOURCE_NOT_FOUND, f"no {rt} resource {rid!r} in this group")
    view = _resource_view(request, found)
    if expand:
        entries = await request.app[INTEGRATION_DATA].entries(rt, gk, rid)
        view["integrationData"] = {e.vendor_id: e.data for e in entries}
    return respond(request, view, root="resource")


def _expand(request: web.Request) -> bool:
    """``expand=integrationData``: every vendor's map inline, by vendor id."""
    raw = request.query.get("expand")
    if raw is None:
        return False
    if raw != "integrationData":
        raise ApiError(
            Code.INVALID_PARAMETER,
            "expand may only be integrationData",
            pointer="/query/expand",
        )
    return True


@routes.get("/api/v1/resources/{resourceType}/{id}/history")
async def history(request: web.Request) -> web.Response:
    admin(request)
    rt = _resource_type(request)
    rid = _resource_id(request, rt)
    entries = await request.app[RESOURCES].history(rt, _group_key(request), rid)
    if not entries:  # never existed (a deleted resource keeps its history)
        raise NotFoundError(Code.RESOURCE_NOT_FOUND, f"no {rt} resource {rid!r} in this group")
    return respond(request, {"items": [views.history_view(h) for h in entries]}, root="history")


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
    table, integration, since = _text(request, "table"), _integration(request), _since(request)
    limit = _limit(request)
    query = [
        "sync-issues",
        table,
        str(integration) if integration else None,
        request.query.get("since"),
    ]
    at = _cursor(request, query)
    issues = await request.app[RESOURCES].sync_issues(
        table, integration, since, limit + 1, at[0] if at else None
    )
    last = [issues[limit - 1].id] if len(issues) > limit else None
    items = [views.sync_issue_view(i) for i in issues[:limit]]
    return respond(
        request, {"items": items, "next": _next(request, query, last)}, root="syncIssues"
    )
