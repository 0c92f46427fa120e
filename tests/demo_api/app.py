"""The demo API application: request log, fault injection, then the routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from tests.demo_api.routes import DEMO, Refused, add_routes
from tests.demo_api.state import DemoState, RequestLog

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _served(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Logs the request, then applies ``latency_s``, ``fail_next`` and ``redirect``."""
    state = request.app[DEMO]
    body = await request.read() if request.can_read_body else b""
    state.requests.append(
        RequestLog(
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            at=time.monotonic(),
            method=request.method,
            body=body,
        )
    )
    if state.latency_s > 0:
        await asyncio.sleep(state.latency_s)
    if state.fail_next:
        status, headers = state.fail_next.pop(0)
        page = f"<html><body><h1>{status}</h1>injected by the demo API</body></html>"
        return web.Response(status=status, headers=headers, text=page, content_type="text/html")
    if state.redirect is not None:
        target, state.redirect = state.redirect + request.path_qs, None
        return web.Response(status=state.redirect_status, headers={"Location": target})
    try:
        return await handler(request)
    except Refused as e:
        return e.response


def make_app(state: DemoState | None = None) -> web.Application:
    """The demo API over ``state`` (default: :meth:`DemoState.sample`)."""
    app = web.Application(middlewares=[_served])
    app[DEMO] = state if state is not None else DemoState.sample()
    add_routes(app)
    return app


@dataclass(frozen=True, slots=True)
class DemoServer:
    url: str  # http://127.0.0.1:<port>, no trailing slash
    state: DemoState
    port: int


@asynccontextmanager
async def running(
    state: DemoState | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[DemoServer]:
    """The demo API listening on ``host``:``port`` (0: a free port) for the block."""
    app = make_app(state)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield DemoServer(f"http://{host}:{bound}", app[DEMO], bound)
    finally:
        await runner.cleanup()
