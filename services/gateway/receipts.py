"""The receipt of an accepted request: ``GET /integration/custom-data/events/{eventId}``.

Pending until the projector wrote its outcome to ``ingest_events``; while pending, a
session upload's receipt shows the session's progress (or why it will never apply).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.gateway.bulk import pending_receipt
from services.gateway.http import respond
from services.gateway.ingest import authenticate
from services.gateway.state import PG, REDIS, SESSIONS
from shared.codes import Code
from shared.errors import ApiError
from shared.redis import keyspace as ks

routes = web.RouteTableDef()

RECEIPT_SQL = """
SELECT event_id, integration_id, status, created, updated, deleted, unchanged, rejected,
       ignored_ids, issues, issues_total, kind, table_name, group_key, received_at, processed_at
FROM ingest_events WHERE event_id = $1
"""


def receipt_json(r: Any) -> dict[str, Any]:
    return {
        "eventId": r["event_id"],
        "status": r["status"],
        "kind": r["kind"],
        "table": r["table_name"],
        "groupKey": r["group_key"],
        "created": r["created"],
        "updated": r["updated"],
        "deleted": r["deleted"],
        "unchanged": r["unchanged"],
        "rejected": r["rejected"],
        "ignored": r["ignored_ids"],
        "issues": r["issues"],
        "issuesTotal": r["issues_total"],
        "receivedAt": r["received_at"].isoformat(),
        "processedAt": r["processed_at"].isoformat(),
    }


@routes.get("/integration/custom-data/events/{eventId}")
async def get_receipt(request: web.Request) -> web.Response:
    key = authenticate(request)
    event_id = request.match_info["eventId"]
    row = await request.app[PG].fetchrow(RECEIPT_SQL, event_id)
    if row is not None:
        if str(row["integration_id"]) != key.integration_id:
            raise ApiError(Code.EVENT_NOT_FOUND, f"no event {event_id!r}", status=404)
        return respond(request, receipt_json(row), root="receipt")

    redis = request.app[REDIS]
    raw = await redis.get(ks.receipt_key(event_id))
    marker = orjson.loads(raw) if raw is not None else {}
    if marker.get("i") != key.integration_id:
        raise ApiError(Code.EVENT_NOT_FOUND, f"no event {event_id!r}", status=404)
    receipt: dict[str, Any] = {
        "eventId": event_id,
        "status": "pending",
        "created": 0,
        "updated": 0,
        "deleted": 0,
        "unchanged": 0,
        "rejected": 0,
        "ignored": [],
        "issues": [],
    }
    if "s" in marker:  # a bulk upload session: its progress, or why it will not apply
        await pending_receipt(request.app[SESSIONS], marker["s"], receipt)
    return respond(request, receipt, root="receipt")
