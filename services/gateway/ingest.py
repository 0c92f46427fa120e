"""Ingest API: single events, deletes and receipts (ingest-key authenticated).

Bodies are JSON or XML (``Content-Type: application/xml``, mapped to JSON by
:mod:`shared.xmlcodec` with the table's schema, so the worker only sees JSON);
responses follow ``Accept`` (JSON by default).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from services.gateway.appender import Found
from services.gateway.http import (
    bearer,
    parse_json,
    query_text,
    read_body,
    refuse_nul,
    respond,
)
from services.gateway.idempotency import Claim, claim_for, header_key, recorded, replay
from services.gateway.state import APPENDER, REGISTRY, SETTINGS
from shared import jsontext, xmlcodec
from shared.codes import Code
from shared.errors import ApiError
from shared.events import Kind, RawMeta, new_event_id
from shared.redis import keyspace as ks
from shared.registry import KeyInfo, TableInfo
from shared.schema_rules import MAX_ID_LENGTH, Issue, storable_hash

SINGLE_LIMIT = 1 << 20
MAX_GROUP_KEY = 100
MAX_EVENT = 100
MAX_ACTOR = 1000
MAX_DELETE_IDS = 10_000
DELETE_LIMIT = 1 << 20
JSON_TYPES = {"application/json", "text/json"}
BODY_TYPES = JSON_TYPES | xmlcodec.XML_TYPES
T = TypeVar("T")

routes = web.RouteTableDef()


def authenticate(request: web.Request) -> KeyInfo:
    key = request.headers.get("X-Ingest-Key") or bearer(request)
    if not key:
        raise ApiError(
            Code.MISSING_INGEST_KEY,
            "send the integration's ingest key in the X-Ingest-Key header "
            "(or Authorization: Bearer)",
            status=401,
        )
    info = request.app[REGISTRY].snapshot.authenticate(key)
    if info is None:
        raise ApiError(Code.INVALID_INGEST_KEY, "unknown or revoked ingest key", status=401)
    return info


def resolve_table(request: web.Request, key: KeyInfo) -> TableInfo:
    """The table the URL's ``{table}`` names: a table's name, or else a table's title
    (percent-encoded in the URL, compared case-sensitively), in the key's schema group."""
    table = request.match_info["table"]
    info = request.app[REGISTRY].snapshot.table(key.group_id, table)
    if info is None:
        raise ApiError(
            Code.TABLE_NOT_FOUND,
            f"no table named or titled {table!r} in this integration's schema group",
            status=404,
        )
    return info


def _param(request: web.Request, name: str, limit: int) -> str | None:
    value = query_text(request, name)
    if value is not None and len(value) > limit:
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"{name} is {len(value)} characters; at most {limit} are allowed",
            pointer=f"/query/{name}",
        )
    return value


def common_params(request: web.Request) -> tuple[str, str | None, Any]:
    if not request.query_string:
        return "", None, None
    group_key = _param(request, "groupKey", MAX_GROUP_KEY) or ""
    event = _param(request, "event", MAX_EVENT)
    actor_raw = _param(request, "actor", MAX_ACTOR)
    for name, value in (("groupKey", group_key), ("event", event), ("actor", actor_raw)):
        refuse_nul(value, f"/query/{name}")
    actor: Any = None
    if actor_raw is not None:
        try:
            actor = orjson.loads(actor_raw)
        except orjson.JSONDecodeError as e:
            raise ApiError(
                Code.INVALID_PARAMETER,
                f'actor must be JSON (e.g. {{"name":"alice"}} or "alice"): {e.msg}',
                pointer="/query/actor",
            ) from e
        if isinstance(storable_hash(actor), Issue):
            raise ApiError(
                Code.INVALID_PARAMETER,
                "actor must not contain U+0000 nor nest deeper than 254 levels",
                pointer="/query/actor",
            )
    return group_key, event, actor


def check_content_type(request: web.Request, allowed: set[str]) -> str:
    raw = request.headers.get("Content-Type")
    if raw is None or raw == "application/json":  # the common case, without parsing
        return "application/json"
    ctype = request.content_type
    if ctype not in allowed:
        raise ApiError(
            Code.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type {ctype!r} is not supported; use one of {sorted(allowed)}",
            status=415,
        )
    return ctype


