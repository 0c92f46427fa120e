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
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from shared.events import RawMeta
from shared.pg.registry import RegistryCache
from shared.pg.resources import ResourceStore
from shared.processing import Prepared
from shared.redis import keyspace as ks
from shared.redis import wire, writemodel
from shared.redis.conn import HeldConnection
from shared.redis.consumer import ensure_group
from shared.redis.lease import Lease, LostLease
from shared.redis.sessions import Scope
from shared.redis.txn import commit_guarded
from shared.registry import TableInfo

log = logging.getLogger("ingestd.worker")
LOAD_CHUNK = 2000
RECOVERY_TTL = 7 * 86_400
StreamId = tuple[int, int]


SCAN_COUNT = 5000  # keys Redis visits per SCAN call of a compaction


@dataclass(slots=True)
class Entry:
    """One raw event read from the partition's ingest stream."""

    sid: bytes
    meta: RawMeta
    body: bytes
    prepared: Prepared | None = None
    local: list[str] | None = None  # the table's local fields (x-ownership local)


@dataclass(slots=True)
class Partition:
    redis: Redis
    resources: ResourceStore
    registry: RegistryCache
    p: int
    lease: Lease
    tombstone_ttl_s: int = 7 * 86_400
    conn: HeldConnection = field(init=False)  # the commits' connection, written in RESP
    # raw events up to this ingest-stream id may have taken effect already (see reconcile)
    recover_upto: StreamId | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.conn = HeldConnection(self.redis)

    async def reconcile(self) -> None:
        """Find out, once per drain, whether Redis lost writes whose effect PostgreSQL holds.

        With ``appendfsync everysec`` a Redis crash may lose the last second of its writes:
        worker commits (change entries, write-model updates, acknowledgements) among them.
        If the projector had applied some of those entries already, its recorded position
        is past the last id the changes stream ever generated. Then, in one guarded
        transaction: the changes stream's last id moves to that position (new entries
        must sort after what PostgreSQL holds), every scope's write model of the partition
        is dropped (each is rebuilt from PostgreSQL before it is used), and the recovery
        marker names the raw events that may have taken effect: each of those is checked
        against the receipts in PostgreSQL before it is decided (:meth:`already_applied`).
        """
        raw = await self.redis.get(ks.recovery_key(self.p))
        self.recover_upto = ks.stream_id_tuple(raw) if raw is not None else None
        applied = await self.resources.position(self.p)
        if applied is None or await self._last_id(self.changes) >= applied:
            return
        upto = await self._last_id(self.stream)
        await ensure_group(self.redis, self.changes, ks.PROJECTOR_GROUP)  # the stream exists
        pattern = ks.partition_state_pattern(self.p)
        states = [k async for k in self.redis.scan_iter(match=pattern, count=1000)]
        cmds = [
            wire.command("XSETID", self.changes, ks.stream_id(applied)),
            wire.command("SET", ks.recovery_key(self.p), ks.stream_id(upto), "EX", RECOVERY_TTL),
        ]
        if states:
            cmds.append(wire.command("UNLINK", *states))
        await commit_guarded(self.conn, self.lease, {self.changes: "stream"}, cmds)
        self.recover_upto = upto
        log.warning(
            "partition %s: Redis lost writes PostgreSQL holds (changes applied up to %s, the "
            "stream ends before); %s write model(s) dropped to be rebuilt, raw events up to %s "
            "are checked against PostgreSQL", self.p, applied, len(states), upto,
        )  # fmt: skip

    async def compact_tombstones(self) -> int:
        """Remove the partition's tombstones older than the TTL, at most once per quarter
        of the TTL (an hour at most) across workers; how many went.

        The walk visits the whole keyspace (every scope's write model, and a receipt
        marker per event in flight), so it runs when the partition's clock says it is
        due, never merely because a worker started: a partition seen for the first time
        (a fresh Redis, or one that lost the clock) starts the clock instead. Postponing
        is always safe: compaction only frees memory."""
        every = max(1, min(3600, self.tombstone_ttl_s // 4))
        clock = ks.compaction_due_key(self.p)
        now_ms = int(time.time() * 1000)
        due = await self.redis.get(clock)
        if due is not None and int(due) > now_ms:
            return 0
        await self.redis.set(clock, now_ms + every * 1000)
        if due is None:  # first seen: the clock starts
            return 0
        cutoff = now_ms - self.tombstone_ttl_s * 1000
        removed = 0
        # the keyspace holds every partition's keys: ask for hashes only, many a call
        async for key in self.redis.scan_iter(
            match=ks.partition_state_pattern(self.p), count=SCAN_COUNT, _type="hash"
        ):
            removed += await writemodel.compact(self.conn, self.lease, self.redis, key.decode(),
                                                cutoff)  # fmt: skip
        if removed:
            log.info("partition %s: compacted %s tombstone(s) older than %s s", self.p, removed,
                     self.tombstone_ttl_s)  # fmt: skip
        return removed

    async def fill_compacted(
        self, resource_type: str, group_key: str, known: dict[str, tuple[str, int]],
        ids: list[str],
    ) -> None:  # fmt: skip
        """``ids`` the write model of a compacted scope lacks: those PostgreSQL has a
        history for become tombstones with their last version in ``known``, so a
        re-create continues the sequence. Their history is in PostgreSQL already: an id
        leaves the write model only by compaction, long after its delete was applied."""
        missing = [rid for rid in ids if rid not in known]
        if missing:
            for rid, v in (await self.resources.last_versions(resource_type, group_key,
                                                              missing)).items():  # fmt: skip
                known[rid] = ("", v)

    async def _last_id(self, stream: str) -> StreamId:
        if not await self.redis.exists(stream):
            return (0, 0)
        info: Any = await self.redis.xinfo_stream(stream)
        return ks.stream_id_tuple(info["last-generated-id"])

    def session_scope(self, meta: RawMeta) -> Scope:
        """Where a bulk raw event's upload session lives."""
        session = str(meta.extra.get("session", ""))
        return Scope(self.p, meta.resource_type, meta.group_key, session)

    async def already_applied(self, entries: list[Entry]) -> set[str]:
        """Event ids among ``entries`` whose effect is in PostgreSQL (only raw events up to
        the recovery marker can be; for all others this costs nothing)."""
        upto = self.recover_upto
        if upto is None:
            return set()
        ids = [e.meta.id for e in entries if ks.stream_id_tuple(e.sid) <= upto]
        return await self.resources.applied_events(ids) if ids else set()

    @property
    def stream(self) -> str:
        return ks.ingest_stream(self.p)

    @property
    def changes(self) -> str:
        return ks.changes_stream(self.p)

    def state_key(self, resource_type: str, group_key: str) -> str:
        return ks.state_key(self.p, resource_type, group_key)

    async def table(self, resource_type: str, meta: RawMeta | None = None) -> TableInfo | None:
        """The table of ``resource_type``, asking PostgreSQL again before saying none. An
        event that names the registry generation it was submitted under (a replay: under
        the table's CURRENT schema) is never decided under an older one."""
        wanted = (meta.extra or {}).get("registryGeneration") if meta is not None else None
        if isinstance(wanted, int):
            await self.registry.at_least(wanted)
        table = self.registry.snapshot.by_type.get(resource_type)
        if table is None:
            await self.registry.refresh(force=True)
            table = self.registry.snapshot.by_type.get(resource_type)
        return table

    async def rebuild_scope(self, resource_type: str, group_key: str) -> None:
        """The scope's write model is missing: rebuild it from PostgreSQL once the projector
        has applied every change this partition emitted (so PostgreSQL is current).
        Every chunk is written only while the lease is held (and refreshes it)."""
        await self.wait_projector_caught_up()
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

    async def wait_projector_caught_up(self) -> None:
        """Until PostgreSQL holds every change this partition emitted."""
        while True:
            last = await self.redis.xrevrange(self.changes, count=1)
            if not last:
                return
            last_id = ks.stream_id_tuple(last[0][0])
            position = await self.resources.position(self.p)
            if position is not None and position >= last_id:
                return
            await self.lease.keep_due()
            await asyncio.sleep(0.05)
