"""Replaying rejected events (admin token): fix the schema, then send the rejects again.

``POST /admin/v1/events/{eventId}/replay`` re-submits the kept body of a rejected event,
or of each rejected item of a bulk snapshot (each one as a single upsert event: a
replayed item never deletes anything), under the table's CURRENT schema, through the
same Appender as any ingest request. Each new event carries ``replayOf`` (and, for an
item, ``replayItem``), which its receipt shows. The ordinary content-hash and version
rules decide it, so a replay never creates a second version of a change already
applied: identical content is ``unchanged``.

An event (or item) whose replay was applied is not replayed again (409
``already_replayed``); one whose replay was rejected may be. ``POST
/admin/v1/sync-issues/replay`` does the same for every event of a table with matching
sync issues, skipping those already replayed, and answers how many events it enqueued.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.gateway.http import json_object, require_admin, respond
from services.gateway.ingest import append_raw
from services.gateway.state import REGISTRY, REGISTRY_STORE, REPAIR, SETTINGS
from shared.codes import ISSUES, Code
from shared.errors import ApiError
from shared.pg.repair import RejectedBody, RejectedEvent

routes = web.RouteTableDef()
BASE = "/admin/v1"
MAX_EVENTS = 1000  # events one bulk replay request takes up (``more`` says others match)


class NothingToReplay(Exception):
    """The event has no kept body left to replay (``already`` : all were replayed)."""

    def __init__(self, already: bool) -> None:
        self.already = already


async def _pending(request: web.Request, event_id: str) -> tuple[RejectedEvent, list[RejectedBody]]:
    """What of ``event_id`` is still to replay; :class:`NothingToReplay` if nothing."""
    store = request.app[REPAIR]
    bodies = await store.bodies(event_id)
    if not bodies:
        raise NothingToReplay(False)
    event = await store.event(event_id)
    assert event is not None  # a body is written with its event's receipt
    done = await store.replayed(event_id)
    todo = [b for b in bodies if b.index not in done]
    if not todo:
        raise NothingToReplay(True)
    return event, todo


async def _submit(
    request: web.Request, event: RejectedEvent, todo: list[RejectedBody]
) -> list[str]:
    table = request.app[REGISTRY].snapshot.by_type.get(event.resource_type)
    if table is None:
        raise ApiError(
            Code.TABLE_NOT_FOUND, f"the table of {event.event_id!r} no longer exists", status=404
        )
    params = (event.group_key, event.event, event.actor)
    # decided under the schema current now, however late a worker's registry poll is
    generation = await request.app[REGISTRY_STORE].generation()
    out = []
    for b in todo:
        extra: dict[str, Any] = {"replayOf": event.event_id, "registryGeneration": generation}
        if b.index is not None:
            extra["replayItem"] = b.index
        eid = await append_raw(
            request, event.integration_id, table, "single", b.body, None, extra, params
        )
        out.append(eid)
    return out


@routes.post(f"{BASE}/events/{{eventId}}/replay")
async def replay_event(request: web.Request) -> web.Response:
    require_admin(request, request.app[SETTINGS].admin_token or "")
    event_id = request.match_info["eventId"]
    try:
        event, todo = await _pending(request, event_id)
    except NothingToReplay as e:
        if e.already:
            raise ApiError(
                Code.ALREADY_REPLAYED,
                f"{event_id!r} was replayed successfully already (its replays' receipts "
                "name it in replayOf)",
                status=409,
            ) from None
        if await request.app[REPAIR].event(event_id) is None:
            raise ApiError(
                Code.EVENT_NOT_FOUND, f"no processed event {event_id!r}", status=404
            ) from None
        raise ApiError(
            Code.NOT_REPLAYABLE,
            f"{event_id!r} has no rejected body kept: nothing of it was rejected, or its "
            "body was purged after INGESTD_REJECTED_RETENTION_DAYS",
            status=409,
        ) from None
    ids = await _submit(request, event, todo)
    return respond(request, {"replayOf": event_id, "eventIds": ids}, status=202, root="replay")


def _time(body: dict[str, Any], name: str) -> datetime | None:
    raw = body.get(name)
    if raw is None:
        return None
    try:
        if not isinstance(raw, str):
            raise ValueError(raw)
        t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as e:
        raise ApiError(
            Code.INVALID_PARAMETER, f"{name} must be an ISO-8601 timestamp", pointer=f"/{name}"
        ) from e
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _filters(body: dict[str, Any]) -> tuple[str, str | None, datetime | None, datetime | None]:
    table = body.get("table")
    if not isinstance(table, str) or not table:
        raise ApiError(
            Code.INVALID_PARAMETER, "table (a table's name) is required", pointer="/table"
        )
    code = body.get("code")
    if code is not None and code not in ISSUES:
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"code must be an issue code (as sync issues show), got {code!r}",
            pointer="/code",
        )
    unknown = sorted(set(body) - {"table", "code", "since", "until"})
    if unknown:
        raise ApiError(
            Code.INVALID_PARAMETER, f"unknown member {unknown[0]!r}", pointer=f"/{unknown[0]}"
        )
    return table, code, _time(body, "since"), _time(body, "until")


@routes.post(f"{BASE}/sync-issues/replay")
async def replay_issues(request: web.Request) -> web.Response:
    require_admin(request, request.app[SETTINGS].admin_token or "")
    table, code, since, until = _filters(await json_object(request))
    matched = await request.app[REPAIR].matching(table, code, since, until, MAX_EVENTS + 1)
    enqueued: list[str] = []
    replayed = skipped = 0
    for event_id in matched[:MAX_EVENTS]:
        try:
            event, todo = await _pending(request, event_id)
        except NothingToReplay:
            skipped += 1
            continue
        enqueued += await _submit(request, event, todo)
        replayed += 1
    answer = {
        "enqueued": len(enqueued),
        "events": replayed,
        "skipped": skipped,
        "eventIds": enqueued,
        "more": len(matched) > MAX_EVENTS,
    }
    return respond(request, answer, status=202, root="replay")
