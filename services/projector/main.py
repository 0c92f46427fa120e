"""Projector process: one task per partition, each draining while it holds the lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import asyncpg
from redis.asyncio import Redis

from services.projector.apply import apply_batch
from services.projector.group import GroupCommit
from shared import tasks
from shared.config import Settings
from shared.outage import UNREACHABLE, Outages
from shared.pg import statistics
from shared.pg.migrate import require_migrated
from shared.pg.pool import close_pool, pool_when_reachable
from shared.pg.repair import RepairStore
from shared.pg.resources import ResourceStore
from shared.redis import keyspace as ks
from shared.redis.consumer import GroupReader, ack, consumer_name
from shared.redis.lease import Lease, LostLease

log = logging.getLogger("ingestd.projector")


TXN_BYTES = 2 << 20
PURGE_EVERY_S = 600.0  # how often rejected bodies past their retention are deleted


def transactions(rows: list[Any]) -> list[list[Any]]:
    """Cut a read into consecutive runs of at most ~2 MiB of change entries (at least one
    entry each): an entry may hold a whole worker batch, so the entry count alone does
    not bound a transaction."""
    out: list[list[Any]] = []
    size = 0
    for row in rows:
        n = sum(len(v) for v in row[1].values()) if row[1] else 0
        if not out or (size + n > TXN_BYTES and out[-1]):
            out.append([])
            size = 0
        out[-1].append(row)
        size += n
    return out


class Projector:
    def __init__(
        self,
        redis: Redis,
        resources: ResourceStore,
        partitions: int,
        batch: int = 1000,
        repair: RepairStore | None = None,
        retention_days: int = 30,
    ) -> None:
        self.redis = redis
        self.repair = repair
        self.retention_days = retention_days
        self.resources = resources
        self.partitions = partitions
        self.batch = batch
        self.consumer = consumer_name()
        self.applied = 0
        self.outages = Outages(log)
        self.group = GroupCommit(resources, TXN_BYTES)

    async def run(self, only: list[int] | None = None) -> None:
        """Drain every partition (``only``: those), each while holding its lease, and
        purge rejected bodies past their retention."""
        wanted = range(self.partitions) if only is None else only
        try:
            await asyncio.gather(*(self._partition(p) for p in wanted), self._purge_rejected())
        finally:
            await self.group.stop()

    async def _purge_rejected(self) -> None:
        """Every :data:`PURGE_EVERY_S`, delete the rejected bodies past their retention
        (in bounded batches: :meth:`RepairStore.purge`)."""
        while self.repair is not None:
            try:
                n = await self.repair.purge(self.retention_days)
                if n:
                    log.info("purged %s rejected bodies older than %s days", n,
                             self.retention_days)  # fmt: skip
            except (*UNREACHABLE, asyncpg.PostgresError) as e:
                tasks.reraise_if_cancelled()
                log.warning("purging rejected bodies failed (%s); next try later", e)
            await asyncio.sleep(PURGE_EVERY_S)

    async def _partition(self, p: int) -> None:
        while True:
            lease = Lease(self.redis, ks.project_lock(p))
            try:
                if await lease.acquire():
                    try:
                        await self._drain(p, lease)
                    finally:
                        # on cancellation the connection may be mid-read; the lease then
                        # simply expires, and the CancelledError must keep propagating
                        with contextlib.suppress(Exception):
                            await lease.release()
            except LostLease:
                log.warning("partition %s: projector lease lost", p)
            except UNREACHABLE as e:
                tasks.reraise_if_cancelled()
                self.outages.failed(e)
            except asyncpg.PostgresError as e:  # e.g. a serialization failure: retried
                tasks.reraise_if_cancelled()
                log.warning("partition %s: %s; retrying", p, e)
            except Exception:
                tasks.reraise_if_cancelled()
                log.exception("partition %s: unexpected error; retrying", p)
            await asyncio.sleep(1)

    async def drain_idle(self, p: int) -> bool:
        """Apply everything pending on partition ``p`` and return (used by tests and tools)."""
        lease = Lease(self.redis, ks.project_lock(p))
        if not await lease.acquire():
            return False
        try:
            await self._drain(p, lease, idle_exit=True)
        except LostLease:
            return False
        finally:
            await lease.release()
        return True

    async def _drain(self, p: int, lease: Lease, idle_exit: bool = False) -> None:
        """Apply partition ``p``'s batches while holding ``lease``: through the group commit
        when the projector runs, each alone for :meth:`drain_idle` (no task left behind)."""
        stream = ks.changes_stream(p)
        reader = GroupReader(
            self.redis, stream, ks.PROJECTOR_GROUP, self.consumer, lease, self.batch
        )
        async for rows in reader.batches(idle_exit=idle_exit):
            for chunk in transactions(rows):
                await lease.keep_due()
                entries = [(sid, f[ks.F_CHANGE]) for sid, f in chunk if f]
                settled: list[str] = []
                if idle_exit:
                    self.applied += await apply_batch(self.resources, p, entries, settled)
                else:
                    self.applied += await self.group.apply(p, entries, settled)
                # PostgreSQL answers for these events now (receipt, Idempotency-Key)
                ids = [sid for sid, _ in chunk]
                await ack(self.redis, stream, ks.PROJECTOR_GROUP, ids, settled)
                self.outages.all_answered()


STATISTICS_EVERY_S = 5.0


async def keep_statistics(pool: asyncpg.Pool) -> None:
    """Analyze the tables the pipeline grows once they outgrow their statistics
    (shared/pg/statistics.py), so no cached plan keeps scanning a table it took for
    empty. A failure is logged and tried again at the next turn."""
    while True:
        await asyncio.sleep(STATISTICS_EVERY_S)
        try:
            analyzed = await statistics.refresh_if_grown(pool)
        except (asyncpg.PostgresError, *UNREACHABLE) as e:
            log.debug("statistics: %s", e)
            continue
        if analyzed:
            log.info("analyzed %s: their rows outgrew the planner's statistics", analyzed)


async def serve(settings: Settings) -> None:
    dsn, redis_url = settings.require_servers()
    redis = Redis.from_url(redis_url)
    pool = await pool_when_reachable(dsn, max(4, settings.partitions // 2), log)
    await require_migrated(pool)
    projector = Projector(
        redis, ResourceStore(pool), settings.partitions,
        repair=RepairStore(pool), retention_days=settings.rejected_retention_days,
    )  # fmt: skip
    task = asyncio.create_task(projector.run())
    keeper = asyncio.create_task(keep_statistics(pool), name="statistics")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    log.info("projector running on %s partitions", settings.partitions)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keeper
    await close_pool(pool, log)
    await redis.aclose()
