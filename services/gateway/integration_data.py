"""Per-vendor integration data on resources (seed 001): GET/PUT of a vendor's map and the
collection of every vendor's link, JSON or XML.

The admin token reads and writes every vendor; an ingest key only its integration's
vendor, on resources of its schema group's tables (another vendor's map is 404 for it,
and its collection lists only its own link). Writes are synchronous: a PUT answers after
its commit (these tables are not resource state; the projector never writes them).
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from aiohttp import web

from services.gateway.http import is_admin, parse_json, read_body, refuse_nul, wants_xml
from services.gateway.ingest import authenticate
from services.gateway.state import IDATA_READS, INTEGRATION_DATA, REGISTRY, SETTINGS
from shared import integration_data as idata
from shared.codes import Code
from shared.errors import ApiError, NotFoundError
from shared.pg.integration_data import Entry, Writer, not_live
from shared.registry import KeyInfo, TableInfo
from shared.xmlcodec import XML_TYPES

routes = web.RouteTableDef()
BASE = "/api/v1/resources/{resourceType}/{id}/integrationdata"
MAX_TOP = 1000
DEFAULT_TOP = 100


class _Caller:
    """Who asks: the admin token (``key`` None) or an integration's ingest key."""

    def __init__(self, key: KeyInfo | None) -> None:
        self.key = key

    def writer(self) -> Writer:
        return Writer(None if self.key is None else self.key.integration_id)


def _caller(request: web.Request) -> _Caller:
    if is_admin(request, request.app[SETTINGS].admin_token):
        return _Caller(None)
    return _Caller(authenticate(request))


def _table(request: web.Request, caller: _Caller) -> TableInfo:
    rt = request.match_info["resourceType"]
    table = request.app[REGISTRY].snapshot.resource_type(rt)
    if table is None or (caller.key is not None and table.group_id != caller.key.group_id):
        raise NotFoundError(Code.RESOURCE_TYPE_NOT_FOUND, f"no resource type {rt!r}")
    return table


def _scope(request: web.Request) -> tuple[str, str]:
    for name, value in request.match_info.items():
        refuse_nul(value, f"/path/{name}")
    gk = request.query.get("groupKey", "")
    refuse_nul(gk, "/query/groupKey")
    return gk, request.match_info["id"]


def _base_url(request: web.Request) -> str:
    """The scheme and host the client used: ``X-Forwarded-Proto``/``-Host`` (their first
    value) only with ``INGESTD_TRUST_PROXY=1``."""
    scheme, host = request.scheme, request.host
    if request.app[SETTINGS].trust_proxy:
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        fwd_host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        if proto in ("http", "https"):
            scheme = proto
        if fwd_host:
            host = fwd_host
    return f"{scheme}://{host}"


def _collection_path(table: TableInfo, rid: str) -> str:
    rt, id_ = quote(table.resource_type, safe=""), quote(rid, safe="")
    return f"/api/v1/resources/{rt}/{id_}/integrationdata/"


def _query(gk: str, extra: dict[str, str] | None = None) -> str:
    params = {"groupKey": gk} if gk else {}
    params.update(extra or {})
    return "?" + urlencode(params) if params else ""


def _instance_href(base: str, table: TableInfo, rid: str, vendor: str, gk: str) -> str:
    return f"{base}{_collection_path(table, rid)}{quote(vendor, safe='')}/{_query(gk)}"


def _xml_answer(request: web.Request) -> bool:
    """XML when ``Accept`` prefers it, or when a request without a preference sent XML."""
    accept = request.headers.get("Accept", "")
    if accept.strip() in ("", "*/*"):
        return request.content_type in XML_TYPES
    return wants_xml(request)


def _answer(request: web.Request, body: bytes, xml: bool, status: int, etag: str) -> web.Response:
    return web.Response(
        body=body,
        status=status,
        headers={
            "Content-Type": "application/xml; charset=utf-8" if xml else "application/json",
            "ETag": etag,
            "Vary": "Accept",
        },
    )


def _instance(request: web.Request, e: Entry, href: str, status: int = 200) -> web.Response:
    xml = _xml_answer(request)
    if xml:
        body = idata.instance_xml(e.data, href)
    else:
        body = orjson.dumps(idata.instance_json(e.data, href))
    return _answer(request, body, xml, status, e.etag)


