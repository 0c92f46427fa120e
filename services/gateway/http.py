"""HTTP plumbing shared by the gateway's handlers: JSON (or XML) errors, bodies, auth.

Responses are JSON unless the request's ``Accept`` prefers ``application/xml``
(or ``text/xml``) over JSON; then :func:`respond` and error bodies use the XML
mapping of :mod:`shared.xmlcodec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_plus, unquote_to_bytes

import asyncpg
import orjson
import simdjson
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError
from yarl import URL

from services.gateway.state import SETTINGS
from shared import xmlcodec
from shared.codes import Code
from shared.errors import ApiError
from shared.pointer import join as join_pointer

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
#: aiohttp's parser limits, passed explicitly because the README quotes them
MAX_LINE = 8190  # the request line (method, path and query) and each header line
MAX_HEADERS = 128
RETRY_AFTER = {"Retry-After": "1"}

#: a dependency that does not answer: an expected condition (503, one warning line),
#: not a defect. Driver classes, never message text.
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, RedisOutOfMemoryError)
_PG_DOWN = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08 and a connection lost mid-query
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
_DOWN = (*_REDIS_DOWN, *_PG_DOWN, OSError, TimeoutError)  # OSError: asyncpg's connect


def _dependency(e: BaseException) -> str:
    """Which server did not answer: by the driver's class, or for a plain OSError (asyncpg
    raises the socket's own when it cannot connect) by the driver it came from."""
    if isinstance(e, _REDIS_DOWN):
        return "Redis"
    if isinstance(e, _PG_DOWN) or _raised_in(e, "asyncpg"):
        return "PostgreSQL"
    if _raised_in(e, "redis"):
        return "Redis"
    return "Redis or PostgreSQL"


def _raised_in(e: BaseException, package: str) -> bool:
    return any(
        frame.f_globals.get("__name__", "").partition(".")[0] == package
        for frame, _ in traceback.walk_tb(e.__traceback__)
    )


def client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        if e.status == 408:
            return await _answer_and_close(request, e)
        return error_response(e, request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(await _http_error(request, e), request)
    except Exception as e:
        if client_gone(request):  # e.g. the body ended early: nobody to answer
            log.info("client went away during %s %s: %r", request.method, request.path, e)
            return web.Response(status=400)  # never sent: the transport is closed
        if isinstance(e, _DOWN):
            what = _dependency(e)
            log.warning("%s %s: %s unavailable: %r", request.method, request.path, what, e)
            return error_response(
                ApiError(Code.UNAVAILABLE, f"{what} is unavailable; retry", status=503,
                         headers=RETRY_AFTER),
                request,
            )  # fmt: skip
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            ApiError(Code.INTERNAL_ERROR, "internal server error", status=500), request
        )


async def _http_error(request: web.Request, e: web.HTTPException) -> ApiError:
    """aiohttp's refusal as our error shape, keeping ``Allow`` of a 405."""
    code = _HTTP_CODES.get(e.status, Code.HTTP_ERROR)
    allow = e.headers.get("Allow")
    message = e.reason
    if e.status == 404:
        message = await _not_found_message(request) or message
    return ApiError(code, message, status=e.status, headers={"Allow": allow} if allow else None)


async def _not_found_message(request: web.Request) -> str | None:
    """For a path with a trailing slash whose bare form exists: say so."""
    path = request.path
    bare = path.rstrip("/")
    if not bare or bare == path:
        return None
    match = await request.app.router.resolve(request.clone(rel_url=URL.build(path=bare)))
    if match.http_exception is not None and match.http_exception.status == 404:
        return None
    return f"no route for {path!r}; did you mean {bare!r} (without the trailing slash)?"


async def _answer_and_close(request: web.Request, e: ApiError) -> web.StreamResponse:
    """Send the answer, then close the connection without reading the rest of the body
    (aiohttp would otherwise keep reading it for its lingering time)."""
    resp = error_response(e, request)
    resp.force_close()
    with contextlib.suppress(ConnectionError):
        await resp.prepare(request)
        await resp.write_eof()
    request.protocol.force_close()
    return resp


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the body, refusing (413) before buffering more than ``limit`` bytes. A body
    still arriving after ``INGESTD_HTTP_BODY_TIMEOUT_MS`` is refused (408) and its
    connection closed; one that arrived with its head (the common case) needs no timer."""
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(
            Code.BODY_TOO_LARGE, f"the body is {length} bytes; the limit is {limit}", status=413
        )
    if request.content.is_eof():
        return await _read(request, length, limit)
    timeout_ms = request.app[SETTINGS].http_body_timeout_ms
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            return await _read(request, length, limit)
    except TimeoutError:
        raise ApiError(
            Code.HTTP_ERROR,
            f"the body did not arrive within {timeout_ms} ms",
            status=408,
        ) from None


async def _read(request: web.Request, length: int | None, limit: int) -> bytes:
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


def json_array_length(body: bytes) -> int | None:
    """How many members ``body`` has when it is a JSON array (None: it is not one), by
    simdjson's tape without building the members; judged as :func:`is_json_array`."""
    try:
        doc = _simdjson.parse(body, recursive=False)
    except (ValueError, RuntimeError):
        data = parse_json(body)
        return len(data) if isinstance(data, list) else None
    n = len(doc) if isinstance(doc, simdjson.Array) else None
    del doc  # the parser holds one document: no proxy may outlive this call
    return n


async def json_object(request: web.Request, limit: int = 1 << 20) -> dict[str, Any]:
    data = parse_json(await read_body(request, limit))
    if not isinstance(data, dict):
        raise ApiError(Code.BODY_NOT_OBJECT, "the body must be a JSON object", pointer="")
    return data


def query_text(request: web.Request, name: str) -> str | None:
    """A query parameter, refused (400) unless it is valid UTF-8 once percent-decoded:
    yarl replaces invalid bytes with U+FFFD, so distinct inputs would collide. Only a
    value holding U+FFFD is checked against the raw query (the common case costs one
    ``in``)."""
    value = request.query.get(name)
    if value is not None and "\ufffd" in value and not _raw_is_utf8(request, name):
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"{name} is not valid UTF-8 once percent-decoded",
            pointer=f"/query/{name}",
        )
    return value


def _raw_is_utf8(request: web.Request, name: str) -> bool:
    for pair in request.rel_url.raw_query_string.split("&"):
        key, _, raw = pair.partition("=")
        if unquote_plus(key) != name:
            continue
        try:
            unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def is_admin(request: web.Request, admin_token: str | None) -> bool:
    """Whether ``Authorization: Bearer`` carries the admin token (compared in constant time)."""
    token = bearer(request)
    if token is None or not admin_token:
        return False
    return hmac.compare_digest(token.encode(), admin_token.encode())


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
                stack.append((item, join_pointer([k], ptr)))
        elif isinstance(v, list):
            stack.extend((item, f"{ptr}/{n}") for n, item in enumerate(v))
        elif isinstance(v, str) and "\x00" in v:
            raise ApiError(
                Code.INVALID_CHARACTER,
                "text must not contain the NUL character (U+0000): PostgreSQL cannot store it",
                pointer=ptr,
            )
