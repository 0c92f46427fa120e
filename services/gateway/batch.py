"""Batch events: many independent upserts of one (table, groupKey) scope in one request.

``POST /integration/custom-data/batch-event/{table}?groupKey=&event=&actor=`` takes a
JSON array (or an XML document whose root holds one element per resource, as for a
bulk) of at most 4 MiB (413) and 10,000 items (400 ``too_many_items``) and answers
``202 {"eventId"}``. It is NOT a snapshot: nothing is deleted. The worker processes each
item as a single event, in array order (the same id twice: the later one wins, as two
single events would), and an item at fault is rejected alone. One receipt holds the
counts and every item's outcome (``items``: the first 1,000, ``itemsTotal``).

Stored as a single-request bulk is (a one-part session: the body in Redis, one raw
event of kind ``batch`` naming it), so the ingest stream never carries 4 MiB entries.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from services.gateway.bulk import BULK_LIMIT, IMPLICIT, store_single
from services.gateway.http import json_array_length, read_body
from services.gateway.idempotency import claim_for, header_key, recorded
from services.gateway.ingest import (
    BODY_TYPES,
    authenticate,
    check_content_type,
    common_params,
    from_xml,
    partition,
    resolve_table,
)
from shared import xmlcodec
from shared.codes import Code
from shared.errors import ApiError
from shared.events import RawMeta, new_event_id
from shared.redis.sessions import Scope
from shared.registry import TableInfo

BATCH_LIMIT = BULK_LIMIT
MAX_ITEMS = 10_000

routes = web.RouteTableDef()


async def batch_body(raw: bytes, ctype: str, table: TableInfo) -> bytes:
    """The batch as a JSON array of at most :data:`MAX_ITEMS` items (XML mapped with the
    table's schema); 400 otherwise."""
    if ctype in xmlcodec.XML_TYPES:
        items = await from_xml(xmlcodec.resources_from_xml, raw, table)
        _check_count(len(items))
        return orjson.dumps(items)
    n = json_array_length(raw)
    if n is None:
        raise ApiError(
            Code.BODY_NOT_ARRAY, "a batch body must be a JSON array of resources", pointer=""
        )
    _check_count(n)
    return raw


def _check_count(n: int) -> None:
    if n > MAX_ITEMS:
        raise ApiError(
            Code.TOO_MANY_ITEMS,
            f"the batch has {n} items; at most {MAX_ITEMS} are allowed per request",
            pointer="",
        )


@routes.post("/integration/custom-data/batch-event/{table}")
async def post_batch(request: web.Request) -> web.Response:
    key = authenticate(request)
    table = resolve_table(request, key)
    group_key, event, actor = common_params(request)
    idem = header_key(request)
    ctype = check_content_type(request, BODY_TYPES)
    raw = await read_body(request, BATCH_LIMIT)
    claim = claim_for(request, key.integration_id, idem, table.table, raw)
    body = await batch_body(raw, ctype, table)
    earlier = await recorded(request, key.integration_id, claim)
    if earlier is not None:
        return earlier
    p = partition(request, table, group_key)
    eid = new_event_id()
    scope = Scope(p, table.resource_type, group_key, IMPLICIT + eid)
    extra: dict[str, Any] = {"session": scope.session}
    if claim is not None:
        extra["idem"] = [claim.key, claim.fingerprint]
    meta = RawMeta(
        eid, "batch", key.integration_id, table.table, table.resource_type, group_key, event,
        actor, int(time.time() * 1000), None, extra,
    )  # fmt: skip
    return await store_single(request, scope, key, meta, body, claim)
