"""Committing one batch event: its items decided as single events, then ONE MULTI/EXEC.

Contract: a batch takes effect entirely or not at all (each item's own outcome is
decided here; the batch's effects are one change entry). The change entry, the
write-model updates of the scope, the removal of the batch's one-part session (its
body) and the XACK/XDEL of its raw event are ONE guarded transaction
(:mod:`shared.redis.txn`) on the drain lease; a crash or a lost lease before EXEC
leaves the raw event pending, and the next holder decides it again from scratch.

The batch is at most 4 MiB and 10,000 items, so it is held in memory: one read of its
body, one HMGET of the write model for every id it names, the pure decision
(:func:`shared.batch.decide_batch`), one commit.
"""

from __future__ import annotations

import logging

import orjson

from services.worker.partition import Entry, Partition
from shared.batch import decide_batch, prepare_items
from shared.bulk import load_items
from shared.codes import Code
from shared.events import Change
from shared.processing import ScopeState
from shared.redis import keyspace as ks
from shared.redis import wire, writemodel
from shared.redis.consumer import ack_commands
from shared.redis.sessions import SessionStore
from shared.redis.txn import commit_guarded
from shared.schema_rules import Issue

log = logging.getLogger("ingestd.worker.batch")


class BatchCommit:
    """Decide and commit one ``batch`` raw event (see the module docstring)."""

    def __init__(self, ctx: Partition, entry: Entry, gone: list[bytes]) -> None:
        self.ctx = ctx
        self.e = entry
        self.meta = entry.meta
        self.gone = gone
        self.sessions = SessionStore(ctx.redis)
        self.scope = ctx.session_scope(entry.meta)
        self.state_key = ctx.state_key(entry.meta.resource_type, entry.meta.group_key)
        self.state = ScopeState()
        self.seq = 0

    async def run(self) -> Change:
        """Call it under :func:`~shared.gcpause.gc_paused` and drop the result
        before the pause ends (as :meth:`Drainer._batch` does): the batch's parsed JSON
        has no cycles, and refcounting frees it; a GC pass at the end of the pause over
        the batch's ~50k live objects cost ~10 % of the worker's time per item."""
        change = await self._decide()
        upto = self.ctx.recover_upto
        change.recheck = upto is not None and ks.stream_id_tuple(self.e.sid) <= upto
        await self._commit(change)
        return change

    def _refused(self, code: Code, message: str) -> Change:
        issue = Issue(code, message).as_dict()
        return Change(self.meta, "rejected", issues=[issue], issues_total=1)

    async def _decide(self) -> Change:
        head = await self.sessions.head(self.scope)
        raw = await self.sessions.part(self.scope, 1) if head.event_id == self.meta.id else None
        if raw is None:
            return self._refused(
                Code.SESSION_MISSING,
                "the batch's body is no longer stored (Redis lost it); send the batch again",
            )
        self.seq = head.seq
        table = await self.ctx.table(self.meta.resource_type, self.meta)
        if table is None:
            return self._refused(Code.TABLE_NOT_FOUND, "the table no longer exists")
        schema = self.ctx.registry.snapshot.compiled(table)
        try:
            items = load_items(raw)
        except orjson.JSONDecodeError as e:  # the gateway's check (simdjson) let it through
            return self._refused(Code.INVALID_JSON, f"the batch is not JSON: {e}")
        prepared = prepare_items(items if isinstance(items, list) else [], schema)
        ids = list(dict.fromkeys(p.extracted.id for p in prepared if p.extracted is not None))
        await self._load(ids)
        change = decide_batch(self.meta, prepared, self.state)
        if schema.ownership.pointers and change.effects:
            change.local = schema.ownership.pointers
        return change

    async def _load(self, ids: list[str]) -> None:
        """The write model's values of ``ids`` (rebuilt from PostgreSQL when missing)."""
        if not ids:
            return
        conn = self.ctx.conn
        ((loaded, values, compacted),) = await writemodel.lookup(conn, [(self.state_key, ids)])
        if not loaded:
            await self.ctx.rebuild_scope(self.meta.resource_type, self.meta.group_key)
            ((_, values, compacted),) = await writemodel.lookup(conn, [(self.state_key, ids)])
        for rid, v in zip(ids, values, strict=True):
            if v is not None:
                self.state.known[rid] = v
        if compacted and len(self.state.known) < len(ids):  # ids compacted from the model
            rt, gk = self.meta.resource_type, self.meta.group_key
            await self.ctx.fill_compacted(rt, gk, self.state.known, ids)

    async def _commit(self, change: Change) -> None:
        st = self.state
        cmds = writemodel.update_commands(self.state_key, st.dirty, st.live_delta, st.dead_delta)
        cmds.append(wire.command("XADD", self.ctx.changes, "*", ks.F_CHANGE, change.encode()))
        cmds += SessionStore.retire_commands(self.scope, self.seq, 1, 0, False)
        cmds += ack_commands(self.ctx.stream, ks.INGEST_GROUP, [self.e.sid, *self.gone])
        types = {
            self.ctx.stream: "stream",
            self.ctx.changes: "stream",
            self.state_key: "hash",
            self.scope.key: "hash",
        }
        await commit_guarded(self.ctx.conn, self.ctx.lease, types, cmds)
        log.debug("partition %s: batch %s %s %s", self.ctx.p, self.meta.id, change.status,
                  change.counts())  # fmt: skip
