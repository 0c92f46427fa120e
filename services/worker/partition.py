"""What a drain of one partition shares with the work it runs: the partition context.

:class:`Partition` is handed to the single-event path (``drain.py``) and to a
snapshot's :class:`~services.worker.bulk.BulkCommit` alike: the Redis client,
the lease, the connection the commits are written on, the registry, and the
rebuild of a scope's write model from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import Redis

from shared.events import RawMeta
from shared.processing import Prepared
from shared.redis import keyspace as ks
from shared.redis import writemodel
from shared.redis.conn import HeldConnection
from shared.redis.lease import Lease, LostLease
from shared.registry import RegistryCache, TableInfo

log = logging.getLogger("ingestd.worker")
LOAD_CHUNK = 2000
REBUILD_LIVE_SQL = (
    "SELECT resource_id, content_hash, version FROM resources"
    " WHERE resource_type = $1 AND group_key = $2"
)
REBUILD_TOMBSTONES_SQL = (
    "SELECT c.resource_id, max(c.version) AS v FROM resource_changes c"
    " WHERE c.resource_type = $1 AND c.group_key = $2 AND NOT EXISTS ("
    " SELECT 1 FROM resources r WHERE r.resource_type = c.resource_type"
    " AND r.group_key = c.group_key AND r.resource_id = c.resource_id)"
    " GROUP BY c.resource_id"
)


@dataclass(slots=True)
class Entry:
    """One raw event read from the partition's ingest stream."""

    sid: bytes
    meta: RawMeta
    body: bytes
    prepared: Prepared | None = None


@dataclass(slots=True)
class Partition:
    redis: Redis
    pool: asyncpg.Pool
    registry: RegistryCache
    p: int
    lease: Lease
    conn: HeldConnection = field(init=False)  # the commits' connection, written in RESP

    def __post_init__(self) -> None:
        self.conn = HeldConnection(self.redis)

    @property
    def stream(self) -> str:
        return ks.ingest_stream(self.p)

    @property
    def changes(self) -> str:
        return ks.changes_stream(self.p)

    def state_key(self, resource_type: str, group_key: str) -> str:
        return ks.state_key(self.p, resource_type, group_key)

    async def table(self, resource_type: str) -> TableInfo | None:
        """The table of ``resource_type``, asking PostgreSQL again before saying none."""
        table = self.registry.snapshot.by_type.get(resource_type)
        if table is None:
            await self.registry.refresh(force=True)
            table = self.registry.snapshot.by_type.get(resource_type)
        return table

    async def rebuild_scope(self, resource_type: str, group_key: str) -> None:
        """The scope's write model is missing: rebuild it from PostgreSQL once the projector
        has applied every change this partition emitted (so PostgreSQL is current).
        Every chunk is written only while the lease is held (and refreshes it)."""
        await self._wait_projector_caught_up()
        key = self.state_key(resource_type, group_key)
        batch: dict[str, str] = {}
        live = dead = 0

        async def flush(final: bool = False) -> None:
            nonlocal batch
            if final:
                batch.update(writemodel.loaded_fields(live, dead))
            if batch and not await self.lease.hset_if_held(key, batch):
                raise LostLease(self.lease.key)
            batch = {}

        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            async for r in conn.cursor(REBUILD_LIVE_SQL, resource_type, group_key):
                batch[r["resource_id"]] = writemodel.encode(
                    (r["content_hash"], r["version"])
                ).decode()
                live += 1
                if len(batch) >= LOAD_CHUNK:
                    await flush()
            async for r in conn.cursor(REBUILD_TOMBSTONES_SQL, resource_type, group_key):
                batch[r["resource_id"]] = writemodel.encode(("", r["v"])).decode()
                dead += 1
                if len(batch) >= LOAD_CHUNK:
                    await flush()
            await flush(final=True)
        log.info(
            "partition %s: rebuilt write model of %s/%r from PostgreSQL",
            self.p,
            resource_type,
            group_key,
        )

    async def _wait_projector_caught_up(self) -> None:
        while True:
            last = await self.redis.xrevrange(self.changes, count=1)
            if not last:
                return
            last_id = ks.stream_id_tuple(last[0][0])
            row = await self.pool.fetchrow(
                "SELECT stream_ms, stream_seq FROM projector_positions WHERE partition = $1",
                self.p,
            )
            if row is not None and (row["stream_ms"], row["stream_seq"]) >= last_id:
                return
            await self.lease.keep()
            await asyncio.sleep(0.05)
