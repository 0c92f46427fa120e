"""Draining one partition: read a batch, decide (pure), commit atomically.

A drain holds the partition's lease for a time slice. Runs of single events and
deletes are decided together against the write model and committed in ONE
guarded transaction (:mod:`shared.redis.txn`): their change entry, the write-model
updates and the XACK/XDEL of the raw events. A bulk snapshot is committed alone,
in stream order, by :class:`~services.worker.bulk.BulkCommit`; a batch event by
:class:`~services.worker.batch.BatchCommit`; so is an admin's
``patch`` of local fields, decided against the resource as PostgreSQL holds it once
the projector has caught up (:func:`shared.patching.decide_patch`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.worker.batch import BatchCommit
from services.worker.bulk import BulkCommit
from services.worker.partition import Entry, Partition
from shared.codes import Code
from shared.events import Change, RawMeta
from shared.gcpause import gc_paused
from shared.patching import decide_patch
from shared.pg.registry import RegistryCache
from shared.pg.resources import ResourceStore
from shared.processing import (
    Prepared,
    ScopeState,
    decide_delete,
    decide_single,
    issues_resource_id,
    prepare_single,
    rejected_body,
)
from shared.redis import keyspace as ks
from shared.redis import wire, writemodel
from shared.redis.consumer import GroupReader, Row, ack_commands
from shared.redis.lease import Lease, LeaseKeeper, LostLease
from shared.redis.sessions import SessionStore
from shared.redis.txn import CommitFailed, commit_guarded
from shared.schema_rules import Issue

log = logging.getLogger("ingestd.worker")
HOLD_GRACE_S = 60.0  # how long past its slice a busy drain keeps its lease

# failures that are the environment's, not the event's: the batch is retried
RETRIED = (
    LostLease,
    CommitFailed,
    OSError,
    RedisError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class Drainer:
    def __init__(
        self,
        redis: Redis,
        resources: ResourceStore,
        registry: RegistryCache,
        p: int,
        batch: int,
        consumer: str,
        keeper: LeaseKeeper | None = None,
        tombstone_ttl_s: int = 7 * 86_400,
        linger_s: float = 0.0,
    ) -> None:
        self.ctx = Partition(
            redis, resources, registry, p, Lease(redis, ks.drain_lock(p)), tombstone_ttl_s
        )
        self.p = p
        self.reader = GroupReader(
            redis, self.ctx.stream, ks.INGEST_GROUP, consumer, self.ctx.lease, batch, linger_s
        )
        self.processed = 0
        self.keeper = keeper

    @property
    def lease(self) -> Lease:
        return self.ctx.lease

    async def run(self, slice_s: float, idle_exit: bool = False) -> bool:
        """Drain for up to ``slice_s`` seconds (or, with ``idle_exit``, until the stream has
        nothing new). False if another holder has the partition."""
        if not await self.lease.acquire():
            return False
        if self.keeper is not None:  # renewed from a thread even while the loop is busy
            self.keeper.hold(self.lease, slice_s + HOLD_GRACE_S)
        try:
            until = time.monotonic() + slice_s
            await self.ctx.reconcile()
            await self.ctx.compact_tombstones()
            async for rows in self.reader.batches(until=until, idle_exit=idle_exit):
                await self._process(rows)
        except LostLease:
            log.warning("partition %s: lease lost; stopping this drain", self.p)
        finally:
            await self._let_go()
        return True

    async def _let_go(self) -> None:
        if self.keeper is not None:
            self.keeper.drop(self.lease)
        # cancelled mid-read, the connection may be unusable: the lease then expires
        try:
            await self.ctx.conn.release()
            await self.lease.release()
        except Exception:
            await self.ctx.conn.drop()

    async def _process(self, rows: list[Row]) -> None:
        """Commit runs of single/delete events together; each bulk event alone, in order.
        An entry deleted from the stream while pending, or one whose effect PostgreSQL
        holds already (after Redis lost writes), is only acknowledged."""
        entries = [
            Entry(sid, RawMeta.decode(fields[ks.F_META]), fields.get(ks.F_BODY, b""))
            for sid, fields in rows
            if fields
        ]
        done = await self.ctx.already_applied(entries)
        by_sid = {e.sid: e for e in entries}
        run: list[Entry] = []
        gone: list[bytes] = []
        for sid, _ in rows:
            e = by_sid.get(sid)
            if e is None or e.meta.id in done:
                if e is not None and e.meta.kind in ("bulk", "batch"):
                    await self._retire(e)
                gone.append(sid)
                continue
            if e.meta.kind not in ("bulk", "patch", "batch"):
                run.append(e)
                continue
            if run:
                await self._process_run(run, gone)
                run, gone = [], []
            if e.meta.kind == "patch":
                await self._patch(e, gone)
            elif e.meta.kind == "batch":
                await self._batch(e, gone)
            else:
                await self._bulk(e, gone)
            gone = []
            self.processed += 1
        if run or gone:
            await self._process_run(run, gone)

    async def _retire(self, e: Entry) -> None:
        """A snapshot applied before Redis lost the commit that retired its session."""
        scope = self.ctx.session_scope(e.meta)
        head = await SessionStore(self.ctx.redis).head(scope)
        if head.event_id != e.meta.id or head.total is None:
            return
        snapshot = e.meta.kind == "bulk" and not e.meta.extra.get("upsert")  # not a batch
        newest = head.seq > head.committed and snapshot
        cmds = SessionStore.retire_commands(scope, head.seq, head.total, head.ttl, newest)
        await self.commit(cmds, {scope.key: "hash", scope.snapshots: "hash"})

    async def _bulk(self, e: Entry, gone: list[bytes]) -> None:
        """A snapshot, fenced like the pure step: an I/O failure, a lost lease or a refused
        commit is retried (the entry stays pending); any other failure is a defect that
        would recur on every retry, so the snapshot is rejected with a sync issue (its
        dead letter) instead."""
        try:
            await BulkCommit(self.ctx, e, gone).run()
        except RETRIED:
            raise
        except Exception as exc:
            log.exception("partition %s: snapshot %r could not be processed", self.p, e.sid)
            issue = Issue(Code.UNPROCESSABLE, f"the worker could not process this snapshot: {exc}")
            change = Change(
                e.meta, "rejected", rejected=1, issues=[issue.as_dict()], issues_total=1
            )
            await self._commit([(e, change)], {}, gone)

    async def _batch(self, e: Entry, gone: list[bytes]) -> None:
        """A batch event, alone and fenced like a snapshot (see :meth:`_bulk`)."""
        try:
            with gc_paused():  # ends once the batch's objects are freed: see BatchCommit.run
                await BatchCommit(self.ctx, e, gone).run()
        except RETRIED:
            raise
        except Exception as exc:
            log.exception("partition %s: batch %r could not be processed", self.p, e.sid)
            issue = Issue(Code.UNPROCESSABLE, f"the worker could not process this batch: {exc}")
            change = Change(
                e.meta, "rejected", rejected=1, issues=[issue.as_dict()], issues_total=1
            )
            await self._commit([(e, change)], {}, gone)

    async def _patch(self, e: Entry, gone: list[bytes]) -> None:
        """An admin's edit of local fields, alone: PostgreSQL must hold the resource as the
        write model knows it, so the merged result is validated against its real state."""
        m = e.meta
        states = await self._load_states([e])
        table = await self.ctx.table(m.resource_type, m)
        try:
            if table is None:
                raise LookupError(f"no table {m.resource_type!r} anymore")
            await self.ctx.wait_projector_caught_up()
            rid = (m.ids or [""])[0]
            row = await self.ctx.resources.get_resource(m.resource_type, m.group_key, rid)
            schema = self.ctx.registry.snapshot.compiled(table)
            state = states[(m.resource_type, m.group_key)]
            change = decide_patch(m, e.body, schema, state, row.data if row else None)
        except RETRIED:
            raise
        except Exception as exc:
            if table is not None:
                log.exception("partition %s: patch %r could not be processed", self.p, e.sid)
            code = Code.TABLE_NOT_FOUND if table is None else Code.UNPROCESSABLE
            issue = Issue(code, f"the worker could not process this patch: {exc}")
            change = Change(m, "rejected", rejected=1, issues=[issue.as_dict()], issues_total=1)
        upto = self.ctx.recover_upto
        change.recheck = upto is not None and ks.stream_id_tuple(e.sid) <= upto
        await self._commit([(e, change)], states, gone)
        self.processed += 1

    async def _process_run(self, entries: list[Entry], gone: list[bytes]) -> None:
        for e in entries:
            if e.meta.kind == "single":
                e.prepared = await self._prepare(e)
        states = await self._load_states(entries)
        changes: list[tuple[Entry, Change]] = []
        for e in entries:
            state = states[(e.meta.resource_type, e.meta.group_key)]
            if e.meta.kind == "single":
                assert e.prepared is not None
                ch = decide_single(e.meta, e.prepared, state)
                if e.local and ch.effects:
                    ch.local = e.local
                elif ch.status == "rejected":
                    ch.bodies = [rejected_body(None, issues_resource_id(ch.issues), e.body)]
                changes.append((e, ch))
            elif e.meta.kind == "delete":
                changes.append((e, decide_delete(e.meta, state)))
            else:
                raise NotImplementedError(e.meta.kind)
        upto = self.ctx.recover_upto
        if upto is not None:
            for e, ch in changes:
                ch.recheck = ks.stream_id_tuple(e.sid) <= upto
        await self._commit(changes, states, gone)
        self.processed += len(entries)

    async def _prepare(self, e: Entry) -> Prepared:
        """The pure step, fenced: an entry it cannot handle is rejected with a sync issue
        (a dead letter with its position), never retried forever."""
        table = await self.ctx.table(e.meta.resource_type, e.meta)
        if table is None:
            issue = Issue(Code.TABLE_NOT_FOUND, f"no table {e.meta.resource_type!r} anymore")
            return Prepared({}, None, [issue])
        try:
            schema = self.ctx.registry.snapshot.compiled(table)
            e.local = schema.ownership.pointers or None
            return prepare_single(e.body, schema)
        except Exception as exc:
            log.exception("partition %s: entry %r could not be processed", self.p, e.sid)
            issue = Issue(Code.UNPROCESSABLE, f"the worker could not process this event: {exc}")
            return Prepared({}, None, [issue])

    @staticmethod
    def _ids(e: Entry) -> list[str]:
        if e.meta.kind in ("delete", "patch"):
            return e.meta.ids or []
        if e.prepared is not None and e.prepared.extracted is not None:
            return [e.prepared.extracted.id]
        return []

    async def _load_states(self, entries: list[Entry]) -> dict[tuple[str, str], ScopeState]:
        wanted: dict[tuple[str, str], list[str]] = defaultdict(list)
        for e in entries:
            wanted[(e.meta.resource_type, e.meta.group_key)].extend(self._ids(e))
        scopes = {scope: list(dict.fromkeys(ids)) for scope, ids in wanted.items()}
        keys = [(self.ctx.state_key(*scope), ids) for scope, ids in scopes.items()]
        found = await writemodel.lookup(self.ctx.conn, keys)
        states: dict[tuple[str, str], ScopeState] = {}
        for (scope, ids), (loaded, values, compacted) in zip(scopes.items(), found, strict=True):
            if not loaded:
                await self.ctx.rebuild_scope(*scope)
                ((_, values, compacted),) = await writemodel.lookup(
                    self.ctx.conn, [(self.ctx.state_key(*scope), ids)]
                )
            st = ScopeState()
            for rid, v in zip(ids, values, strict=True):
                if v is not None:
                    st.known[rid] = v
            if compacted and len(st.known) < len(ids):
                await self.ctx.fill_compacted(*scope, st.known, ids)
            states[scope] = st
        return states

    async def _commit(
        self,
        changes: list[tuple[Entry, Change]],
        states: dict[tuple[str, str], ScopeState],
        gone: list[bytes],
    ) -> None:
        ids = [e.sid for e, _ in changes] + gone
        cmds: list[bytes] = []
        types = {self.ctx.stream: "stream"}
        for scope, st in states.items():
            key = self.ctx.state_key(*scope)
            cmds += writemodel.update_commands(key, st.dirty, st.live_delta, st.dead_delta)
            types[key] = "hash"
        if changes:
            batch = Change.encode_many([ch for _, ch in changes])
            cmds.append(wire.command("XADD", self.ctx.changes, "*", ks.F_CHANGE, batch))
            types[self.ctx.changes] = "stream"
        cmds += ack_commands(self.ctx.stream, ks.INGEST_GROUP, ids)
        await self.commit(cmds, types)

    async def commit(self, cmds: list[bytes], types: dict[str, str]) -> list[Any]:
        """``cmds`` in the partition's guarded transaction (see :mod:`shared.redis.txn`)."""
        return await commit_guarded(self.ctx.conn, self.lease, types, cmds)
