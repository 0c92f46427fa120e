"""Admin API: schema groups, custom schemas, integrations and ingest keys."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.gateway.http import json_object, json_response, refuse_nul, require_admin
from services.gateway.state import PG, REGISTRY, SETTINGS
from shared import registry

SCHEMA_LIMIT = 1 << 20
routes = web.RouteTableDef()
BASE = "/admin/v1"


async def _changed(request: web.Request) -> None:
    """This gateway sees its own write at once; the others within one poll."""
    await request.app[REGISTRY].refresh(force=True)


def admin(request: web.Request) -> None:
    token = request.app[SETTINGS].admin_token
    assert token is not None
    require_admin(request, token)
    for name, value in request.match_info.items():
        refuse_nul(value, f"/path/{name}")


async def admin_body(request: web.Request, limit: int = 1 << 20) -> dict[str, Any]:
    body = await json_object(request, limit)
    refuse_nul(body, "")
    return body


@routes.post(f"{BASE}/schema-groups")
async def create_group(request: web.Request) -> web.Response:
    admin(request)
    body = await admin_body(request)
    out = await registry.create_group(request.app[PG], body.get("name"), body.get("prefix"))
    await _changed(request)
    return json_response(out, status=201)


@routes.get(f"{BASE}/schema-groups")
async def list_groups(request: web.Request) -> web.Response:
    admin(request)
    return json_response({"items": await registry.list_groups(request.app[PG])})


@routes.get(f"{BASE}/schema-groups/{{groupId}}")
async def get_group(request: web.Request) -> web.Response:
    admin(request)
    row = await registry.get_group(request.app[PG], request.match_info["groupId"])
    return json_response(registry.group_json(row))


@routes.post(f"{BASE}/schema-groups/{{groupId}}/schemas")
async def create_schema(request: web.Request) -> web.Response:
    admin(request)
    body = await admin_body(request, SCHEMA_LIMIT)
    out = await registry.create_schema(
        request.app[PG],
        request.match_info["groupId"],
        body.get("table"),
        body.get("schema"),
        body.get("title"),
    )
    await _changed(request)
    return json_response(out, status=201)


@routes.get(f"{BASE}/schema-groups/{{groupId}}/schemas")
async def list_schemas(request: web.Request) -> web.Response:
    admin(request)
    items = await registry.list_schemas(request.app[PG], request.match_info["groupId"])
    return json_response({"items": items})


@routes.get(f"{BASE}/schema-groups/{{groupId}}/schemas/{{table}}")
async def get_schema(request: web.Request) -> web.Response:
    admin(request)
    m = request.match_info
    return json_response(await registry.get_schema(request.app[PG], m["groupId"], m["table"]))


@routes.put(f"{BASE}/schema-groups/{{groupId}}/schemas/{{table}}")
async def update_schema(request: web.Request) -> web.Response:
    admin(request)
    body = await admin_body(request, SCHEMA_LIMIT)
    m = request.match_info
    out = await registry.update_schema(
        request.app[PG], m["groupId"], m["table"], body.get("schema"), body.get("title")
    )
    await _changed(request)
    return json_response(out)


@routes.get(f"{BASE}/schema-groups/{{groupId}}/schemas/{{table}}/versions")
async def list_versions(request: web.Request) -> web.Response:
    admin(request)
    m = request.match_info
    items = await registry.list_versions(request.app[PG], m["groupId"], m["table"])
    return json_response({"items": items})


@routes.post(f"{BASE}/integrations")
async def create_integration(request: web.Request) -> web.Response:
    admin(request)
    body = await admin_body(request)
    out = await registry.create_integration(
        request.app[PG], body.get("name"), body.get("schemaGroup")
    )
    await _changed(request)
    return json_response(out, status=201)


@routes.get(f"{BASE}/integrations")
async def list_integrations(request: web.Request) -> web.Response:
    admin(request)
    return json_response({"items": await registry.list_integrations(request.app[PG])})


@routes.post(f"{BASE}/integrations/{{id}}/keys")
async def add_key(request: web.Request) -> web.Response:
    admin(request)
    out = await registry.add_key(request.app[PG], request.match_info["id"])
    await _changed(request)
    return json_response(out, status=201)


@routes.get(f"{BASE}/integrations/{{id}}/keys")
async def list_keys(request: web.Request) -> web.Response:
    admin(request)
    items = await registry.list_keys(request.app[PG], request.match_info["id"])
    return json_response({"items": items})


@routes.delete(f"{BASE}/integrations/{{id}}/keys/{{keyId}}")
async def revoke_key(request: web.Request) -> web.Response:
    admin(request)
    await registry.revoke_key(
        request.app[PG], request.match_info["id"], request.match_info["keyId"]
    )
    await _changed(request)
    return web.Response(status=204)