def _vendor(request: web.Request, caller: _Caller) -> str:
    vendor = idata.vendor_id(request.match_info["vendorId"])
    if caller.key is not None and vendor != caller.key.vendor_id:
        raise NotFoundError(
            Code.INTEGRATION_DATA_NOT_FOUND,
            f"no integration data of vendor {vendor!r} on this resource",
        )
    return vendor


@routes.get(BASE + "/{vendorId}")
@routes.get(BASE + "/{vendorId}/")
async def get_instance(request: web.Request) -> web.Response:
    caller = _caller(request)
    table = _table(request, caller)
    gk, rid = _scope(request)
    vendor = _vendor(request, caller)
    live, found = await request.app[IDATA_READS].get((table.resource_type, gk, rid, vendor))
    if not live:
        raise not_live(table.resource_type, rid)
    if found is None:
        raise NotFoundError(
            Code.INTEGRATION_DATA_NOT_FOUND,
            f"no integration data of vendor {vendor!r} on this resource",
        )
    href = _instance_href(_base_url(request), table, rid, vendor, gk)
    return _instance(request, found, href)


def _conditions(request: web.Request) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for header, arg in (("If-Match", "if_match"), ("If-None-Match", "if_none_match")):
        raw = request.headers.get(header)
        if raw is not None:
            out[arg] = idata.parse_etags(raw)
    return out


@routes.put(BASE + "/{vendorId}")
@routes.put(BASE + "/{vendorId}/")
async def put_instance(request: web.Request) -> web.Response:
    caller = _caller(request)
    table = _table(request, caller)
    gk, rid = _scope(request)
    vendor = _vendor(request, caller)
    body = await read_body(request, idata.MAX_BYTES)
    ctype = request.content_type
    if ctype in XML_TYPES:
        data = idata.from_xml(body, vendor)
    elif ctype in ("application/json", "text/json", "application/octet-stream"):
        data = idata.from_json(parse_json(body), vendor)
    else:
        raise ApiError(
            Code.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type {ctype!r} is not supported; use application/json or application/xml",
            status=415,
        )
    refuse_nul(dict(data), "")
    entry, created = await request.app[INTEGRATION_DATA].put(
        table.resource_type, gk, rid, vendor, data, caller.writer(), **_conditions(request)
    )
    href = _instance_href(_base_url(request), table, rid, vendor, gk)
    return _instance(request, entry, href, 201 if created else 200)


def _count(request: web.Request, name: str, default: int, maximum: int | None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or (maximum is not None and int(raw) > maximum):
        bound = f" of at most {maximum}" if maximum is not None else ""
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"{name} must be a non-negative integer{bound}",
            pointer=f"/query/{name}",
        )
    return int(raw)


def _expand(request: web.Request) -> set[str] | None:
    """The vendors ``expand`` names (lower-cased); None: all of them."""
    raw = request.query.get("expand")
    if raw is None or not raw.strip():
        return set()
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if any(n.lower() == "all" for n in names):
        return None
    return {idata.vendor_id(n, "/query/expand") for n in names}


@routes.get(BASE)
@routes.get(BASE + "/")
async def get_collection(request: web.Request) -> web.Response:
    caller = _caller(request)
    table = _table(request, caller)
    gk, rid = _scope(request)
    skip = _count(request, "skip", 0, None)
    top = _count(request, "top", DEFAULT_TOP, MAX_TOP)
    expand = _expand(request)
    own = None if caller.key is None else caller.key.vendor_id
    store = request.app[INTEGRATION_DATA]
    entries = await store.entries(table.resource_type, gk, rid, own, skip, top)
    base = _base_url(request)
    links = [
        idata.Link(
            idata.REL_RELATED + (title := e.data.get("VendorID") or e.vendor_id),
            _instance_href(base, table, rid, e.vendor_id, gk),
            title,
            e.data if expand is None or e.vendor_id in expand else None,
        )
        for e in entries
    ]
    extra = {k: request.query[k] for k in ("expand", "skip", "top") if k in request.query}
    self_href = base + _collection_path(table, rid) + _query(gk, extra)
    xml = _xml_answer(request)
    if xml:
        body = idata.collection_xml(links, self_href)
    else:
        body = orjson.dumps(idata.collection_json(links, self_href))
    shown = "all" if expand is None else ",".join(sorted(expand))
    seen = "|".join(f"{e.vendor_id}={e.etag}" for e in entries) + f"|{shown}|{self_href}"
    etag = '"' + hashlib.sha256(seen.encode()).hexdigest()[:24] + '"'
    return _answer(request, body, xml, 200, etag)
