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
from redis.asyncio import Redis

from services.gateway.http import is_json_array, read_body, respond
from services.gateway.ingest import (
    BODY_TYPES,
    authenticate,
    check_content_type,
    common_params,
    from_xml,
    partition,
    resolve_table,
)
from services.gateway.state import REDIS, SETTINGS
from shared import streams, xmlcodec
from shared.bulk import IMPLICIT
from shared.codes import Code
from shared.config import Settings
from shared.errors import ApiError
from shared.events import RawMeta, new_event_id
from shared.registry import KeyInfo, TableInfo
from shared.streamio import run_script

BULK_LIMIT = 4 << 20
MAX_PARTS = 10_000
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

routes = web.RouteTableDef()

# KEYS: session, snapshots. ARGV: event id, integration, ttl, now ms.
OPEN_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local seq = redis.call('HINCRBY', KEYS[2], 'next', 1)
  redis.call('HSET', KEYS[1], 'eid', ARGV[1], 'int', ARGV[2], 'seq', seq, 'ttl', ARGV[3],
             'n', 0, 'max', 0, 'state', 'open', 'opened', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return redis.call('HMGET', KEYS[1], 'eid', 'int')
"""

# KEYS: session, snapshots, ingest stream.
# ARGV: integration, part, body, digest, final (1/0), commit meta, meta field name.
# Returns {outcome, parts received, final part number (0 = unknown)}.
ADD_SCRIPT = """
local s = KEYS[1]
local h = redis.call('HMGET', s, 'int', 'seq', 'state', 'total', 'n', 'max', 'ttl')
if not h[1] then return {'gone', 0, 0} end
if h[1] ~= ARGV[1] then return {'foreign', 0, 0} end
local part = tonumber(ARGV[2])
local final = ARGV[5] == '1'
local state = h[3]
local total = tonumber(h[4] or '0')
local n = tonumber(h[5])
local highest = tonumber(h[6])
local prev = redis.call('HGET', s, 'd:' .. ARGV[2])
if prev and prev ~= ARGV[4] then return {'part_conflict', n, total} end
if final and total > 0 and total ~= part then return {'final_conflict', n, total} end
if prev and (not final or total == part or state ~= 'open') then
  return {'duplicate', n, total}
end
if state ~= 'open' then return {state, n, total} end
local committed = tonumber(redis.call('HGET', KEYS[2], 'committed') or '0')
if tonumber(h[2]) <= committed then
  for _, f in ipairs(redis.call('HKEYS', s)) do
    if string.sub(f, 1, 2) == 'p:' then redis.call('HDEL', s, f) end
  end
  redis.call('HSET', s, 'state', 'superseded')
  return {'superseded', n, total}
end
if total > 0 and part > total then return {'part_after_final', n, total} end
if final then
  if highest > part then return {'final_conflict', n, highest} end
  total = part
  redis.call('HSET', s, 'total', part, 'commit', ARGV[6])
end
if not prev then
  redis.call('HSET', s, 'p:' .. ARGV[2], ARGV[3], 'd:' .. ARGV[2], ARGV[4])
  n = redis.call('HINCRBY', s, 'n', 1)
  if part > highest then redis.call('HSET', s, 'max', part) end
end
if total > 0 and n == total then
  redis.call('XADD', KEYS[3], '*', ARGV[7], redis.call('HGET', s, 'commit'))
  redis.call('HSET', s, 'state', 'queued')
  redis.call('PERSIST', s)
  return {'queued', n, total}
end
redis.call('EXPIRE', s, h[7])
return {'stored', n, total}
"""

# A single-request bulk: a one-part session, opened complete and queued in one step
# (its body is stored by a plain HSET in the same MULTI: Redis takes a big argument
# without copying it, and a script would copy it twice).
# KEYS: session, snapshots, ingest stream.
# ARGV: event id, integration, ttl, now ms, commit meta, meta field name.
SINGLE_SCRIPT = """
local seq = redis.call('HINCRBY', KEYS[2], 'next', 1)
redis.call('HSET', KEYS[1], 'eid', ARGV[1], 'int', ARGV[2], 'seq', seq, 'ttl', ARGV[3],
           'n', 1, 'max', 1, 'total', 1, 'state', 'queued', 'opened', ARGV[4])
redis.call('XADD', KEYS[3], '*', ARGV[6], ARGV[5])
return seq
"""

# KEYS: session. ARGV: integration.
ABORT_SCRIPT = """
local h = redis.call('HMGET', KEYS[1], 'int', 'state')
if not h[1] then return 'gone' end
if h[1] ~= ARGV[1] then return 'foreign' end
if h[2] ~= 'open' then return h[2] end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'p:' then redis.call('HDEL', KEYS[1], f) end
end
redis.call('HSET', KEYS[1], 'state', 'aborted')
return 'aborted'
"""

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
    "queued": (
        Code.SESSION_CLOSED,
        "session {session!r} is complete and being applied; start a new session",
    ),
    "done": (Code.SESSION_CLOSED, "session {session!r} was already applied; start a new session"),
    "superseded": (
        Code.SESSION_SUPERSEDED,
        "a snapshot of this scope opened after session {session!r} was applied; "
        "this session is discarded so it cannot overwrite newer data",
    ),
    "aborted": (Code.SESSION_ABORTED, "session {session!r} was aborted; start a new session"),
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
    session = request.query.get("session")
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


@dataclass(frozen=True, slots=True)
class Stored:
    event_id: str
    outcome: str  # stored | queued | duplicate, or a refusal (see _REFUSALS)
    received: int
    total: int


async def store_part(
    redis: Redis,
    p: int,
    table: TableInfo,
    group_key: str,
    key: KeyInfo,
    up: Upload,
    body: bytes,
    ttl: int,
    commit_meta: Callable[[str], RawMeta],
) -> Stored:
    """Open the session if needed, then store the part (and maybe queue the commit)."""
    skey = streams.session_key(p, table.resource_type, group_key, up.session)
    snapshots = streams.snapshots_key(p, table.resource_type, group_key)
    digest = hashlib.sha256(body).hexdigest()
    candidate = up.session[len(IMPLICIT) :] if not up.explicit else new_event_id()
    for _ in range(3):  # 'gone': the session expired or was retired between the two scripts
        eid, owner = await run_script(
            redis, OPEN_SCRIPT, [skey, snapshots], candidate, key.integration_id, ttl,
            int(time.time() * 1000),
        )  # fmt: skip
        if owner.decode() != key.integration_id:
            return Stored(eid.decode(), "foreign", 0, 0)
        meta = commit_meta(eid.decode()).encode() if up.final else b""
        outcome, received, total = await run_script(
            redis, ADD_SCRIPT, [skey, snapshots, streams.ingest_stream(p)], key.integration_id,
            up.part, body, digest, "1" if up.final else "0", meta, streams.F_META,
        )  # fmt: skip
        if outcome != b"gone":
            return Stored(eid.decode(), outcome.decode(), int(received), int(total))
    raise ApiError(Code.UNAVAILABLE, "the session kept disappearing; retry", status=503)


async def store_single(
    redis: Redis,
    p: int,
    table: TableInfo,
    group_key: str,
    key: KeyInfo,
    up: Upload,
    body: bytes,
    settings: Settings,
    meta: RawMeta,
) -> None:
    """A single-request bulk in one round trip, one MULTI: its receipt marker, its body,
    then its one-part session opened complete and its raw event appended."""
    skey = streams.session_key(p, table.resource_type, group_key, up.session)
    pipe = redis.pipeline(transaction=True)
    pipe.set(streams.receipt_key(meta.id), _receipt_marker(key, None), ex=settings.receipt_ttl)
    pipe.hset(skey, "p:1", body)  # type: ignore[arg-type]
    args: list[Any] = [
        skey,
        streams.snapshots_key(p, table.resource_type, group_key),
        streams.ingest_stream(p),
        meta.id, key.integration_id, settings.session_ttl, int(time.time() * 1000),
        meta.encode(), streams.F_META,
    ]  # fmt: skip
    pipe.eval(SINGLE_SCRIPT, 3, *args)
    await pipe.execute()


@routes.post("/integration/custom-data/bulk-event/{table}")
async def post_bulk(request: web.Request) -> web.Response:
    key = authenticate(request)
    table = resolve_table(request, key)
    group_key, event, actor = common_params(request)
    up = upload_params(request, new_event_id())
    ctype = check_content_type(request, BODY_TYPES)
    body = await snapshot_body(await read_body(request, BULK_LIMIT), ctype, table)
    p = partition(request, table, group_key)
    settings = request.app[SETTINGS]
    redis = request.app[REDIS]
    received_ms = int(time.time() * 1000)

    def commit_meta(event_id: str) -> RawMeta:
        """The snapshot's one raw event: the final part's parameters apply."""
        return RawMeta(
            event_id, "bulk", key.integration_id, table.table, table.resource_type, group_key,
            event, actor, received_ms, None, {"session": up.session, "partial": up.partial},
        )  # fmt: skip

    if not up.explicit:
        eid = up.session[len(IMPLICIT) :]
        await store_single(redis, p, table, group_key, key, up, body, settings, commit_meta(eid))
        return respond(request, {"eventId": eid}, status=202)
    got = await store_part(
        redis, p, table, group_key, key, up, body, settings.session_ttl, commit_meta
    )
    if got.outcome not in ("stored", "queued", "duplicate"):
        raise _refusal(got.outcome, up, got.total, up.part)
    where = [p, table.resource_type, group_key, up.session]
    await redis.set(
        streams.receipt_key(got.event_id), _receipt_marker(key, where), ex=settings.receipt_ttl
    )
    out = {
        "eventId": got.event_id,
        "session": up.session,
        "part": up.part,
        "duplicate": got.outcome == "duplicate",
        "partsReceived": got.received,
        "parts": got.total or None,
        "complete": 0 < got.total == got.received,
    }
    return respond(request, out, status=202)


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


async def session_status(redis: Redis, skey: str, snapshots: str) -> dict[str, Any] | None:
    """A session's progress; an open session older than an applied snapshot is 'superseded'."""
    fields = ["eid", "int", "state", "n", "total", "opened", "seq"]
    pipe = redis.pipeline(transaction=False)
    pipe.hmget(skey, fields)
    pipe.ttl(skey)
    pipe.hget(snapshots, "committed")
    (eid, owner, state, n, total, opened, seq), ttl, committed = await pipe.execute()
    if eid is None or owner is None:
        return None
    status = state.decode()
    if status == "open" and int(seq) <= int(committed or 0):
        status = "superseded"
    return {
        "eventId": eid.decode(),
        "integration": owner.decode(),
        "state": status,
        "partsReceived": int(n or 0),
        "parts": int(total) if total else None,
        "openedAtMs": int(opened) if opened else None,
        "expiresInSeconds": ttl if ttl >= 0 else None,
    }


_DISCARDED = {
    "superseded": (Code.SESSION_SUPERSEDED, "a snapshot of this scope opened later was applied"),
    "aborted": (Code.SESSION_ABORTED, "the session was aborted"),
    "expired": (Code.SESSION_EXPIRED, "the session expired before all its parts arrived"),
}


async def pending_receipt(redis: Redis, where: list[Any], receipt: dict[str, Any]) -> None:
    """Fill a pending receipt of a session upload: progress, or why it will never apply."""
    p, resource_type, group_key, session = where
    info = await session_status(
        redis,
        streams.session_key(p, resource_type, group_key, session),
        streams.snapshots_key(p, resource_type, group_key),
    )
    state = "expired" if info is None or info["eventId"] != receipt["eventId"] else info["state"]
    if state in _DISCARDED:
        code, message = _DISCARDED[state]
        receipt["status"] = "rejected"
        receipt["issues"] = [{"code": code, "message": message, "pointer": None}]
        receipt["issuesTotal"] = 1
    if info is not None and state not in ("expired",):
        receipt["session"] = {
            "id": session,
            "state": state,
            "partsReceived": info["partsReceived"],
            "parts": info["parts"],
        }


def _session_keys(request: web.Request, table: TableInfo) -> tuple[str, str, str]:
    group_key = common_params(request)[0]
    session = request.match_info["session"]
    p = streams.partition_of(table.resource_type, group_key, request.app[SETTINGS].partitions)
    return (
        session,
        streams.session_key(p, table.resource_type, group_key, session),
        streams.snapshots_key(p, table.resource_type, group_key),
    )


@routes.get("/integration/custom-data/bulk-event/{table}/sessions/{session}")
async def get_session(request: web.Request) -> web.Response:
    key = authenticate(request)
    table = resolve_table(request, key)
    session, skey, snapshots = _session_keys(request, table)
    info = await session_status(request.app[REDIS], skey, snapshots)
    if info is None or info.pop("integration") != key.integration_id:
        raise ApiError(Code.SESSION_NOT_FOUND, f"no session {session!r} for this scope", status=404)
    return respond(request, {"session": session, **info}, root="session")


@routes.delete("/integration/custom-data/bulk-event/{table}/sessions/{session}")
async def abort_session(request: web.Request) -> web.Response:
    key = authenticate(request)
    table = resolve_table(request, key)
    session, skey, _ = _session_keys(request, table)
    result = (
        await run_script(request.app[REDIS], ABORT_SCRIPT, [skey], key.integration_id)
    ).decode()
    if result == "aborted":
        return web.Response(status=204)
    if result == "gone" or result == "foreign":
        raise ApiError(Code.SESSION_NOT_FOUND, f"no session {session!r} for this scope", status=404)
    up = Upload(session, 0, False, False, True)
    raise _refusal(result, up, 0, 0)
