"""The gateway's HTTP/1.1 server: aiohttp's, with every refusal in the JSON error shape.

aiohttp answers what its parser refuses (a request line or header over the limits,
a malformed request) itself, before any middleware runs, as ``text/plain`` and with
an ERROR traceback in the log. :class:`GatewayProtocol` answers those as
``{"code": "http_error", "message"}`` too and logs one INFO line: a client's
malformed request is not the gateway's error. aiohttp has no hook to choose the
protocol class (aio-libs/aiohttp#3287), so :class:`GatewayRunner` builds its
server as :class:`GatewayServer`, which creates the protocol.

Connection limits (set in :func:`services.gateway.app.create_app`, so they hold in
every runner): a connection that has not sent a complete request head
``INGESTD_HTTP_IDLE_TIMEOUT_MS`` after it opened or after its previous answer is
closed (aiohttp's keep-alive timer, which also runs before the first request);
bodies are bounded in :func:`services.gateway.http.read_body`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from services.gateway.app import create_app
from services.gateway.appender import Connections
from services.gateway.http import MAX_LINE, error_response
from services.gateway.state import CONNECTIONS
from shared.codes import Code
from shared.config import Settings
from shared.errors import ApiError

log = logging.getLogger("ingestd.gateway")


class GatewayProtocol(web.RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:  # a handler escaped the error middleware: a defect
            log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
            err = ApiError(Code.INTERNAL_ERROR, "internal server error", status=status)
        else:
            log.info("refused a malformed request from %s: %s", request.remote, message or exc)
            err = ApiError(Code.HTTP_ERROR, _describe(exc, message), status=status)
        if request.writer.output_size > 0:  # as aiohttp: the answer has begun, cannot replace it
            raise ConnectionError("response already started; cannot send the error")
        resp = error_response(err, request)
        resp.force_close()
        return resp


def _describe(exc: BaseException | None, message: str | None) -> str:
    if isinstance(exc, LineTooLong):
        return (
            f"the request line or a header line is longer than {MAX_LINE} bytes "
            '(a DELETE takes a long list of ids as a JSON body: {"resourceIds": [...]})'
        )
    return f"malformed HTTP request: {message or exc or 'bad request'}"


class GatewayServer(web.Server):
    """aiohttp's server speaking :class:`GatewayProtocol`, counting its open connections
    for the appender's linger (:class:`services.gateway.appender.Connections`)."""

    def __init__(self, *args: Any, connections: Connections, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counted = connections

    def __call__(self) -> web.RequestHandler:
        return GatewayProtocol(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.counted.open += 1

    def connection_lost(
        self, handler: web.RequestHandler, exc: BaseException | None = None
    ) -> None:
        super().connection_lost(handler, exc)
        self.counted.open -= 1


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections speak :class:`GatewayProtocol`."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GatewayServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            connections=self.app[CONNECTIONS],
            **plain._kwargs,
        )


#: how long a stopping gateway lets requests in flight finish (aiohttp's default: 60 s,
#: longer than ``ingestd dev`` waits for a stage before it kills it)
SHUTDOWN_S = 10.0


async def start(settings: Settings) -> GatewayRunner:
    """The gateway listening on ``settings.http_host:http_port``; ``cleanup()`` stops it."""
    runner = GatewayRunner(create_app(settings), access_log=None, shutdown_timeout=SHUTDOWN_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.http_host, settings.http_port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def serve(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then shut down as aiohttp's ``run_app`` does: stop
    listening, let requests in flight finish (at most ``SHUTDOWN_S``), close resources in
    reverse order (the app's cleanup_ctx). A second signal while stopping (Ctrl-C reaches
    the whole process group, and ``ingestd dev`` sends SIGTERM too) changes nothing: the
    shutdown is never cut short half-way."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("gateway: %s while stopping; still stopping", sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    runner = await start(settings)
    log.info("gateway listening on http://%s:%s", settings.http_host, settings.http_port)
    try:
        await stop.wait()
        log.info("gateway stopping")
    finally:
        began = loop.time()
        await runner.cleanup()
        log.info("gateway stopped in %.1f s", loop.time() - began)


def run(settings: Settings) -> None:
    """``ingestd gateway``: :func:`serve`, then cancel whatever is left."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(settings))
    finally:
        left = asyncio.all_tasks(loop)
        for t in left:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
