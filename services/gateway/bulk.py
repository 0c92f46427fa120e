"""Bulk snapshots: the complete set of one (table, groupKey) scope, in one request or many.

``POST /integration/custom-data/bulk-event/{table}?groupKey=&event=&actor=&partial=``
takes a JSON array (or an XML document, see :mod:`shared.xmlcodec`) of at most
4 MiB and answers ``202 {"eventId"}``; the worker then diffs it against the
scope (created / updated / unchanged / deleted) and applies it all or nothing.

Larger snapshots are uploaded as a session: ``&session=<id>&part=<n>`` adds
part ``n`` (1, 2, …, each an array of at most 4 MiB), ``&final=true`` marks the
last part. Parts are stored in Redis (any gateway may take any part), for
``INGESTD_SESSION_TTL`` seconds after the last one arrived. A part sent twice is
stored once (the same body again → 202; a different body → 409
``part_conflict``). Parts may arrive in any order: whichever request completes
the set (final part known, parts 1..final all present) appends the snapshot's
one raw event, atomically with storing that part (a Lua script). Every part's
202 carries the snapshot's ``eventId``; its receipt is the outcome. ``event``,
``actor`` and ``partial`` of the final part apply. A session that never
completes changes nothing and expires; ``DELETE …/sessions/{id}`` drops it now
and ``GET …/sessions/{id}`` shows its progress.

A second session for the same scope while one is open: allowed — a crashed or
abandoned upload must never block the next sync. Sessions of a scope are
numbered when they open (first part received); a snapshot takes effect only if
no snapshot opened after it has been applied yet. So the newest-opened complete
snapshot wins, and a slow, older upload can never overwrite newer data: once a
newer one is applied, the older session's further parts get 409
``session_superseded`` and, if it was already complete, its receipt reads
``rejected`` (``snapshot_superseded``) and nothing changes. A single-request
bulk is a one-part session for this rule.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from services.gateway.http import is_json_array, query_text, read_body, respond
from services.gateway.idempotency import Claim, claim_for, header_key, record, recorded, replay
from services.gateway.ingest import (
    BODY_TYPES,
    authenticate,
    check_content_type,
    common_params,
    from_xml,
    partition,
    resolve_table,
)
from services.gateway.state import SESSIONS, SETTINGS
from shared import xmlcodec
from shared.codes import Code
from shared.errors import ApiError
from shared.events import RawMeta, new_event_id
from shared.redis import keyspace as ks
from shared.redis.keyspace import SessionState
from shared.redis.sessions import Marker, Scope, SessionStore
from shared.registry import KeyInfo, TableInfo

BULK_LIMIT = 4 << 20
MAX_PARTS = 10_000
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

routes = web.RouteTableDef()
IMPLICIT = ks.IMPLICIT_SESSION

_REFUSALS: dict[str, tuple[Code, str]] = {
    "part_conflict": (
        Code.PART_CONFLICT,
        "part {part} of session {session!r} was already received with a different body",
    ),
    "final_conflict": (
        Code.FINAL_CONFLICT,
        "session {session!r} has part {total} as its final part (or already holds a part "
        "after {part}); the final part must be the highest",
    ),
    "part_after_final": (
        Code.PART_AFTER_FINAL,
        "session {session!r} ends at part {total}; part {part} is beyond its final part",
    ),
    SessionState.QUEUED: (
        Code.SESSION_CLOSED,
        "session {session!r} is complete and being applied; start a new session",
    ),
    SessionState.DONE: (
        Code.SESSION_CLOSED,
        "session {session!r} was already applied; start a new session",
    ),
    SessionState.SUPERSEDED: (
        Code.SESSION_SUPERSEDED,
        "a snapshot of this scope opened after session {session!r} was applied; "
        "this session is discarded so it cannot overwrite newer data",
    ),
    SessionState.ABORTED: (
        Code.SESSION_ABORTED,
        "session {session!r} was aborted; start a new session",
    ),
    "foreign": (Code.SESSION_CONFLICT, "session id {session!r} is in use by another integration"),
}


@dataclass(frozen=True, slots=True)
class Upload:
    session: str  # as stored: the client's id, or IMPLICIT + event id
    part: int
    final: bool
    partial: bool
    explicit: bool


def _flag(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise ApiError(
        Code.INVALID_PARAMETER, f"{name} must be true or false", pointer=f"/query/{name}"
    )


def upload_params(request: web.Request, candidate_id: str) -> Upload:
    session = query_text(request, "session")
    part_raw = request.query.get("part")
    final = _flag(request, "final")
    partial = bool(_flag(request, "partial"))
    if session is None:
        if part_raw is not None or final is not None:
            raise ApiError(
                Code.INVALID_PARAMETER,
                "part and final belong to a session upload: add session=<id>",
                pointer="/query/session",
            )
        return Upload(IMPLICIT + candidate_id, 1, True, partial, explicit=False)
    if not SESSION_ID.match(session):
        raise ApiError(
            Code.INVALID_PARAMETER,
            "session must be 1-128 characters: letters, digits and . _ : - "
            "(starting with a letter or digit)",
            pointer="/query/session",
        )
    if part_raw is None or not part_raw.isdigit() or not 1 <= int(part_raw) <= MAX_PARTS:
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"a session upload needs part=<n>, an integer from 1 to {MAX_PARTS}",
            pointer="/query/part",
        )
    return Upload(session, int(part_raw), bool(final), partial, explicit=True)


async def snapshot_body(body: bytes, ctype: str, table: TableInfo) -> bytes:
    """The part as a JSON array (XML is mapped with the table's schema); 400 otherwise."""
    if ctype in xmlcodec.XML_TYPES:
        return orjson.dumps(await from_xml(xmlcodec.resources_from_xml, body, table))
    if not is_json_array(body):
        raise ApiError(
            Code.BODY_NOT_ARRAY,
            "a bulk body must be a JSON array holding the complete set of resources",
            pointer="",
        )
    return body


async def store_part(
    sessions: SessionStore, scope: Scope, key: KeyInfo, up: Upload, body: bytes, ttl: int,
    commit_meta: Callable[[str], RawMeta], marker: Marker,
) -> tuple[str, str, int, int]:  # fmt: skip
    """Open the session if needed, then store the part (and maybe queue the commit) and
    its receipt marker: (event id, outcome, parts received, final part or 0)."""
    digest = hashlib.sha256(body).hexdigest()
    for _ in range(3):  # None: the session expired or was retired between the two scripts
        got = await sessions.add_part(
            scope, key.integration_id, new_event_id(), up.part, body, digest, up.final,
            lambda eid: commit_meta(eid).encode(), ttl, marker,
        )  # fmt: skip
        if got is not None:
            return got.event_id, got.outcome, got.received, got.total
    raise ApiError(
        Code.UNAVAILABLE,
        "the session kept disappearing; retry",
        status=503,
        headers={"Retry-After": "1"},
    )


@routes.post("/integration/custom-data/bulk-event/{table}")
async def post_bulk(request: web.Request) -> web.Response:
    key = authenticate(request)
    table = resolve_table(request, key)
    group_key, event, actor = common_params(request)
    up = upload_params(request, new_event_id())
    idem = header_key(request)
    ctype = check_content_type(request, BODY_TYPES)
    raw = await read_body(request, BULK_LIMIT)
    claim = claim_for(request, key.integration_id, idem, table.table, raw)
    body = await snapshot_body(raw, ctype, table)
    earlier = await recorded(request, key.integration_id, claim)
    if earlier is not None:
        return earlier
    p = partition(request, table, group_key)
    settings = request.app[SETTINGS]
    sessions = request.app[SESSIONS]
    scope = Scope(p, table.resource_type, group_key, up.session)
    received_ms = int(time.time() * 1000)

    def commit_meta(event_id: str) -> RawMeta:
        """The snapshot's one raw event: the final part's parameters apply."""
        extra: dict[str, Any] = {"session": up.session, "partial": up.partial}
        if claim is not None and not up.explicit:  # a part's key is not the snapshot's
            extra["idem"] = [claim.key, claim.fingerprint]
        return RawMeta(
            event_id, "bulk", key.integration_id, table.table, table.resource_type, group_key,
            event, actor, received_ms, None, extra,
        )  # fmt: skip

    if not up.explicit:
        meta = commit_meta(up.session[len(IMPLICIT) :])
        return await store_single(request, scope, key, meta, body, claim)
    where = [p, table.resource_type, group_key, up.session]
    marker = Marker(_receipt_marker(key, where), settings.receipt_ttl)
    eid, outcome, received, total = await store_part(
        sessions, scope, key, up, body, settings.session_ttl, commit_meta, marker
    )
    if outcome not in ("stored", "queued", "duplicate"):
        raise _refusal(outcome, up, total, up.part)
    out: dict[str, Any] = {
        "eventId": eid,
        "session": up.session,
        "part": up.part,
        "duplicate": outcome == "duplicate",
        "partsReceived": received,
        "parts": total or None,
        "complete": 0 < total == received,
    }
    if claim is not None:
        return await record(request, claim, eid, 202, out)
    return respond(request, out, status=202)


async def store_single(
    request: web.Request, scope: Scope, key: KeyInfo, meta: RawMeta, body: bytes,
    claim: Claim | None,
) -> web.Response:  # fmt: skip
    """A single-request bulk (or batch) event stored as a one-part session; 202. With a
    ``claim``, the Idempotency-Key is claimed in the same MULTI (or its first answer
    replayed, when a concurrent request with it was first)."""
    settings = request.app[SETTINGS]
    answer = {"eventId": meta.id}
    entry = None
    if claim is not None:
        entry = (claim.redis_key, claim.entry(meta.id, 202, answer), settings.receipt_ttl)
    found = await request.app[SESSIONS].store_single(
        scope, key.integration_id, meta.id, body, meta.encode(), settings.session_ttl,
        ks.receipt_key(meta.id), _receipt_marker(key, None), settings.receipt_ttl, entry,
    )  # fmt: skip
    if found is not None:
        assert claim is not None
        return replay(request, claim, found)
    return respond(request, answer, status=202)


def _refusal(result: str, up: Upload, total: int, part: int) -> ApiError:
    code, template = _REFUSALS.get(result, (Code.SESSION_CLOSED, "session {session!r} is closed"))
    return ApiError(code, template.format(session=up.session, part=part, total=total), status=409)


def _receipt_marker(key: KeyInfo, where: list[Any] | None) -> bytes:
    """Lets the receipt endpoint answer 'pending' (with a session's progress) until the
    snapshot's outcome is in PostgreSQL."""
    marker: dict[str, Any] = {"i": key.integration_id}
    if where is not None:
        marker["s"] = where
    return orjson.dumps(marker)


_DISCARDED = {
    SessionState.SUPERSEDED: (
        Code.SESSION_SUPERSEDED,
        "a snapshot of this scope opened later was applied",
    ),
    SessionState.ABORTED: (Code.SESSION_ABORTED, "the session was aborted"),
    "expired": (Code.SESSION_EXPIRED, "the session expired before all its parts arrived"),
}


async def pending_receipt(
    sessions: SessionStore, where: list[Any], receipt: dict[str, Any]
) -> None:
    """Fill a pending receipt of a session upload: progress, or why it will never apply."""
    p, resource_type, group_key, session = where
    info = await sessions.status(Scope(p, resource_type, group_key, session))
    state = "expired" if info is None or info.event_id != receipt["eventId"] else info.state
    if state in _DISCARDED:
        code, message = _DISCARDED[state]
        receipt["status"] = "rejected"
        receipt["issues"] = [{"code": code, "message": message, "pointer": None}]
        receipt["issuesTotal"] = 1
    if info is not None and state != "expired":
        receipt["session"] = {
            "id": session,
            "state": state,
            "partsReceived": info.received,
            "parts": info.total,
        }


def _scope(request: web.Request, table: TableInfo) -> Scope:
    group_key = common_params(request)[0]
    p = ks.partition_of(table.resource_type, group_key, request.app[SETTINGS].partitions)
    return Scope(p, table.resource_type, group_key, request.match_info["session"])


def _not_found(session: str) -> ApiError:
    return ApiError(Code.SESSION_NOT_FOUND, f"no session {session!r} for this scope", status=404)


@routes.get("/integration/custom-data/bulk-event/{table}/sessions/{session}")
async def get_session(request: web.Request) -> web.Response:
    key = authenticate(request)
    scope = _scope(request, resolve_table(request, key))
    info = await request.app[SESSIONS].status(scope)
    if info is None or info.integration != key.integration_id:
        raise _not_found(scope.session)
    out = {
        "session": scope.session,
        "eventId": info.event_id,
        "state": info.state,
        "partsReceived": info.received,
        "parts": info.total,
        "openedAtMs": info.opened_ms,
        "expiresInSeconds": info.expires_in,
    }
    return respond(request, out, root="session")


@routes.delete("/integration/custom-data/bulk-event/{table}/sessions/{session}")
async def abort_session(request: web.Request) -> web.Response:
    key = authenticate(request)
    scope = _scope(request, resolve_table(request, key))
    result = await request.app[SESSIONS].abort(scope, key.integration_id)
    if result == SessionState.ABORTED:
        return web.Response(status=204)
    if result in ("gone", "foreign"):
        raise _not_found(scope.session)
    raise _refusal(result, Upload(scope.session, 0, False, False, True), 0, 0)
