"""Admin API: schema groups, custom schemas, integrations and ingest keys.

Bodies are checked here, with pointers into them, before the registry store sees
them: names and titles, identifiers (:func:`~shared.schema_rules.check_identifier`)
and the schema itself (:func:`~shared.schema_rules.prepare_schema`, whose result is
what the store keeps). The store only looks things up and writes.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.gateway import compat, views
from services.gateway.http import json_object, refuse_nul, require_admin, respond
from services.gateway.state import REGISTRY, REGISTRY_STORE, SETTINGS
from shared import integration_data
from shared.codes import Code
from shared.errors import ApiError
from shared.pg.registry import RegistryStore
from shared.schema_advice import advise
from shared.schema_rules import check_identifier, prepare_schema

SCHEMA_LIMIT = 1 << 20
MAX_NAME = 200
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


def _store(request: web.Request) -> RegistryStore:
    return request.app[REGISTRY_STORE]


def name_of(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise ApiError(
            Code.INVALID_NAME,
            f"name must be a non-empty string of at most {MAX_NAME} characters",
            pointer="/name",
        )
    return value


def _title(value: Any) -> str | None:
    """A title names its table in URLs (percent-encoded, case-sensitive): a non-empty
    string without surrounding white space, and not a path segment of its own (. ..)."""
    if value is not None and (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NAME
        or value != value.strip()
        or value in (".", "..")
    ):
        raise ApiError(
            Code.INVALID_TITLE,
            f"title must be a non-empty string of at most {MAX_NAME} characters, without "
            "leading or trailing white space, other than '.' and '..' (it names the table "
            "in URLs)",
            pointer="/title",
        )
    return value


def _group_ref(value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError(
            Code.INVALID_SCHEMA_GROUP,
            "schemaGroup must be a schema group id",
            pointer="/schemaGroup",
        )
    return value


def _vendor_ref(value: Any) -> str | None:
    """An integration's vendor id (the vendor of its integration data), lower-cased."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(Code.INVALID_VENDOR_ID, "vendorId must be a string", pointer="/vendorId")
    return integration_data.vendor_id(value, "/vendorId")


@routes.post(f"{BASE}/schema-groups")
async def create_group(request: web.Request) -> web.Response:
    admin(request)
    body = await admin_body(request)
    name = name_of(body.get("name"))
    prefix = check_identifier(body.get("prefix"), "prefix")
    group = await _store(request).create_group(name, prefix)
    await _changed(request)
    return respond(request, views.group_view(group), status=201, root="schemaGroup")


@routes.get(f"{BASE}/schema-groups")
async def list_groups(request: web.Request) -> web.Response:
    admin(request)
    groups = await _store(request).list_groups()
    return respond(request, {"items": [views.group_view(g) for g in groups]}, root="schemaGroups")


@routes.get(f"{BASE}/schema-groups/{{groupId}}")
async def get_group(request: web.Request) -> web.Response:
    admin(request)
    group = await _store(request).get_group(request.match_info["groupId"])
    return respond(request, views.group_view(group), root="schemaGroup")


@routes.post(f"{BASE}/schema-groups/{{groupId}}/schemas")
async def create_schema(request: web.Request) -> web.Response:
    admin(request)
    body = await admin_body(request, SCHEMA_LIMIT)
    table = check_identifier(body.get("table"), "table")
    title = _title(body.get("title"))
    schema = prepare_schema(body.get("schema"))
    out = await _store(request).create_schema(request.match_info["groupId"], table, schema, title)
    await _changed(request)
    answer = {**views.schema_view(out), "warnings": advise(schema)}
    return respond(request, answer, status=201, root="schema")


@routes.get(f"{BASE}/schema-groups/{{groupId}}/schemas")
async def list_schemas(request: web.Request) -> web.Response:
    admin(request)
    items = await _store(request).list_schemas(request.match_info["groupId"])
    return respond(request, {"items": [views.schema_view(s) for s in items]}, root="schemas")


@routes.get(f"{BASE}/schema-groups/{{groupId}}/schemas/{{table}}")
async def get_schema(request: web.Request) -> web.Response:
    admin(request)
    m = request.match_info
    schema = await _store(request).get_schema(m["groupId"], m["table"])
    return respond(request, views.schema_view(schema), root="schema")


