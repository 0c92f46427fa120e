"""Pull transfer (seed 003): ``POST /integration/custom-data/pull/transfer`` (ingest key).

``{"session_id", "type", "groupKey"?, "limit"?, "request_id"?}`` answers
``{"session_id", "transfer_data": [{"data", "id", "op", "version"}], "has_more"}``: a new
session starts with the live resources of the table (``type``: its name or title; seed
003's ``endgrate_type`` is taken as the same) in one groupKey (absent: the empty one, as
for ingest), a consistent snapshot paged by id (op ``snapshot``), then continues with
every change after it (op ``created`` / ``updated`` / ``deleted``, data ``null`` for a
delete), in feed order. The position is kept in PostgreSQL per (integration, session_id)
(:mod:`shared.pg.transfer`); the same ``request_id`` as the last call answers the same
batch again, a new one (or none) moves on. Data goes out as it is stored (normalised
formats) with the defaults of the table's current schema filled in, as the read API
serves it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.gateway.http import json_object, refuse_nul, respond
from services.gateway.ingest import MAX_GROUP_KEY, authenticate
from services.gateway.state import REGISTRY, TRANSFERS
from shared.codes import Code
from shared.errors import ApiError
from shared.pg.transfer import MAX_BATCH, ScopeMismatch, TransferItem
from shared.registry import KeyInfo, TableInfo

routes = web.RouteTableDef()
DEFAULT_LIMIT = 100
MAX_ID = 200  # session_id and request_id
FIELDS = {"session_id", "type", "endgrate_type", "groupKey", "limit", "request_id"}


def _bad(field: str, message: str) -> ApiError:
    return ApiError(Code.INVALID_PARAMETER, message, pointer=f"/{field}")


def _id_text(body: dict[str, Any], field: str, required: bool) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise _bad(field, f"{field} must be a string of 1 to {MAX_ID} characters")
    return value


def _limit(body: dict[str, Any]) -> int:
    value = body.get("limit", DEFAULT_LIMIT)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        raise _bad("limit", f"limit must be an integer from 1 to {MAX_BATCH}")
    return value


def _group_key(body: dict[str, Any]) -> str:
    value = body.get("groupKey", "")
    if not isinstance(value, str) or len(value) > MAX_GROUP_KEY:
        raise _bad("groupKey", f"groupKey must be a string of at most {MAX_GROUP_KEY} characters")
    return value


def _table(request: web.Request, key: KeyInfo, body: dict[str, Any]) -> TableInfo:
    field = "type" if "type" in body or "endgrate_type" not in body else "endgrate_type"
    name = body.get(field)
    if not isinstance(name, str) or not name:
        raise _bad(field, "type must name a table of the integration's schema group (or its title)")
    table = request.app[REGISTRY].snapshot.table(key.group_id, name)
    if table is None:
        raise ApiError(
            Code.TABLE_NOT_FOUND,
            f"no table named or titled {name!r} in this integration's schema group",
            status=404,
            pointer=f"/{field}",
        )
    return table


def _item(request: web.Request, table: TableInfo, item: TransferItem) -> dict[str, Any]:
    data = item.data
    if data is not None:
        snapshot = request.app[REGISTRY].snapshot
        data, _ = snapshot.compiled(table).plan.with_defaults(data)
    return {"data": data, "id": item.resource_id, "op": item.op, "version": item.version}


@routes.post("/integration/custom-data/pull/transfer")
async def pull_transfer(request: web.Request) -> web.Response:
    key = authenticate(request)
    body = await json_object(request)
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise _bad(unknown[0], f"unknown member {unknown[0]!r}; allowed: {sorted(FIELDS)}")
    refuse_nul(body, "")
    session_id = _id_text(body, "session_id", required=True)
    assert session_id is not None
    request_id = _id_text(body, "request_id", required=False)
    table = _table(request, key, body)
    group_key, limit = _group_key(body), _limit(body)
    try:
        batch = await request.app[TRANSFERS].next_batch(
            key.integration_id, session_id, table.resource_type, group_key, limit, request_id
        )
    except ScopeMismatch as e:
        raise ApiError(
            Code.SESSION_CONFLICT,
            f"session {session_id!r} reads resource type {e.resource_type!r} in groupKey "
            f"{e.group_key!r}; start another session_id for another table or groupKey",
            status=409,
        ) from e
    out = {
        "session_id": session_id,
        "transfer_data": [_item(request, table, i) for i in batch.items],
        "has_more": batch.has_more,
    }
    return respond(request, out, root="transfer")
