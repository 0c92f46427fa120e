"""Admin API of webhooks: endpoints, their signing secrets and their deliveries.

An endpoint's body is checked here (:mod:`shared.webhooks`); its URL's host is resolved
and refused when it is loopback, private or link-local unless
``INGESTD_WEBHOOK_ALLOW_PRIVATE`` is on (the notifier checks again at every delivery). A
signing secret is answered once, by the create and rotate-secret calls; GET never shows
one. Without ``INGESTD_SECRET_KEY`` (it seals the secrets) every route here answers 503.
Deliveries are made by the notifier stage, not here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.gateway.admin import BASE, admin, admin_body
from services.gateway.http import respond
from services.gateway.read import _limit
from services.gateway.state import SETTINGS, WEBHOOKS
from shared.codes import Code
from shared.errors import ApiError
from shared.pg.webhooks import DeliveryRow, WebhookRow, WebhookStore
from shared.webhook_net import check_target
from shared.webhooks import EVENTS, check_description, check_list

routes = web.RouteTableDef()
PATH = f"{BASE}/webhooks"
ONE = f"{PATH}/{{id}}"


def _store(request: web.Request) -> WebhookStore:
    admin(request)
    store = request.app.get(WEBHOOKS)
    if store is None:
        raise ApiError(
            Code.UNAVAILABLE,
            "webhooks need INGESTD_SECRET_KEY (a Fernet key sealing their signing secrets):"
            " set it on the gateway and restart it",
            status=503,
        )
    return store


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def webhook_view(w: WebhookRow, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": w.id,
        "url": w.url,
        "resourceTypes": w.resource_types,
        "events": w.events,
        "description": w.description,
        "enabled": w.disabled_at is None,
        "disabledAt": _iso(w.disabled_at),
        "disabledReason": w.disabled_reason,
        "failingSince": _iso(w.failing_since),
        "createdAt": _iso(w.created_at),
        "updatedAt": _iso(w.updated_at),
    }
    if secret is not None:
        out["secret"] = secret
    return out


def delivery_view(d: DeliveryRow) -> dict[str, Any]:
    return {
        "id": d.id,
        "messageId": d.message_id,
        "cursor": d.change_cursor,
        "resourceType": d.resource_type,
        "resourceId": d.resource_id,
        "version": d.version,
        "op": d.op,
        "status": d.status,
        "attempts": d.attempts,
        "responseStatus": d.response_status,
        "error": d.error,
        "latencyMs": d.latency_ms,
        "nextAttemptAt": _iso(d.next_attempt_at),
        "createdAt": _iso(d.created_at),
        "updatedAt": _iso(d.updated_at),
    }


async def _fields(
    request: web.Request, body: dict[str, Any]
) -> tuple[str, list[str] | None, list[str] | None, str | None]:
    allow = request.app[SETTINGS].webhook_allow_private
    target = await check_target(body.get("url"), allow)
    types = check_list(body.get("resourceTypes"), "resourceTypes", None)
    events = check_list(body.get("events"), "events", EVENTS)
    return target.url, types, events, check_description(body.get("description"))


@routes.post(PATH)
async def create(request: web.Request) -> web.Response:
    store = _store(request)
    body = await admin_body(request)
    row, secret = await store.create(*await _fields(request, body))
    return respond(request, webhook_view(row, secret), 201, root="webhook")


@routes.get(PATH)
async def list_all(request: web.Request) -> web.Response:
    items = await _store(request).list_all()
    return respond(request, {"items": [webhook_view(w) for w in items]}, root="webhooks")


@routes.get(ONE)
async def get_one(request: web.Request) -> web.Response:
    row = await _store(request).get(request.match_info["id"])
    return respond(request, webhook_view(row), root="webhook")


@routes.put(ONE)
async def update(request: web.Request) -> web.Response:
    """Every setting replaced (an absent filter: every type or event); ``"enabled": true``
    re-enables a disabled endpoint, which resumes at the change it was stuck on."""
    store = _store(request)
    body = await admin_body(request)
    fields = await _fields(request, body)
    enabled = body.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ApiError(Code.INVALID_WEBHOOK, "enabled must be true or false", pointer="/enabled")
    row = await store.update(request.match_info["id"], *fields, enabled)
    return respond(request, webhook_view(row), root="webhook")


@routes.delete(ONE)
async def delete(request: web.Request) -> web.Response:
    await _store(request).delete(request.match_info["id"])
    return web.Response(status=204)


@routes.post(f"{ONE}/rotate-secret")
async def rotate(request: web.Request) -> web.Response:
    row, secret = await _store(request).rotate(request.match_info["id"], datetime.now(UTC))
    return respond(request, webhook_view(row, secret), root="webhook")


def _before(request: web.Request) -> int | None:
    raw = request.query.get("before")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) < 1 << 62:
        raise ApiError(
            Code.INVALID_PARAMETER,
            "before must be the id of a delivery (the next of a previous page)",
            pointer="/query/before",
        )
    return int(raw)


@routes.get(f"{ONE}/deliveries")
async def deliveries(request: web.Request) -> web.Response:
    """Newest first; ``next`` (when there may be more) goes back as ``before``."""
    store = _store(request)
    limit = _limit(request)
    rows = await store.deliveries(request.match_info["id"], _before(request), limit)
    nxt = str(rows[-1].id) if len(rows) == limit else None
    body = {"items": [delivery_view(d) for d in rows], "next": nxt}
    return respond(request, body, root="deliveries")
