"""arq worker settings: one ``drain(p)`` job per partition time slice, and a kick cron.

A drain job holds partition ``p`` for a time slice, then releases it and
enqueues its successor, so partitions move between worker processes and any
number of workers share the load. The ``kick`` cron (every second, run by one
worker) enqueues a drain for every partition nobody holds: that is what
restarts draining after a worker is killed, once its lease expires.
"""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.worker import Worker
from redis.asyncio import Redis

from services.worker.drain import Drainer
from shared.config import Settings
from shared.pg.migrate import require_migrated
from shared.pg.pool import create_pool
from shared.pg.registry import RegistryCache, RegistryStore
from shared.pg.resources import ResourceStore
from shared.redis import keyspace as ks
from shared.redis.consumer import consumer_name

log = logging.getLogger("ingestd.worker")


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    dsn, redis_url = settings.require_servers()
    ctx["streams"] = Redis.from_url(redis_url)
    ctx["pg"] = await create_pool(dsn, max_size=4)
    await require_migrated(ctx["pg"])
    ctx["resources"] = ResourceStore(ctx["pg"])
    registry = RegistryCache(RegistryStore(ctx["pg"]), settings.registry_poll_ms)
    await registry.start()
    ctx["registry"] = registry
    ctx["consumer"] = consumer_name()


async def shutdown(ctx: dict[str, Any]) -> None:
    if "registry" in ctx:
        await ctx["registry"].stop()
    if "pg" in ctx:
        await ctx["pg"].close()
    if "streams" in ctx:
        await ctx["streams"].aclose()


async def drain(ctx: dict[str, Any], p: int) -> int:
    settings: Settings = ctx["settings"]
    d = Drainer(
        ctx["streams"], ctx["resources"], ctx["registry"], p, settings.drain_batch, ctx["consumer"]
    )
    # a jittered slice: partitions started together would otherwise hand over together,
    # and whichever worker polls first would take them all again
    held = await d.run(settings.drain_slice_s * random.uniform(0.75, 1.25))
    if held:
        await ctx["redis"].enqueue_job("drain", p, _job_id=ks.drain_job_id(p, uuid.uuid4().hex))
    return d.processed


async def kick(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    redis: Redis = ctx["streams"]
    pipe = redis.pipeline(transaction=False)
    for p in range(settings.partitions):
        pipe.exists(ks.drain_lock(p))
    held = await pipe.execute()
    for p, h in enumerate(held):
        if not h:
            await ctx["redis"].enqueue_job("drain", p, _job_id=ks.drain_job_id(p, uuid.uuid4().hex))


def create_worker(settings: Settings) -> Worker:
    _, redis_url = settings.require_servers()
    return Worker(
        functions=[drain],
        cron_jobs=[cron(kick, second=set(range(60)), microsecond=0, run_at_startup=True)],
        queue_name=ks.ARQ_QUEUE,
        redis_settings=RedisSettings.from_dsn(redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx={"settings": settings},
        max_jobs=settings.partitions + 2,
        job_timeout=settings.drain_slice_s + 120,
        keep_result=0,
        poll_delay=0.05,
        max_tries=1,
        handle_signals=True,
        log_results=False,
    )


def run(settings: Settings) -> None:
    create_worker(settings).run()
