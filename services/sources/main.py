"""The sources stage: schedules runs, claims them, runs them; any number may run at once.

Every ``INGESTD_SOURCE_POLL_MS`` a stage (1) fails the runs whose stage stopped
beating (``run_abandoned``, after ``INGESTD_SOURCE_STALE_S``) and aborts their
snapshot sessions, (2) queues a run for each scheduled source that is due, and
(3) claims queued runs up to ``INGESTD_SOURCE_CONCURRENCY``. All three are single
statements in PostgreSQL (:class:`shared.pg.sources.SourceStore`): a unique index
allows one open run per source, a claim takes a queued run with ``FOR UPDATE SKIP
LOCKED``, and every later write of a run is conditional on its owner — so two
stages never run one source at once, by construction rather than by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import signal
import socket
from datetime import UTC, datetime

from redis.asyncio import Redis

from services.sources.run import Run, RunContext
from shared import tasks
from shared.codes import Code
from shared.config import Settings
from shared.errors import ConfigError
from shared.outage import UNREACHABLE, Outages
from shared.pg.migrate import require_migrated
from shared.pg.pool import close_pool, pool_when_reachable
from shared.pg.registry import RegistryCache, RegistryStore
from shared.pg.sources import RunRow, SourceRow, SourceStore
from shared.pull.model import PullError
from shared.redis import durable
from shared.redis.durable import Guard
from shared.redis.intake import abort_snapshot
from shared.registry import TableInfo
from shared.secrets import SecretBox

log = logging.getLogger("ingestd.sources")


class SourcesStage:
    def __init__(
        self, settings: Settings, store: SourceStore, registry: RegistryCache, redis: Redis,
        guard: Guard | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self.registry = registry
        self.redis = redis
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.ctx = RunContext(
            redis=redis,
            store=store,
            owner=self.owner,
            partitions=settings.partitions,
            session_ttl=settings.session_ttl,
            receipt_ttl=settings.receipt_ttl,
            retries=settings.source_retries,
            connect_timeout_s=settings.source_connect_timeout_ms / 1000,
            read_timeout_s=settings.source_read_timeout_ms / 1000,
            heartbeat_s=max(0.2, settings.source_stale_s / 4),
            guard=guard,
        )
        self.running: dict[str, asyncio.Task[str]] = {}
        self.outages = Outages(log)
        self.finished = 0

    async def tick(self) -> None:
        """One round: stale runs, due schedules, claims."""
        for stale in await self.store.abandon_stale(self.settings.source_stale_s):
            await self._abort_session(stale)
        await self.store.schedule_due(datetime.now(UTC))
        while len(self.running) < self.settings.source_concurrency:
            run = await self.store.claim_run(self.owner)
            if run is None:
                return
            await self._start(run)

    async def _table(self, run: RunRow) -> tuple[SourceRow, TableInfo | None]:
        """The run's source and the table it writes (None once the table is gone)."""
        source = await self.store.get_source(run.source_id)
        await self.registry.refresh()
        return source, self.registry.snapshot.table(source.group_id, source.table_name)

    async def _start(self, run: RunRow) -> None:
        source, table = await self._table(run)
        if table is None:
            gone = PullError(Code.TABLE_NOT_FOUND, "the source's table no longer exists")
            await self.store.finish_run(run.id, self.owner, "failed", error=gone.as_dict())
            return
        spec_raw = await self.store.spec_revision(source.spec_id, run.spec_revision)
        log.info("source %s: run %s (%s) started", source.name, run.id, run.kind)
        task = asyncio.create_task(Run(self.ctx, run, source, spec_raw, table).execute())
        self.running[run.id] = task
        task.add_done_callback(functools.partial(self._done, run.id))

    def _done(self, run_id: str, _task: asyncio.Task[str]) -> None:
        task = self.running.pop(run_id, None)
        self.finished += 1
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("run %s ended with a defect", run_id, exc_info=task.exception())

    async def _abort_session(self, run: RunRow) -> None:
        """A run failed as abandoned: drop its snapshot session so it can never complete."""
        if not run.session:
            return
        source, table = await self._table(run)
        if table is None:
            return
        result = await abort_snapshot(
            self.redis, self.settings.partitions, table.resource_type, source.group_key,
            run.session, source.integration_id,
        )  # fmt: skip
        log.warning("source %s: run %s abandoned by its stage; session %s",
                    source.name, run.id, result)  # fmt: skip

    async def serve(self, stop: asyncio.Event) -> None:
        poll = self.settings.source_poll_ms / 1000
        while not stop.is_set():
            try:
                await self.tick()
                self.outages.all_answered()
            except UNREACHABLE as e:
                tasks.reraise_if_cancelled()
                self.outages.failed(e)
            except Exception:
                tasks.reraise_if_cancelled()
                log.exception("sources: unexpected error; retrying")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)
        await self.stop_runs()

    async def stop_runs(self) -> None:
        """Stopping: runs in flight are cancelled; their rows go stale and another stage
        fails them (``run_abandoned``) and aborts their sessions."""
        running = list(self.running.values())
        await tasks.stop_all(running, log)


async def serve(settings: Settings) -> None:
    dsn, redis_url = settings.require_servers()
    if not settings.secret_key:
        raise ConfigError("INGESTD_SECRET_KEY must be set for the sources stage (see README)")
    pool = await pool_when_reachable(dsn, 4, log)
    await require_migrated(pool)
    guard = durable.guard_for(settings.strict, settings.redis_timeout_ms)
    redis = Redis.from_url(redis_url, **(guard.client_kwargs() if guard else {}))
    if guard:
        try:
            await durable.require(redis, "sources stage")
        except ConfigError:
            await redis.aclose()
            await pool.close()
            raise
    registry = RegistryCache(RegistryStore(pool), settings.registry_poll_ms)
    await registry.start()
    store = SourceStore(pool, SecretBox(settings.secret_key))
    stage = SourcesStage(settings, store, registry, redis, guard)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("sources stage %s polling every %d ms", stage.owner, settings.source_poll_ms)
    try:
        await stage.serve(stop)
    finally:
        await registry.stop()
        await redis.aclose()
        await close_pool(pool, log)