async def from_xml(
    convert: Callable[[bytes, dict[str, Any]], T], body: bytes, table: TableInfo
) -> T:
    """Map an XML body to JSON values with the table's schema; refuse unsafe or bad XML.

    In a thread: converting a few MiB of XML takes a second or more of pure Python,
    and the event loop keeps serving other requests meanwhile (it gets the GIL back
    every switch interval)."""
    try:
        return await asyncio.to_thread(convert, body, table.body)
    except xmlcodec.XmlError as e:
        raise ApiError(e.code, e.message) from e


def partition(request: web.Request, table: TableInfo, group_key: str) -> int:
    """The scope's partition; 429 while that partition's backlog (raw events not yet
    processed + changes not yet in PostgreSQL) is over the limit."""
    settings = request.app[SETTINGS]
    p = ks.partition_of(table.resource_type, group_key, settings.partitions)
    appender = request.app[APPENDER]
    backlog = appender.backlog[p]
    if backlog > settings.max_backlog:
        raise ApiError(
            Code.BACKLOG_FULL,
            f"partition {p} has {backlog} events not yet in PostgreSQL "
            f"({appender.ingest_backlog[p]} to process, {appender.changes_backlog[p]} "
            f"to apply; the limit is {settings.max_backlog}); retry later",
            status=429,
            headers={"Retry-After": "1"},
        )
    return p


async def append_event(
    request: web.Request,
    integration: str | None,
    table: TableInfo,
    kind: Kind,
    body: bytes,
    ids: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    params: tuple[str, str | None, Any] | None = None,
    claim: Claim | None = None,
) -> web.Response:
    """Append one raw event to its scope's partition; 202 with its event id. No
    ``integration``: an admin's own change (a PATCH), whose receipt the admin reads.
    With a ``claim`` (an Idempotency-Key), a key already used answers as it did first
    (:mod:`services.gateway.idempotency`) and nothing is appended."""
    params = params or common_params(request)
    if claim is None:
        event_id = await append_raw(request, integration, table, kind, body, ids, extra, params)
        return respond(request, {"eventId": event_id}, status=202)
    assert integration is not None
    earlier = await recorded(request, integration, claim)
    if earlier is not None:
        return earlier
    extra = {**(extra or {}), "idem": [claim.key, claim.fingerprint]}
    meta, fields, receipt, p = _raw(request, integration, table, kind, body, ids, extra, params)
    answer = {"eventId": meta.id}
    entry = (claim.redis_key, claim.entry(meta.id, 202, answer))
    got = await request.app[APPENDER].append(p, fields, ks.receipt_key(meta.id), receipt, entry)
    if isinstance(got, Found):  # a concurrent request with the key was first
        return replay(request, claim, got.entry)
    return respond(request, answer, status=202)


async def append_raw(
    request: web.Request,
    integration: str | None,
    table: TableInfo,
    kind: Kind,
    body: bytes,
    ids: list[str] | None,
    extra: dict[str, Any] | None,
    params: tuple[str, str | None, Any],
) -> str:
    """Append one raw event through the gateway's Appender; its event id."""
    meta, fields, receipt, p = _raw(request, integration, table, kind, body, ids, extra, params)
    await request.app[APPENDER].append(p, fields, ks.receipt_key(meta.id), receipt)
    return meta.id


def _raw(
    request: web.Request,
    integration: str | None,
    table: TableInfo,
    kind: Kind,
    body: bytes,
    ids: list[str] | None,
    extra: dict[str, Any] | None,
    params: tuple[str, str | None, Any],
) -> tuple[RawMeta, dict[bytes, bytes], bytes, int]:
    """A raw event's meta, stream fields, receipt marker and partition."""
    group_key, event, actor = params
    p = partition(request, table, group_key)
    meta = RawMeta(
        new_event_id(),
        kind,
        integration,
        table.table,
        table.resource_type,
        group_key,
        event,
        actor,
        int(time.time() * 1000),
        ids,
        extra or {},
    )
    fields = {ks.F_META: meta.encode(), ks.F_BODY: body}
    return meta, fields, orjson.dumps({"i": integration}), p


