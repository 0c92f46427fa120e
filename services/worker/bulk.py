"""Committing one bulk snapshot: a streamed diff against the scope, then ONE MULTI/EXEC.

Contract: a snapshot takes effect entirely or not at all. Every change entry it
produces, every write-model update, the snapshot sequence of its scope, the
retirement of its upload session and the XACK/XDEL of its raw event are queued
in ONE guarded transaction (:mod:`shared.redis.txn`) on the drain lease. A crash or a lost lease
before EXEC leaves nothing but scratch keys (named per lease token, with a TTL),
and the raw event is re-read by the next holder, which starts over.

Memory stays bounded whatever the scope size: session parts (each at most one
request body) are read one at a time; the snapshot's id index lives in Redis
(:func:`keyspace.bulk_work_keys`); deletions are found by HSCAN over the scope's
write model inside a script that returns only ids absent from the index; changed
items are re-read from their part and turned into change-entry slices staged in a
Redis list; the commit streams that list into the transaction slice by slice (a
raw MULTI on one connection, so the client never buffers the whole transaction).

Steps: (1) scan every item: validate, id, content hash; per chunk, one round trip
of plain commands (HMGET of the write model and of the index, HSET of the previous
chunk's index entries) classifies it and finds duplicate ids; (2) if nothing is at
fault (or ``partial``), stage upserts of changed items and deletions of live ids
absent from the index; (3) commit.

The write model counts its live ids (:mod:`shared.redis.writemodel`), and step 1
counts the indexed ids that are live, so step 2 knows how many deletions there
are before it looks: none (the common sync: nothing removed) skips the scan of
the scope, and the scan stops once it has found them all.

Slices (:mod:`services.worker.slices`) hold a few effects each; only the last
entry carries the receipt (see ``services/projector/apply.py``). The projector may
apply a large snapshot over several transactions, each idempotent by stream
position, so ``resources`` can show a prefix of it for a moment, but the receipt
says ``applied`` only with the last slice. Trade-off: the Redis scratch index
costs about 100 bytes per item while the diff runs (and goes to the AOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from array import array
from dataclasses import dataclass
from typing import Any

import orjson

from services.worker import slices
from services.worker.partition import Entry, Partition
from services.worker.slices import SCRATCH_TTL, Slicer, unframe
from shared.bulk import (
    CHANGED,
    DUPLICATE,
    INVALID,
    UNCHANGED,
    FastExtractor,
    ScannedChunk,
    Tally,
    deletion,
    load_items,
    scan_chunk,
)
from shared.codes import Code
from shared.events import Change
from shared.gcpause import gc_paused
from shared.processing import apply_upsert
from shared.redis import keyspace as ks
from shared.redis import wire, writemodel
from shared.redis.consumer import ack_commands
from shared.redis.sessions import SessionStore
from shared.redis.txn import GuardedTransaction
from shared.schema_rules import Extracted, Issue

log = logging.getLogger("ingestd.worker.bulk")

CHUNK = 5000  # items (or scanned fields) per Redis round trip
_CHANGED, _DUPLICATE, _INVALID, _UNCHANGED = (
    c.encode() for c in (CHANGED, DUPLICATE, INVALID, UNCHANGED)
)
_CLASS = {True: _UNCHANGED, False: _CHANGED}  # by "the write model holds this hash"
_TOMBSTONE = writemodel.TOMBSTONE_BYTE


@dataclass(slots=True)
class _Lookup:
    """A chunk whose lookups were sent; its replies are read when it is classified."""

    chunk: ScannedChunk
    part: int
    positions: array[int]
    offset: int
    replies: int


class SnapshotGone(Exception):
    """The session (or one of its parts) is no longer in Redis."""


class SnapshotUnreadable(Exception):
    """A part passed the gateway's JSON check but orjson refuses it."""


