"""Editing a resource's local fields: ``PATCH /api/v1/resources/{resourceType}/{id}``.

Admin token. The body is a JSON Merge Patch (RFC 7396) that may touch the fields the
schema marks ``"x-ownership": "local"`` only (:mod:`shared.ownership`): an external
field answers 409 ``field_not_owned``, a field the schema does not declare 400
``unknown_field``, a resource PostgreSQL does not hold 404. The edit goes through the
pipeline like every other change: a raw event of kind ``patch`` on the scope's
partition (so it takes effect in order with the syncs of that scope), 202 with its
event id, and a receipt the admin token reads. The worker validates the merged result
against the schema and the projector applies it, with ``{"admin": true}`` as the
actor (``{"admin": true, "actor": …}`` with an ``actor`` parameter).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.gateway.admin import admin
from services.gateway.http import parse_json, read_body
from services.gateway.ingest import SINGLE_LIMIT, append_event, check_content_type, common_params
from services.gateway.read import _resource_id, _resource_type
from services.gateway.state import REGISTRY, RESOURCES
from shared import jsontext
from shared.codes import Code
from shared.errors import ApiError, NotFoundError

routes = web.RouteTableDef()
PATCH_TYPES = {"application/merge-patch+json", "application/json"}


def _actor(given: Any) -> dict[str, Any]:
    return {"admin": True} if given is None else {"admin": True, "actor": given}


@routes.patch("/api/v1/resources/{resourceType}/{id}")
async def patch_resource(request: web.Request) -> web.Response:
    admin(request)
    rt = _resource_type(request)
    rid = _resource_id(request, rt)
    group_key, event, actor = common_params(request)
    check_content_type(request, PATCH_TYPES)
    body = await read_body(request, SINGLE_LIMIT)
    patch = parse_json(body)
    jsontext.refuse_lossy(body, patch)
    if not isinstance(patch, dict):
        raise ApiError(
            Code.BODY_NOT_OBJECT, "a merge patch of local fields is one JSON object", pointer=""
        )
    snapshot = request.app[REGISTRY].snapshot
    table = snapshot.by_type[rt]
    wrong = snapshot.compiled(table).ownership.check_patch(patch)
    if wrong is not None:
        status = 409 if wrong.code == Code.FIELD_NOT_OWNED else 400
        raise ApiError(wrong.code, wrong.message, pointer=wrong.pointer, status=status)
    if await request.app[RESOURCES].get_resource(rt, group_key, rid) is None:
        raise NotFoundError(Code.RESOURCE_NOT_FOUND, f"no {rt} resource {rid!r} in this group")
    params = (group_key, event, _actor(actor))
    return await append_event(
        request, None, table, "patch", orjson.dumps(patch), ids=[rid], params=params
    )