@routes.post("/integration/custom-data/event/{table}")
async def post_event(request: web.Request) -> web.Response:
    key = authenticate(request)
    table = resolve_table(request, key)
    params = common_params(request)
    idem = header_key(request)
    ctype = check_content_type(request, BODY_TYPES)
    body = await read_body(request, SINGLE_LIMIT)
    claim = claim_for(request, key.integration_id, idem, table.table, body)
    if ctype in xmlcodec.XML_TYPES:
        data = await from_xml(xmlcodec.resource_from_xml, body, table)
        if not isinstance(data, dict):
            raise ApiError(
                Code.BODY_NOT_OBJECT, "the XML root element must hold the resource's properties"
            )
        body = orjson.dumps(data)
    else:
        data = parse_json(body)
        jsontext.refuse_lossy(body, data)  # an integer beyond 64 bits, a duplicate key
    if not isinstance(data, dict):
        raise ApiError(
            Code.BODY_NOT_OBJECT, "the body must be one JSON object (a resource)", pointer=""
        )
    return await append_event(
        request, key.integration_id, table, "single", body, params=params, claim=claim
    )


@routes.delete("/integration/custom-data/{table}")
async def delete_resources(request: web.Request) -> web.Response:
    """Ids in the query (``resourceIds=a,b``, within the request line's limit) or, for
    long lists or ids holding a comma, in a JSON body ``{"resourceIds": [...]}``."""
    key = authenticate(request)
    table = resolve_table(request, key)
    params = common_params(request)
    idem = header_key(request)
    raw = query_text(request, "resourceIds")
    if request.body_exists:
        if raw is not None:
            raise ApiError(
                Code.INVALID_PARAMETER,
                "send resourceIds in the query or in the body, not both",
                pointer="/query/resourceIds",
            )
        ids = await _body_ids(request)
    else:
        ids = _query_ids(raw)
    # the ids are the body (JSON bodies listing the same ids are the same request)
    claim = claim_for(
        request, key.integration_id, idem, table.table, orjson.dumps(ids) if raw is None else b""
    )
    return await append_event(
        request, key.integration_id, table, "delete", b"", ids=ids, params=params, claim=claim
    )


def _query_ids(raw: str | None) -> list[str]:
    refuse_nul(raw, "/query/resourceIds")
    ids = [i for i in (raw or "").split(",") if i]
    if not ids:
        raise ApiError(
            Code.INVALID_PARAMETER,
            'resourceIds must list at least one id (a,b,c), or send {"resourceIds": [...]}',
            pointer="/query/resourceIds",
        )
    _check_count(len(ids), "/query/resourceIds")
    for n, rid in enumerate(ids):
        if len(rid) > MAX_ID_LENGTH:
            raise ApiError(
                Code.INVALID_PARAMETER,
                f"resourceIds: id {n} is {len(rid)} characters; at most {MAX_ID_LENGTH}",
                pointer="/query/resourceIds",
            )
    return ids


async def _body_ids(request: web.Request) -> list[str]:
    check_content_type(request, JSON_TYPES)
    body = parse_json(await read_body(request, DELETE_LIMIT))
    raw = body.get("resourceIds") if isinstance(body, dict) else None
    if not isinstance(raw, list) or not raw:
        raise ApiError(
            Code.INVALID_PARAMETER,
            'the body must be {"resourceIds": [...]} with at least one id',
            pointer="/resourceIds",
        )
    _check_count(len(raw), "/resourceIds")
    return [_body_id(rid, f"/resourceIds/{n}") for n, rid in enumerate(raw)]


def _body_id(rid: Any, pointer: str) -> str:
    """An id as the worker compares it: a string, or an integer as its decimal string."""
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    if not isinstance(rid, str) or not rid or len(rid) > MAX_ID_LENGTH:
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"an id is a non-empty string of at most {MAX_ID_LENGTH} characters, or an integer",
            pointer=pointer,
        )
    refuse_nul(rid, pointer)
    return rid


def _check_count(n: int, pointer: str) -> None:
    if n > MAX_DELETE_IDS:
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"{n} resourceIds; at most {MAX_DELETE_IDS} per request",
            pointer=pointer,
        )
