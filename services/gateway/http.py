"""HTTP plumbing shared by the gateway's handlers: JSON (or XML) errors, bodies, auth.

Responses are JSON unless the request's ``Accept`` prefers ``application/xml``
(or ``text/xml``) over JSON; then :func:`respond` and error bodies use the XML
mapping of :mod:`shared.xmlcodec`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import simdjson
from aiohttp import web

from shared import xmlcodec
from shared.codes import Code
from shared.errors import ApiError

log = logging.getLogger("ingestd.gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # a plain header is cheaper than content_type=, which aiohttp parses and rebuilds
    merged = {"Content-Type": "application/json", **headers} if headers else _JSON_HEADERS
    return web.Response(body=orjson.dumps(data), status=status, headers=merged)


_JSON_HEADERS = {"Content-Type": "application/json"}


def _quality(params: list[str]) -> float:
    for p in params:
        k, _, v = p.strip().partition("=")
        if k.strip().lower() == "q":
            try:
                return float(v)
            except ValueError:
                return 0.0
    return 1.0


def wants_xml(request: web.BaseRequest) -> bool:
    """True when ``Accept`` ranks an XML type above JSON (JSON wins ties and by default)."""
    accept = request.headers.get("Accept")
    if not accept or accept == "*/*":  # the common case, without parsing
        return False
    xml_q = json_q = 0.0
    for part in accept.split(","):
        media, *params = part.split(";")
        media = media.strip().lower()
        q = _quality(params)
        if media in xmlcodec.XML_TYPES:
            xml_q = max(xml_q, q)
        elif media in ("application/json", "application/*", "*/*"):
            json_q = max(json_q, q)
    return xml_q > json_q


def xml_response(
    data: dict[str, Any],
    status: int = 200,
    headers: dict[str, str] | None = None,
    root: str = "response",
) -> web.Response:
    return web.Response(
        body=xmlcodec.dumps(data, root),
        status=status,
        content_type="application/xml",
        charset="utf-8",
        headers=headers,
    )


def respond(
    request: web.BaseRequest,
    data: dict[str, Any],
    status: int = 200,
    headers: dict[str, str] | None = None,
    root: str = "response",
) -> web.Response:
    """JSON, or XML when the client's ``Accept`` asks for it."""
    if wants_xml(request):
        return xml_response(data, status, headers, root)
    return json_response(data, status, headers)


def error_response(e: ApiError, request: web.BaseRequest | None = None) -> web.Response:
    if request is not None and wants_xml(request):
        return xml_response(dict(e.body()), e.status, e.headers or None, root="error")
    return json_response(e.body(), status=e.status, headers=e.headers or None)


_HTTP_CODES = {404: Code.NOT_FOUND, 405: Code.METHOD_NOT_ALLOWED, 413: Code.BODY_TOO_LARGE}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e, request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, Code.HTTP_ERROR)
        return error_response(ApiError(code, e.reason, status=e.status), request)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            ApiError(Code.INTERNAL_ERROR, "internal server error", status=500), request
        )


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the body, refusing (413) before buffering more than ``limit`` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(
            Code.BODY_TOO_LARGE, f"the body is {length} bytes; the limit is {limit}", status=413
        )
    if length is not None:
        return await request.content.readexactly(length) if length else b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                Code.BODY_TOO_LARGE, f"the body exceeds the limit of {limit} bytes", status=413
            )
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes, what: str = "body") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ApiError(
            Code.INVALID_JSON,
            f"the {what} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            f" (byte {e.pos})",
        ) from e


_simdjson = simdjson.Parser()


def is_json_array(body: bytes) -> bool:
    """Whether ``body`` is a JSON array, checked with simdjson (about 10x orjson's cost
    to build the objects, which the worker does anyway); what simdjson refuses is
    parsed again by orjson, which explains the error (400) or accepts it (for example
    an integer beyond 64 bits)."""
    try:
        doc = _simdjson.parse(body, recursive=False)
    except (ValueError, RuntimeError):
        return isinstance(parse_json(body), list)
    array = isinstance(doc, simdjson.Array)
    del doc  # the parser holds one document: no proxy may outlive this call
    return array


async def json_object(request: web.Request, limit: int = 1 << 20) -> dict[str, Any]:
    data = parse_json(await read_body(request, limit))
    if not isinstance(data, dict):
        raise ApiError(Code.BODY_NOT_OBJECT, "the body must be a JSON object", pointer="")
    return data


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def require_admin(request: web.Request, admin_token: str) -> None:
    token = bearer(request)
    if token is None:
        raise ApiError(
            Code.UNAUTHORIZED,
            "admin API needs 'Authorization: Bearer <admin token>'",
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise ApiError(
            Code.UNAUTHORIZED,
            "invalid admin token",
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )


def refuse_nul(value: Any, pointer: str) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: refuse it here (400), not as a 500.

    Iterative: bodies may nest up to orjson's 1024 levels, deeper than Python's stack.
    """
    stack = [(value, pointer)]
    while stack:
        v, ptr = stack.pop()
        if isinstance(v, dict):
            for k, item in v.items():
                stack.append((k, ptr))
                stack.append((item, f"{ptr}/{k.replace('~', '~0').replace('/', '~1')}"))
        elif isinstance(v, list):
            stack.extend((item, f"{ptr}/{n}") for n, item in enumerate(v))
        elif isinstance(v, str) and "\x00" in v:
            raise ApiError(
                Code.INVALID_CHARACTER,
                "text must not contain the NUL character (U+0000): PostgreSQL cannot store it",
                pointer=ptr,
            )
