"""The receipt of an accepted request: ``GET /integration/custom-data/events/{eventId}``.

Read with the ingest key of the integration that sent it (any of its keys), or with the
admin token, which reads every receipt. Pending until the projector wrote its outcome
to ``ingest_events``; while pending, a session upload's receipt shows the session's
progress (or why it will never apply). The pending marker in Redis (who sent it, its
session) lives only that long: the projector unlinks it once PostgreSQL holds the
receipt, so Redis keeps one per event in flight, not one per event of the past 7 days
(the marker's TTL, now only a bound for an event that never gets a receipt).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.gateway import views
from services.gateway.bulk import pending_receipt
from services.gateway.http import is_admin, respond
from services.gateway.ingest import authenticate
from services.gateway.state import REDIS, RESOURCES, SESSIONS, SETTINGS
from shared.codes import Code
from shared.errors import ApiError
from shared.pg.resources import Receipt
from shared.redis import keyspace as ks

routes = web.RouteTableDef()


def _reader(request: web.Request) -> str | None:
    """The integration whose receipts the caller may read; None for the admin token (sent
    as ``Authorization: Bearer`` without an ``X-Ingest-Key``): every receipt."""
    if "X-Ingest-Key" not in request.headers and is_admin(
        request, request.app[SETTINGS].admin_token
    ):
        return None
    return authenticate(request).integration_id


def _applied(
    request: web.Request, applied: Receipt, reader: str | None, event_id: str
) -> web.Response:
    if reader is not None and applied.integration_id != reader:
        raise ApiError(Code.EVENT_NOT_FOUND, f"no event {event_id!r}", status=404)
    return respond(request, views.receipt_view(applied), root="receipt")


@routes.get("/integration/custom-data/events/{eventId}")
async def get_receipt(request: web.Request) -> web.Response:
    reader = _reader(request)
    event_id = request.match_info["eventId"]
    applied = await request.app[RESOURCES].receipt(event_id)
    if applied is not None:
        return _applied(request, applied, reader, event_id)

    redis = request.app[REDIS]
    raw = await redis.get(ks.receipt_key(event_id))
    if raw is None:
        # the projector unlinks a marker only once PostgreSQL holds the receipt: one that
        # went between the two reads is there now
        applied = await request.app[RESOURCES].receipt(event_id)
        if applied is not None:
            return _applied(request, applied, reader, event_id)
    marker = orjson.loads(raw) if raw is not None else {}
    if not marker or (reader is not None and marker.get("i") != reader):
        raise ApiError(Code.EVENT_NOT_FOUND, f"no event {event_id!r}", status=404)
    receipt: dict[str, Any] = {
        "eventId": event_id,
        "status": "pending",
        "created": 0,
        "updated": 0,
        "deleted": 0,
        "unchanged": 0,
        "rejected": 0,
        "skipped": 0,
        "ignored": [],
        "issues": [],
    }
    if "s" in marker:  # a bulk upload session: its progress, or why it will not apply
        await pending_receipt(request.app[SESSIONS], marker["s"], receipt)
    return respond(request, receipt, root="receipt")