def _new_title(body: dict[str, Any]) -> str | None:
    """A PUT's title; a non-string one is ignored: the table keeps its own."""
    title = body.get("title")
    return _title(title) if isinstance(title, str) else None


def _strict(request: web.Request) -> bool:
    mode = request.query.get("mode", "lenient")
    if mode not in ("strict", "lenient"):
        raise ApiError(
            Code.INVALID_PARAMETER,
            "mode must be strict (refuse a version live resources would fail) or lenient",
            pointer="/query/mode",
        )
    return mode == "strict"


@routes.put(f"{BASE}/schema-groups/{{groupId}}/schemas/{{table}}")
async def update_schema(request: web.Request) -> web.Response:
    """``?mode=strict``: refused (409 ``incompatible_schema``, with the check's report)
    when live resources would fail the new version. The check reads the resources as
    they are when it runs; what is ingested meanwhile is validated as it arrives."""
    admin(request)
    strict = _strict(request)
    body = await admin_body(request, SCHEMA_LIMIT)
    m = request.match_info
    schema = prepare_schema(body.get("schema"))
    title = _new_title(body)
    store = _store(request)
    if strict:
        found = await compat.report(
            request, await store.get_schema(m["groupId"], m["table"]), schema
        )
        if not found["compatible"]:
            raise ApiError(
                Code.INCOMPATIBLE_SCHEMA,
                f"{found['refused']} of the table's {found['checked']} live resources would be "
                "refused by this version (see report.refusedResources); nothing was stored",
                status=409,
                extra={"report": found},
            )
    out = await store.update_schema(m["groupId"], m["table"], schema, title)
    await _changed(request)
    return respond(request, {**views.schema_view(out), "warnings": advise(schema)}, root="schema")


@routes.post(f"{BASE}/schema-groups/{{groupId}}/schemas/{{table}}/check")
async def check_schema(request: web.Request) -> web.Response:
    """What ``PUT`` of this body would do to the table's live resources; stores nothing.
    A title the table cannot take is refused as ``PUT`` would refuse it."""
    admin(request)
    body = await admin_body(request, SCHEMA_LIMIT)
    m = request.match_info
    schema = prepare_schema(body.get("schema"))
    title = _new_title(body)
    store = _store(request)
    current = await store.get_schema(m["groupId"], m["table"])
    if title is not None:
        await store.check_title(m["groupId"], current.table, title)
    return respond(request, await compat.report(request, current, schema), root="check")


@routes.get(f"{BASE}/schema-groups/{{groupId}}/schemas/{{table}}/versions")
async def list_versions(request: web.Request) -> web.Response:
    admin(request)
    m = request.match_info
    items = await _store(request).list_versions(m["groupId"], m["table"])
    return respond(request, {"items": [views.schema_view(s) for s in items]}, root="schemas")


@routes.post(f"{BASE}/integrations")
async def create_integration(request: web.Request) -> web.Response:
    admin(request)
    body = await admin_body(request)
    name = name_of(body.get("name"))
    group_id = _group_ref(body.get("schemaGroup"))
    vendor = _vendor_ref(body.get("vendorId"))
    integration, key = await _store(request).create_integration(name, group_id, vendor)
    await _changed(request)
    view = views.new_integration_view(integration, key)
    return respond(request, view, status=201, root="integration")


@routes.get(f"{BASE}/integrations")
async def list_integrations(request: web.Request) -> web.Response:
    admin(request)
    items = await _store(request).list_integrations()
    return respond(
        request, {"items": [views.integration_view(i) for i in items]}, root="integrations"
    )


@routes.post(f"{BASE}/integrations/{{id}}/keys")
async def add_key(request: web.Request) -> web.Response:
    admin(request)
    key = await _store(request).add_key(request.match_info["id"])
    await _changed(request)
    return respond(request, views.issued_key_view(key), status=201, root="key")


@routes.get(f"{BASE}/integrations/{{id}}/keys")
async def list_keys(request: web.Request) -> web.Response:
    admin(request)
    items = await _store(request).list_keys(request.match_info["id"])
    return respond(request, {"items": [views.key_view(k) for k in items]}, root="keys")


@routes.delete(f"{BASE}/integrations/{{id}}/keys/{{keyId}}")
async def revoke_key(request: web.Request) -> web.Response:
    admin(request)
    await _store(request).revoke_key(request.match_info["id"], request.match_info["keyId"])
    await _changed(request)
    return web.Response(status=204)
