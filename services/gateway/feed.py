"""The change feed API: ``GET /api/v1/changes`` (admin token, or an ingest key).

Every change of resource history exactly once, in feed order (see :mod:`shared.pg.feed`
for why no later commit can land behind a cursor), filtered by resource type and
groupKey. An ingest key reads only the changes of its schema group's tables; another
group's resource type is 404 for it, as in the integration-data API. ``wait`` long-polls:
the answer comes as soon as a change after the cursor exists (a NOTIFY from the
projector wakes the waiters, a short timer covers what notifies nobody), or with no
items once ``wait`` seconds have passed. ``next`` is always a cursor: the feed never
ends.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from services.gateway.http import client_gone, is_admin, respond, wants_xml
from services.gateway.ingest import authenticate
from services.gateway.read import _limit, _text
from services.gateway.state import FEED, REGISTRY, SETTINGS
from shared import feed
from shared.codes import Code
from shared.errors import ApiError, NotFoundError
from shared.pg.feed import RECHECK_S, change_view
from shared.registry import KeyInfo

routes = web.RouteTableDef()
MAX_WAIT_S = 30.0


def _caller(request: web.Request) -> KeyInfo | None:
    """None for the admin token, else the ingest key (401 when it is neither)."""
    if is_admin(request, request.app[SETTINGS].admin_token):
        return None
    return authenticate(request)


def _resource_types(request: web.Request, key: KeyInfo | None) -> list[str] | None:
    """The resource types to list: the one asked for, else (for an ingest key) every
    table's of its schema group, else (admin) all."""
    snapshot = request.app[REGISTRY].snapshot
    rt = _text(request, "resourceType")
    if rt is None:
        if key is None:
            return None
        return [t.resource_type for t in snapshot.by_type.values() if t.group_id == key.group_id]
    table = snapshot.resource_type(rt)
    if key is not None and (table is None or table.group_id != key.group_id):
        raise NotFoundError(Code.RESOURCE_TYPE_NOT_FOUND, f"no resource type {rt!r}")
    # the admin may follow a type whose table is gone: its history is still there
    return [table.resource_type if table is not None else rt]


def _after(request: web.Request) -> feed.Position:
    raw = request.query.get("after")
    if raw is None:
        return feed.START
    try:
        return feed.decode(raw)
    except feed.BadCursor as e:
        raise ApiError(
            Code.INVALID_CURSOR,
            f"after is not a change feed cursor ({e})",
            pointer="/query/after",
        ) from e


def _wait(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        value = float(raw) if raw.isascii() else -1.0
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT_S:  # NaN fails this too
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"wait must be a number of seconds from 0 to {MAX_WAIT_S:g}",
            pointer="/query/wait",
        )
    return value


@routes.get("/api/v1/changes")
async def changes(request: web.Request) -> web.Response:
    key = _caller(request)
    types = _resource_types(request, key)
    group_key = _text(request, "groupKey")
    limit = _limit(request)
    start = _after(request)
    wait = _wait(request)
    store = request.app[FEED]
    raw = not wants_xml(request)  # JSON embeds the stored JSON text as it is
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        seen = store.generation()
        items, start = await store.read_at(start, limit, types, group_key, raw_json=raw)
        remaining = deadline - loop.time()
        if items or remaining <= 0 or store.closing or client_gone(request):
            break
        await store.wait_for_changes(min(RECHECK_S, remaining), since=seen)
    body = {"items": [change_view(c) for c in items], "next": feed.encode(start)}
    return respond(request, body, root="changes")


async def end_long_polls(app: web.Application) -> None:
    """on_shutdown: long polls answer now, so the gateway stops without waiting for them."""
    signal = app[FEED].signal
    if signal is not None:
        signal.close()
