"""What a drain of one partition shares with the work it runs: the partition context.

:class:`Partition` is handed to the single-event path (``drain.py``) and to a
snapshot's :class:`~services.worker.bulk.BulkCommit` alike: the Redis client,
the lease, the connection the commits are written on, the registry, and the
rebuild of a scope's write model from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from redis.asyncio import Redis

from shared.events import RawMeta
from shared.pg.registry import RegistryCache
from shared.pg.resources import ResourceStore
from shared.processing import Prepared
from shared.redis import keyspace as ks
from shared.redis import writemodel
from shared.redis.conn import HeldConnection
from shared.redis.lease import Lease, LostLease
from shared.registry import TableInfo

log = logging.getLogger("ingestd.worker")
LOAD_CHUNK = 2000


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
    resources: ResourceStore
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

        async with contextlib.aclosing(self.resources.scope_rows(resource_type, group_key)) as rows:
            async for rid, content_hash, version in rows:
                batch[rid] = writemodel.encode((content_hash, version)).decode()
                if content_hash:
                    live += 1
                else:
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
            position = await self.resources.position(self.p)
            if position is not None and position >= last_id:
                return
            await self.lease.keep()
            await asyncio.sleep(0.05)
