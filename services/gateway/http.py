"""HTTP plumbing shared by the gateway's handlers: JSON errors, bodies, auth."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from shared.errors import ApiError

log = logging.getLogger("ingestd.gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(e: ApiError) -> web.Response:
    return json_response(e.body(), status=e.status, headers=e.headers or None)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "http_error")
        return json_response({"code": code, "message": e.reason}, status=e.status)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response(
            {"code": "internal_error", "message": "internal server error"}, status=500
        )


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the body, refusing (413) before buffering more than ``limit`` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(
            "body_too_large", f"the body is {length} bytes; the limit is {limit}", status=413
        )
    if length is not None:
        return await request.content.readexactly(length) if length else b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                "body_too_large", f"the body exceeds the limit of {limit} bytes", status=413
            )
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes, what: str = "body") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ApiError(
            "invalid_json",
            f"the {what} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            f" (byte {e.pos})",
        ) from e


async def json_object(request: web.Request, limit: int = 1 << 20) -> dict[str, Any]:
    data = parse_json(await read_body(request, limit))
    if not isinstance(data, dict):
        raise ApiError("body_not_object", "the body must be a JSON object", pointer="")
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
            "unauthorized",
            "admin API needs 'Authorization: Bearer <admin token>'",
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise ApiError(
            "unauthorized",
            "invalid admin token",
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