class BulkCommit:
    """Diff and commit one bulk raw event (see the module docstring)."""

    def __init__(self, ctx: Partition, entry: Entry, gone: list[bytes]) -> None:
        self.ctx = ctx
        self.redis = ctx.redis
        self.e = entry
        self.meta = m = entry.meta
        self.gone = gone
        self.p = ctx.p
        self.sessions = SessionStore(ctx.redis)
        self.scope = ctx.session_scope(m)
        self.partial = bool(m.extra.get("partial"))
        # an upsert batch (an incremental pull run's page): deletes nothing, is not a
        # snapshot, so it neither supersedes snapshots nor is superseded by them
        self.upsert = bool(m.extra.get("upsert"))
        self.state_key = ctx.state_key(m.resource_type, m.group_key)
        self.index_key, self.out_key = ks.bulk_work_keys(self.p, m.id, ctx.lease.token)
        self.parts = 0
        self.seq = 0  # set once the session is read: only then is it retired
        self.slices = 0
        self.timings: dict[str, float] = {}
        self.session_ttl = SCRATCH_TTL
        self.matched_live = 0  # indexed ids that are live in the write model
        self.deltas = (0, 0)  # change of the scope's live and dead counts if it applies
        self._index_writes: list[bytes] = []  # id, entry, id, entry … not yet sent
        self.compacted = False  # the scope's tombstones were compacted once

    async def run(self) -> None:
        try:
            change = await self._decide()
        except SnapshotGone:
            change = self._refused(
                Code.SESSION_MISSING,
                "the upload session or one of its parts is no longer stored "
                "(expired or removed); send the snapshot again",
            )
        except SnapshotUnreadable as e:
            change = self._refused(Code.INVALID_JSON, str(e))
        t0 = time.perf_counter()
        await self._commit(change)
        self.timings["commit"] = time.perf_counter() - t0
        log.info(
            "partition %s: bulk %s %s %s in %s",
            self.p,
            self.meta.id,
            change.status,
            change.counts(),
            {k: round(v, 2) for k, v in self.timings.items()},
        )

    # -- deciding -------------------------------------------------------------------

    async def _decide(self) -> Change:
        head = await self.sessions.head(self.scope)
        if head.event_id != self.meta.id or head.total is None:
            raise SnapshotGone
        self.parts, self.session_ttl, self.seq = head.total, head.ttl, head.seq
        if self.seq <= head.committed and not self.upsert:
            return self._refused(
                Code.SNAPSHOT_SUPERSEDED,
                "a snapshot of this scope opened after this one has already been applied; "
                "this older one is discarded so it cannot overwrite newer data",
            )
        table = await self.ctx.table(self.meta.resource_type, self.meta)
        if table is None:
            return self._refused(Code.TABLE_NOT_FOUND, "the table no longer exists")
        fx = FastExtractor(self.ctx.registry.snapshot.compiled(table))
        if not await writemodel.is_loaded(self.redis, self.state_key):
            await self.ctx.rebuild_scope(self.meta.resource_type, self.meta.group_key)
        await self.redis.unlink(self.index_key, self.out_key)
        self.compacted = await writemodel.is_compacted(self.redis, self.state_key)
        tally = Tally(self.partial, with_parts=not self.scope.implicit, upsert=self.upsert)
        t0, c0 = time.perf_counter(), time.process_time()
        with gc_paused():
            changed = await self._scan(fx, tally)
        self.timings["scan"] = time.perf_counter() - t0
        self.timings["scan_cpu"] = time.process_time() - c0
        if tally.rejects_all:
            return tally.final(self.meta, {}, [])
        slicer = Slicer(self.redis, self.meta, self.out_key, fx.schema.ownership.pointers or None)
        t0 = time.perf_counter()
        await self._stage_upserts(fx, changed, slicer)
        self.timings["upserts"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if tally.may_delete:
            await self._stage_deletions(slicer)
        await slicer.cut(force=True)
        self.timings["deletions"] = time.perf_counter() - t0
        self.slices = slicer.slices
        self.deltas = (slicer.live_delta, slicer.dead_delta)
        return tally.final(self.meta, slicer.totals, [])

    def _refused(self, code: Code, message: str) -> Change:
        issue = Issue(code, message).as_dict()
        return Change(self.meta, "rejected", issues=[issue], issues_total=1, totals={})

    async def _part(self, n: int, raw: bytes | None = None) -> list[Any]:
        """Part ``n``'s items (``raw``: its body, when already fetched)."""
        if raw is None:
            raw = await self._raw_part(n)
        try:
            items = load_items(raw)
        except orjson.JSONDecodeError as e:  # the gateway's check (simdjson) let it through
            raise SnapshotUnreadable(f"part {n} is not JSON this worker can read: {e}") from e
        return items if isinstance(items, list) else []

    async def _raw_part(self, n: int) -> bytes:
        raw = await self.sessions.part(self.scope, n)
        if raw is None:
            raise SnapshotGone
        return raw

    async def _scan(self, fx: FastExtractor, tally: Tally) -> dict[int, array[int]]:
        """Step 1: validate, hash, classify and index every item; return changed positions.

        The lookups go packed by hiredis on the partition's held connection (redis-py
        would spend more time packing a chunk's arguments than Redis spends answering),
        and a chunk's lookups are answered while the next chunk is being validated."""
        changed: dict[int, array[int]] = {}
        offset = 0
        sent: _Lookup | None = None
        conn = self.ctx.conn
        fetch = asyncio.create_task(self._raw_part(1)) if self.parts else None
        try:
            for part in range(1, self.parts + 1):
                assert fetch is not None
                raw = await fetch  # the next part arrives while this one is scanned
                fetch = asyncio.create_task(self._raw_part(part + 1)) if part < self.parts else None
                items = await self._part(part, raw)
                del raw
                positions = changed.setdefault(part, array("I"))
                for start in range(0, len(items), CHUNK):
                    chunk = scan_chunk(items[start : start + CHUNK], offset + start, fx)
                    for s in chunk.invalid:
                        tally.invalid(s, part)
                        tally.keep_body(s, items[s.index - offset])
                    if sent is not None:
                        await self._classify(sent, tally, fx)
                    await self.ctx.lease.keep()
                    sent = await self._look_up(chunk, part, positions, offset)
                offset += len(items)
            if sent is not None:
                await self._classify(sent, tally, fx)
            if self._index_writes:
                await conn.exchange(self._index_write_commands(), 2)
        except BaseException:
            if sent is not None:  # its replies are still coming: the connection is out of step
                await conn.drop()
            raise
        finally:
            if fetch is not None:  # a scan that failed early: drop the prefetch quietly
                fetch.cancel()
                with contextlib.suppress(BaseException):
                    await fetch
        return {part: pos for part, pos in changed.items() if pos}

    def _index_write_commands(self) -> bytes:
        """HSET of the index entries not yet sent (and the index's TTL): two replies."""
        writes, self._index_writes = self._index_writes, []
        return wire.command("HSET", self.index_key, *writes) + wire.command(
            "EXPIRE", self.index_key, SCRATCH_TTL
        )

    async def _look_up(
        self,
        chunk: ScannedChunk,
        part: int,
        positions: array[int],
        offset: int,
    ) -> _Lookup | None:
        """Send the index entries so far, then the chunk's write-model and index lookups."""
        if not chunk.ids:
            return None
        head, replies = b"", 2
        if self._index_writes:
            head, replies = self._index_write_commands(), 4
        ids = wire.Packed(chunk.ids)
        lookups = wire.command_with(("HMGET", self.state_key), ids)
        lookups += wire.command_with(("HMGET", self.index_key), ids)
        await self.ctx.conn.send(head + lookups)
        return _Lookup(chunk, part, positions, offset, replies)

    async def _classify(self, sent: _Lookup, tally: Tally, fx: FastExtractor) -> None:
        """Compare each item's hash with the write model (the rule of
        :func:`shared.bulk.classify`) and index it as class + position; an id already
        indexed is a duplicate (its first entry gets the prefix D, once). The index
        entries go to Redis ahead of the next chunk's lookups, so ``earlier`` holds
        every entry of the chunks before this one."""
        *_, current, earlier = await self.ctx.conn.read(sent.replies)
        writes = self._index_writes
        positions, offset, part = sent.positions, sent.offset, sent.part
        chunk = sent.chunk
        n = len(chunk.ids)
        if (
            None not in current
            and None not in chunk.hashes
            and earlier.count(None) == n
            and len(set(chunk.ids)) == n
        ):
            # the common chunk of a sync: every id known, valid, seen once. The same
            # rule at C speed (map), about half the cost of the loop below
            marks = map(writemodel.live_prefix, chunk.hashes)  # type: ignore[arg-type]
            same = list(map(bytes.startswith, current, marks))
            self.matched_live += n - sum(map(writemodel.is_tombstone, current))
            unchanged = sum(same)
            tally.unchanged += unchanged
            if unchanged < n:
                changed = zip(chunk.indexes, same, strict=True)
                positions.extend(i - offset for i, u in changed if not u)
            values = map(
                bytes.__add__, map(_CLASS.__getitem__, same), map(b"%d".__mod__, chunk.indexes)
            )
            for pair in zip(chunk.ids, values, strict=True):
                writes.extend(pair)
            return
        fresh: dict[bytes, bytes] = {}  # this chunk's entries (earlier ones came as prev)
        matched = unchanged = 0
        for pos, (rid, h, index, cur, prev) in enumerate(
            zip(chunk.ids, chunk.hashes, chunk.indexes, current, earlier, strict=True)
        ):
            first = fresh.get(rid, prev)
            if first is not None:
                tally.duplicate(chunk.item(pos), first, fx.id_pointer, part)
                if not first.startswith(_DUPLICATE):
                    fresh[rid] = _DUPLICATE + first
                    writes += (rid, fresh[rid])
                continue
            if cur is not None and cur[0] != _TOMBSTONE:
                matched += 1
            if h is None:
                cls = _INVALID
            elif cur is not None and cur.startswith(writemodel.live_prefix(h)):
                cls = _UNCHANGED
                unchanged += 1
            else:
                cls = _CHANGED
                positions.append(index - offset)
            fresh[rid] = cls + b"%d" % index
            writes += (rid, fresh[rid])
        self.matched_live += matched
        tally.unchanged += unchanged

    async def _stage_upserts(
        self, fx: FastExtractor, changed: dict[int, array[int]], slicer: Slicer
    ) -> None:
        """Step 2a: re-read each part holding changed items; stage their upserts."""
        for part, positions in changed.items():
            items = await self._part(part)
            for start in range(0, len(positions), CHUNK):
                datas = [items[i] for i in positions[start : start + CHUNK]]
                exs = [fx.extract(d) for d in datas]
                rids = [ex.id for ex in exs if isinstance(ex, Extracted)]
                assert len(rids) == len(datas), "a changed item lost its id"
                pipe = self.redis.pipeline(transaction=False)
                pipe.hmget(self.index_key, rids)
                pipe.hmget(self.state_key, rids)
                marks, current = await pipe.execute()
                if self.compacted and None in current:  # ids compacted from the write model
                    await self.ctx.fill_compacted(
                        self.meta.resource_type, self.meta.group_key, slicer.state.known,
                        [rid for rid, raw in zip(rids, current, strict=True) if raw is None],
                    )  # fmt: skip
                for data, ex, mark, raw in zip(datas, exs, marks, current, strict=True):
                    assert isinstance(ex, Extracted)
                    if mark is None or mark.startswith(_DUPLICATE):
                        continue  # a duplicated id: never applied
                    cur = writemodel.decode(raw)
                    if cur is not None:
                        slicer.state.known[ex.id] = cur
                    apply_upsert(slicer.change, slicer.state, ex, data)
                    if slicer.added(len(orjson.dumps(data))):
                        await slicer.cut()
                await self.ctx.lease.keep()

    async def _stage_deletions(self, slicer: Slicer) -> None:
        """Step 2b: HSCAN the scope's write model; stage deletions of ids absent from the
        index. The live count says how many there are: none skips the scan, and it stops
        once all are found. Counts that disagree with the hash's length, or with the
        snapshot, are logged and the scan runs in full."""
        live, dead, fields = await writemodel.counts(self.redis, self.state_key)
        absent: int | None = None
        if writemodel.counts_agree(live, dead, fields):
            absent = (live or 0) - self.matched_live
        if absent == 0:
            return
        if absent is None or absent < 0:
            log.warning(
                "partition %s: the counts of %s/%r are off (live %r, dead %r, %s fields; %s "
                "ids of the snapshot are live); scanning the whole scope",
                self.p, self.meta.resource_type, self.meta.group_key, live, dead, fields,
                self.matched_live,
            )  # fmt: skip
            absent = None
        found = 0
        cursor: bytes | int = 0
        while True:
            res = await writemodel.ABSENT.run(
                self.redis, [self.state_key, self.index_key], cursor, CHUNK
            )
            cursor = res[0]
            for i in range(1, len(res), 2):
                cur = writemodel.decode(res[i + 1])
                assert cur is not None
                if deletion(slicer.change, slicer.state, res[i].decode(), cur):
                    found += 1
                    if slicer.added():
                        await slicer.cut()
            await self.ctx.lease.keep()
            if cursor in (b"0", 0, "0") or (absent is not None and found >= absent):
                return

    # -- committing ---------------------------------------------------------------

    def _tail(self, change: Change) -> list[bytes]:
        """Everything after the staged slices: the receipt entry, sequence, acks, cleanup."""
        applied = change.status == "applied"
        cmds = [wire.command("XADD", self.ctx.changes, "*", ks.F_CHANGE, change.encode())]
        cmds += SessionStore.retire_commands(
            self.scope, self.seq, self.parts, self.session_ttl, applied and not self.upsert
        )
        if applied:
            cmds += writemodel.count_commands(self.state_key, *self.deltas)
        cmds += ack_commands(self.ctx.stream, ks.INGEST_GROUP, [self.e.sid, *self.gone])
        cmds.append(wire.command("UNLINK", self.index_key, self.out_key))  # freed in background
        return cmds

    async def _commit(self, change: Change) -> None:
        lease = self.ctx.lease
        await lease.keep(lease.ttl_ms + self.slices)  # +1 ms per slice: the commit streams them
        types = {
            self.state_key: "hash",
            self.scope.key: "hash",
            self.scope.snapshots: "hash",
            self.ctx.changes: "stream",
            self.ctx.stream: "stream",
        }
        async with GuardedTransaction(self.ctx.conn, lease, types) as tx:
            batch = slices.STAGE_BATCH
            for start in range(0, self.slices, batch):
                staged = await self.redis.lrange(self.out_key, start, start + batch - 1)  # type: ignore[misc]
                cmds: list[bytes] = []
                for raw in staged:
                    entry, state = unframe(raw)
                    cmds.append(wire.command("XADD", self.ctx.changes, "*", ks.F_CHANGE, entry))
                    if state:
                        cmds.append(wire.command("HSET", self.state_key, *state))
                await tx.queue(b"".join(cmds), len(cmds))
            tail = self._tail(change)
            await tx.execute(b"".join(tail), len(tail))
