"""Draining one partition: read a batch, decide (pure), commit atomically."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.worker.bulk import BulkCommit
from shared import resp, streams
from shared.codes import Code
from shared.events import Change, RawMeta
from shared.pg.registry import RegistryCache
from shared.pg.resources import ResourceStore
from shared.processing import (
    Prepared,
    ScopeState,
    decide_delete,
    decide_single,
    prepare_single,
)
from shared.schema_rules import Issue
from shared.streamio import HeldConnection, Lease, claim_pending, ensure_group

log = logging.getLogger("ingestd.worker")
LOAD_CHUNK = 2000


@dataclass(slots=True)
class Entry:
    sid: bytes
    meta: RawMeta
    body: bytes
    prepared: Prepared | None = None


class LostLease(Exception):
    pass


_MULTI, _EXEC = resp.command("MULTI"), resp.command("EXEC")


class Drainer:
    def __init__(
        self,
        redis: Redis,
        resources: ResourceStore,
        registry: RegistryCache,
        p: int,
        batch: int,
        consumer: str,
    ) -> None:
        self.redis = redis
        self.resources = resources
        self.registry = registry
        self.p = p
        self.batch = batch
        self.consumer = consumer
        self.stream = streams.ingest_stream(p)
        self.lease = Lease(redis, streams.drain_lock(p))
        self.conn = HeldConnection(redis)  # for the commits, written in RESP
        self.processed = 0

    async def run(self, slice_s: float, idle_exit: bool = False) -> bool:
        """Drain for up to ``slice_s`` seconds (or, with ``idle_exit``, until the stream has
        nothing new). False if another holder has the partition."""
        if not await self.lease.acquire():
            return False
        try:
            await ensure_group(self.redis, self.stream, streams.INGEST_GROUP)
            await claim_pending(self.redis, self.stream, streams.INGEST_GROUP, self.consumer)
            deadline = time.monotonic() + slice_s
            backlog_id = "0"
            while time.monotonic() < deadline:
                block = None if backlog_id == "0" or idle_exit else 1000
                resp = await self.redis.xreadgroup(
                    streams.INGEST_GROUP,
                    self.consumer,
                    {self.stream: backlog_id},
                    count=self.batch,
                    block=block,
                )
                rows = resp[0][1] if resp else []
                if not rows and backlog_id == ">" and idle_exit:
                    break
                if not rows and backlog_id == "0":
                    backlog_id = ">"
                if rows:
                    await self._process(rows)
                if not await self.lease.refresh():
                    raise LostLease
        except LostLease:
            log.warning("partition %s: lease lost; stopping this drain", self.p)
        finally:
            # cancelled mid-read, the connection may be unusable: the lease then expires
            with contextlib.suppress(Exception):
                await self.conn.release()
            with contextlib.suppress(Exception):
                await self.lease.release()
        return True

    async def _process(self, rows: list[Any]) -> None:
        """Commit runs of single/delete events together; each bulk event alone, in order."""
        run: list[Entry] = []
        gone: list[bytes] = []
        for sid, fields in rows:
            if not fields:  # deleted from the stream while pending: nothing to do
                gone.append(sid)
                continue
            e = Entry(sid, RawMeta.decode(fields[streams.F_META]), fields.get(streams.F_BODY, b""))
            if e.meta.kind != "bulk":
                run.append(e)
                continue
            if run:
                await self._process_run(run, gone)
                run, gone = [], []
            await self._bulk(e, gone)
            gone = []
            self.processed += 1
        if run or gone:
            await self._process_run(run, gone)

    async def _bulk(self, e: Entry, gone: list[bytes]) -> None:
        """A snapshot, fenced like the pure step: an I/O failure or a lost lease is retried
        (the entry stays pending); any other failure is a defect that would recur on every
        retry, so the snapshot is rejected with a sync issue (its dead letter) instead."""
        try:
            await BulkCommit(self, e, gone).run()
        except (LostLease, OSError, RedisError, asyncpg.PostgresError, asyncpg.InterfaceError):
            raise
        except Exception as exc:
            log.exception("partition %s: snapshot %r could not be processed", self.p, e.sid)
            issue = Issue(Code.UNPROCESSABLE, f"the worker could not process this snapshot: {exc}")
            change = Change(
                e.meta, "rejected", rejected=1, issues=[issue.as_dict()], issues_total=1
            )
            await self._commit([(e, change)], {}, gone)

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
                changes.append((e, decide_single(e.meta, e.prepared, state)))
            elif e.meta.kind == "delete":
                changes.append((e, decide_delete(e.meta, state)))
            else:
                raise NotImplementedError(e.meta.kind)
        await self._commit(changes, states, gone)
        self.processed += len(entries)

    async def _prepare(self, e: Entry) -> Prepared:
        """The pure step, fenced: an entry it cannot handle is rejected with a sync issue
        (a dead letter with its position), never retried forever."""
        table = self.registry.snapshot.by_type.get(e.meta.resource_type)
        if table is None:
            await self.registry.refresh(force=True)
            table = self.registry.snapshot.by_type.get(e.meta.resource_type)
        if table is None:
            issue = Issue(Code.TABLE_NOT_FOUND, f"no table {e.meta.resource_type!r} anymore", None)
            return Prepared({}, None, [issue])
        try:
            return prepare_single(e.body, self.registry.snapshot.compiled(table))
        except Exception as exc:
            log.exception("partition %s: entry %r could not be processed", self.p, e.sid)
            issue = Issue(Code.UNPROCESSABLE, f"the worker could not process this event: {exc}")
            return Prepared({}, None, [issue])

    def _ids(self, e: Entry) -> list[str]:
        if e.meta.kind == "delete":
            return e.meta.ids or []
        if e.prepared is not None and e.prepared.extracted is not None:
            return [e.prepared.extracted.id]
        return []

    async def _load_states(self, entries: list[Entry]) -> dict[tuple[str, str], ScopeState]:
        wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
        for e in entries:
            wanted[(e.meta.resource_type, e.meta.group_key)].update(self._ids(e))
        scopes = list(wanted)
        pipe = self.redis.pipeline(transaction=False)
        for scope in scopes:
            pipe.hmget(
                streams.state_key(self.p, *scope), [streams.STATE_LOADED_FIELD, *wanted[scope]]
            )
        results = await pipe.execute()
        states: dict[tuple[str, str], ScopeState] = {}
        for scope, values in zip(scopes, results, strict=True):
            if values[0] != streams.STATE_FORMAT:
                await self._rebuild_scope(*scope)
                values = await cast(
                    Awaitable[list[Any]],
                    self.redis.hmget(
                        streams.state_key(self.p, *scope),
                        [streams.STATE_LOADED_FIELD, *wanted[scope]],
                    ),
                )
            st = ScopeState()
            for rid, raw in zip(wanted[scope], values[1:], strict=True):
                v = ScopeState.decode(raw)
                if v is not None:
                    st.known[rid] = v
            states[scope] = st
        return states

    async def _rebuild_scope(self, resource_type: str, group_key: str) -> None:
        """Write-model state is missing: rebuild it from PostgreSQL once the projector
        has applied every change this partition emitted (so PostgreSQL is current).
        Every chunk is written only while the lease is held (and refreshes it)."""
        await self._wait_projector_caught_up()
        key = streams.state_key(self.p, resource_type, group_key)
        batch: dict[str, str] = {}
        live = dead = 0

        async def flush(final: bool = False) -> None:
            nonlocal batch
            if final:
                batch[streams.STATE_LIVE_FIELD] = str(live)
                batch[streams.STATE_DEAD_FIELD] = str(dead)
                batch[streams.STATE_LOADED_FIELD] = streams.STATE_FORMAT.decode()
            if batch and not await self.lease.hset_if_held(key, batch):
                raise LostLease
            batch = {}

        async with contextlib.aclosing(self.resources.scope_rows(resource_type, group_key)) as rows:
            async for rid, content_hash, version in rows:
                batch[rid] = f"{content_hash}|{version}"
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
        changes = streams.changes_stream(self.p)
        while True:
            last = await self.redis.xrevrange(changes, count=1)
            if not last:
                return
            last_id = streams.stream_id_tuple(last[0][0])
            position = await self.resources.position(self.p)
            if position is not None and position >= last_id:
                return
            if not await self.lease.refresh():
                raise LostLease
            await asyncio.sleep(0.05)

    async def _commit(
        self,
        changes: list[tuple[Entry, Change]],
        states: dict[tuple[str, str], ScopeState],
        gone: list[bytes],
    ) -> None:
        ids = [e.sid for e, _ in changes] + gone
        cmds: list[bytes] = []
        for scope, st in states.items():
            if st.dirty:
                key = streams.state_key(self.p, *scope)
                flat = [
                    x
                    for rid, v in st.dirty.items()
                    for x in (rid.encode(), ScopeState.encode(v).encode())
                ]
                cmds.append(resp.command_with(("HSET", key), flat))
                if st.live_delta:
                    cmds.append(
                        resp.command("HINCRBY", key, streams.STATE_LIVE_FIELD, st.live_delta)
                    )
                if st.dead_delta:
                    cmds.append(
                        resp.command("HINCRBY", key, streams.STATE_DEAD_FIELD, st.dead_delta)
                    )
        if changes:
            batch = Change.encode_many([ch for _, ch in changes])
            cmds.append(
                resp.command("XADD", streams.changes_stream(self.p), "*", streams.F_CHANGE, batch)
            )
        if ids:
            cmds.append(resp.command_with(("XACK", self.stream, streams.INGEST_GROUP), ids))
            cmds.append(resp.command_with(("XDEL", self.stream), ids))
        await self.commit_guarded(cmds)

    async def commit_guarded(self, cmds: list[bytes]) -> list[Any]:
        """Run ``cmds`` in one MULTI/EXEC only while this drainer holds the lease: WATCH
        the lease and check its token, then the transaction (two round trips, RESP
        written here). Raises LostLease when the lease is gone or changes before EXEC."""
        key = self.lease.key
        _, token = await self.conn.exchange(
            resp.command("WATCH", key) + resp.command("GET", key), 2
        )
        if token != self.lease.token.encode():
            await self.conn.exchange(resp.command("UNWATCH"), 1)
            raise LostLease
        payload = b"".join([_MULTI, *cmds, _EXEC])
        replies = await self.conn.exchange(payload, len(cmds) + 2)
        if replies[-1] is None:  # the lease changed after WATCH: nothing was applied
            raise LostLease
        result: list[Any] = replies[-1]
        errors = [r for r in result if isinstance(r, Exception)]
        if errors:  # a defect, not a race: Redis has no rollback, so say it loudly
            log.error("partition %s: commit reported errors: %s", self.p, errors[:3])
        return result
