"""Gateway application factory: resources opened in cleanup_ctx, torn down in reverse."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from services.gateway import (
    admin,
    batch,
    bulk,
    edit,
    feed,
    ingest,
    integration_data,
    preview,
    read,
    receipts,
    replay,
    sources,
    transfer,
    webhooks,
)
from services.gateway.appender import Appender, Connections
from services.gateway.group_read import GroupRead
from services.gateway.http import MAX_HEADERS, MAX_LINE, error_middleware, respond
from services.gateway.state import (
    APPENDER,
    CONNECTIONS,
    CURSOR_KEY,
    FEED,
    IDATA_READS,
    INTEGRATION_DATA,
    PG,
    REDIS,
    REGISTRY,
    REGISTRY_STORE,
    REPAIR,
    RESOURCES,
    SESSIONS,
    SETTINGS,
    SOURCES,
    TRANSFERS,
    WEBHOOKS,
)
from shared import cursors
from shared.codes import Code
from shared.config import Settings
from shared.errors import ConfigError
from shared.pg.feed import ChangeSignal, FeedStore
from shared.pg.integration_data import IntegrationDataStore
from shared.pg.migrate import require_migrated
from shared.pg.pool import close_pool, create_pool, ping
from shared.pg.registry import RegistryCache, RegistryStore
from shared.pg.repair import RepairStore
from shared.pg.resources import ResourceStore
from shared.pg.sources import SourceStore
from shared.pg.transfer import TransferStore
from shared.pg.webhooks import WebhookStore
from shared.redis import durable
from shared.redis.sessions import SessionStore
from shared.secrets import SecretBox

log = logging.getLogger("ingestd.gateway")
MAX_BODY = 5 << 20


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    dsn, redis_url = settings.require_servers()
    timeout = settings.redis_timeout_ms / 1000
    # bounded: a stopped Redis (SIGSTOP, a hung host) answers nothing, and no request may
    # wait on it for longer than this (a TCP connect to it may even succeed)
    guard = durable.guard_for(settings.strict, settings.redis_timeout_ms)
    checked = guard.client_kwargs() if guard else {}
    redis = Redis.from_url(
        redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, **checked
    )
    appends = Redis.from_url(redis_url, socket_connect_timeout=timeout, **checked)
    pool = await create_pool(dsn, max_size=10)
    try:
        await require_migrated(pool)
        if guard:
            await durable.require(redis, "gateway")
    except ConfigError:
        await close_pool(pool, log)
        await appends.aclose()
        await redis.aclose()
        raise
    app[REDIS] = redis
    app[PG] = pool
    app[SESSIONS] = SessionStore(redis, guard)
    app[REGISTRY_STORE] = RegistryStore(pool)
    app[RESOURCES] = ResourceStore(pool)
    app[REPAIR] = RepairStore(pool)
    app[INTEGRATION_DATA] = IntegrationDataStore(pool)
    app[IDATA_READS] = GroupRead(app[INTEGRATION_DATA].instances)
    box = SecretBox(settings.secret_key) if settings.secret_key else None
    app[SOURCES] = SourceStore(pool, box)
    if box is not None:
        app[WEBHOOKS] = WebhookStore(pool, box)
    signal = ChangeSignal(dsn)
    await signal.start()
    app[FEED] = FeedStore(pool, signal)
    app[TRANSFERS] = TransferStore(pool)
    registry = RegistryCache(app[REGISTRY_STORE], settings.registry_poll_ms)
    await registry.start()
    app[REGISTRY] = registry
    appender = Appender(
        redis, settings.partitions, settings.receipt_ttl,
        timeout_ms=settings.redis_timeout_ms, appends=appends, guard=guard,
        linger_ms=settings.append_linger_ms, connections=app[CONNECTIONS],
    )  # fmt: skip
    await appender.start()
    app[APPENDER] = appender
    yield
    await app[IDATA_READS].stop()
    await appender.stop()
    await registry.stop()
    await signal.stop()
    await close_pool(pool, log)
    await appends.aclose()
    await redis.aclose()


HEALTH_TIMEOUT_S = 2.0


async def _probe(name: str, check: Awaitable[Any]) -> str | None:
    try:
        await asyncio.wait_for(check, HEALTH_TIMEOUT_S)
    except TimeoutError:
        return f"{name}: no answer within {HEALTH_TIMEOUT_S:g} s"
    except Exception as e:  # any failure to answer is the reason we report
        return f"{name}: {e}"
    return None


async def healthz(request: web.Request) -> web.Response:
    results = await asyncio.gather(
        _probe("redis", request.app[REDIS].ping()),
        _probe("postgres", ping(request.app[PG])),
    )
    problems = [p for p in results if p]
    if problems:
        body = {"code": Code.UNHEALTHY, "message": "; ".join(problems)}
        return respond(request, body, status=503, root="error")
    return respond(request, {"status": "ok"}, root="health")


async def livez(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP, whatever Redis and PostgreSQL do (see /healthz)."""
    return respond(request, {"status": "alive"}, root="health")


def create_app(settings: Settings) -> web.Application:
    if not settings.admin_token:
        raise ConfigError("INGESTD_ADMIN_TOKEN must be set for the gateway")
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=MAX_BODY,
        handler_args={
            "keepalive_timeout": settings.http_idle_timeout_ms / 1000,
            "max_line_size": MAX_LINE,
            "max_field_size": MAX_LINE,
            "max_headers": MAX_HEADERS,
        },
    )
    app[SETTINGS] = settings
    app[CONNECTIONS] = Connections()
    app[CURSOR_KEY] = cursors.key_for(settings.admin_token)
    app.cleanup_ctx.append(_resources)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_routes(admin.routes)
    app.router.add_routes(replay.routes)
    app.router.add_routes(sources.routes)
    app.router.add_routes(preview.routes)
    app.router.add_routes(ingest.routes)
    app.router.add_routes(bulk.routes)
    app.router.add_routes(batch.routes)
    app.router.add_routes(receipts.routes)
    app.router.add_routes(integration_data.routes)
    app.router.add_routes(read.routes)
    app.router.add_routes(feed.routes)
    app.router.add_routes(transfer.routes)
    app.router.add_routes(webhooks.routes)
    app.on_shutdown.append(feed.end_long_polls)
    app.router.add_routes(edit.routes)
    return app
