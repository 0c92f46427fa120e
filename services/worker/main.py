"""arq worker settings: one ``drain(p)`` job per partition time slice, and a kick cron.

A drain job holds partition ``p`` for a time slice, then releases it and
enqueues its successor, so partitions move between worker processes and any
number of workers share the load. The ``kick`` cron (every second, run by one
worker) enqueues a drain for every partition nobody holds: that is what
restarts draining after a worker is killed, once its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import uuid
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix
from arq.worker import Worker
from redis.asyncio import Redis

from services.worker.drain import Drainer
from shared.config import Settings
from shared.outage import UNREACHABLE, Outages
from shared.pg.migrate import require_migrated
from shared.pg.pool import close_pool, create_pool, reachable
from shared.pg.registry import RegistryCache, RegistryStore
from shared.pg.resources import ResourceStore
from shared.redis import keyspace as ks
from shared.redis.consumer import consumer_name
from shared.redis.lease import LeaseKeeper
from shared.redis.txn import CommitFailed

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
    ctx.setdefault("outages", Outages(log))
    ctx["keeper"] = LeaseKeeper(redis_url)
    ctx["keeper"].start()


async def shutdown(ctx: dict[str, Any]) -> None:
    if "keeper" in ctx:
        await asyncio.to_thread(ctx["keeper"].stop)
    if "registry" in ctx:
        await ctx["registry"].stop()
    if "pg" in ctx:
        await close_pool(ctx["pg"], log)
    if "streams" in ctx:
        await ctx["streams"].aclose()


async def drain(ctx: dict[str, Any], p: int) -> int:
    settings: Settings = ctx["settings"]
    d = Drainer(
        ctx["streams"], ctx["resources"], ctx["registry"], p, settings.drain_batch,
        ctx["consumer"], ctx["keeper"], settings.tombstone_ttl_s, settings.read_linger_ms / 1000,
    )  # fmt: skip
    outages: Outages = ctx["outages"]
    try:
        # a jittered slice: partitions started together would otherwise hand over together,
        # and whichever worker polls first would take them all again
        held = await d.run(settings.drain_slice_s * random.uniform(0.75, 1.25))
        if held:
            await ctx["redis"].enqueue_job("drain", p, _job_id=ks.drain_job_id(p, uuid.uuid4().hex))
    except UNREACHABLE as e:  # the kick re-enqueues the partition once the server answers
        outages.failed(e)
        return d.processed
    except CommitFailed as e:  # nothing applied; the batch is retried by the next drain
        log.error("partition %s: Redis refused a commit: %s", p, e)
        return d.processed
    outages.all_answered()
    return d.processed


async def kick(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    redis: Redis = ctx["streams"]
    try:
        pipe = redis.pipeline(transaction=False)
        for p in range(settings.partitions):
            pipe.exists(ks.drain_lock(p))
        held = await pipe.execute()
        for p, h in enumerate(held):
            if not h:
                job_id = ks.drain_job_id(p, uuid.uuid4().hex)
                await ctx["redis"].enqueue_job("drain", p, _job_id=job_id)
    except UNREACHABLE as e:
        ctx["outages"].failed(e)


class DrainWorker(Worker):
    """arq's worker, polling its queue cheaply. arq leaves a job in the queue while it
    runs, and every poll (20 a second) checked each queued job in three round trips; a
    drain job runs for its whole slice, so that was ~1,000 round trips a second spent on
    the partitions' own running drains. Jobs this process runs are skipped outright and
    the others' in-progress markers are read in one round trip; arq's own check then
    runs only for jobs that may really start."""

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        waiting = [j for j in job_ids if j.decode() not in self.tasks]
        if waiting:
            pipe = self.pool.pipeline(transaction=False)
            for j in waiting:
                pipe.exists(in_progress_key_prefix + j.decode())
            running = await pipe.execute()
            waiting = [j for j, r in zip(waiting, running, strict=True) if not r]
        if waiting:
            await super().start_jobs(waiting)


def create_worker(settings: Settings) -> Worker:
    _, redis_url = settings.require_servers()
    return DrainWorker(
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
        handle_signals=False,  # the supervisor (run) owns the signals
        log_results=False,
    )


def run(settings: Settings) -> None:
    asyncio.run(supervise(settings))


async def supervise(settings: Settings) -> None:
    """Run the arq worker; when Redis or PostgreSQL goes away under it (arq's own loop then
    stops with a connection error), wait until both answer and start it again. A stage
    rides out an outage of any length, with one log line when it starts and one when it
    ends. SIGINT/SIGTERM stop it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    outages = Outages(log)
    while not stop.is_set():
        worker = create_worker(settings)
        worker.ctx["outages"] = outages
        main = asyncio.create_task(worker.async_run())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({main, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if main.done() and not main.cancelled() and main.exception() is not None:
            error = main.exception()
            assert error is not None
            if not isinstance(error, UNREACHABLE):
                log.error("worker stopped: %r; starting again", error, exc_info=error)
            else:
                outages.failed(error)
        main.cancel()
        with contextlib.suppress(BaseException):
            await main
        with contextlib.suppress(Exception, asyncio.CancelledError):  # its jobs were cancelled
            await worker.close()
        if not stop.is_set():
            await _until_servers_answer(settings, stop)
            outages.all_answered()
    log.info("worker stopped")


async def _until_servers_answer(settings: Settings, stop: asyncio.Event) -> None:
    dsn, redis_url = settings.require_servers()
    while not stop.is_set():
        try:
            redis = Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
            try:
                await redis.ping()
            finally:
                await redis.aclose()
            await reachable(dsn)
            return
        except UNREACHABLE:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
