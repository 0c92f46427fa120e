"""Committing one bulk snapshot: a streamed diff against the scope, then ONE MULTI/EXEC.

Contract: a snapshot takes effect entirely or not at all. Every change entry it
produces, every write-model update, the snapshot sequence of its scope, the
retirement of its upload session and the XACK/XDEL of its raw event are queued
in ONE MULTI/EXEC guarded by WATCH on the drain lease. A crash or a lost lease
before EXEC leaves nothing but scratch keys (named per lease token, with a TTL),
and the raw event is re-read by the next holder, which starts over.

Memory stays bounded whatever the scope size: session parts (each at most one
request body) are read one at a time; the snapshot's id index lives in Redis
(:func:`streams.bulk_work_keys`), filled by a script that also detects duplicate
ids; deletions are found by HSCAN over the scope's write model inside a script
that returns only ids absent from the index; changed items are re-read from their
part and turned into change-entry slices staged in a Redis list; the commit
streams that list into the transaction slice by slice (a raw MULTI on one
connection, so the client never buffers the whole transaction).

Steps: (1) scan every item: validate, id, content hash; a script per chunk
classifies it against the write model and indexes it (duplicates found here);
(2) if nothing is at fault (or ``partial``), stage upserts of changed items and
deletions of live ids absent from the index; (3) commit.

Slices hold at most :data:`SLICE_EFFECTS` effects, so a projector batch (a count
of entries) stays about ten times a batch of single events; only the last entry
carries the receipt (see ``services/projector/apply.py``). The projector may
apply a large snapshot over several transactions, each idempotent by stream
position, so ``resources`` can show a prefix of it for a moment, but the receipt
says ``applied`` only with the last slice. Trade-off: the Redis scratch index
costs about 100 bytes per item while the diff runs (and goes to the AOF).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from shared import streams
from shared.bulk import (
    DUPLICATE,
    IMPLICIT,
    FastExtractor,
    Scanned,
    Tally,
    deletion,
    scan_item,
)
from shared.events import Change, RawMeta
from shared.processing import ScopeState, apply_upsert
from shared.schema_rules import Extracted, Issue

if TYPE_CHECKING:
    from services.worker.drain import Drainer, Entry

log = logging.getLogger("ingestd.worker.bulk")

CHUNK = 5000  # items (or scanned fields) per Redis round trip
SLICE_EFFECTS = 10  # effects per change entry ...
SLICE_BYTES = 16 << 10  # ... or this much resource data, whichever comes first
STAGE_BATCH = 64  # staged slices per RPUSH / per LRANGE during the commit
SCRATCH_TTL = 86_400

# Classify and index one chunk of items. ARGV[1] is JSON [id, content hash ('' for an
# item at fault), index, id, hash, index, ...]; ARGV[2] is the index's TTL. Each hash
# is compared with the write model (the rule of shared.bulk.classify); HSETNX id ->
# class+index into the snapshot index; for an id already there the earlier value is
# marked duplicated (prefix D, once). Returns {unchanged count, positions of changed
# items, {position, earlier value}, ...} with 1-based item positions.
CLASSIFY_SCRIPT = """
local call = redis.call
local items = cjson.decode(ARGV[1])
local state, index = KEYS[1], KEYS[2]
local unchanged, changed, dups = 0, {}, {}
for k = 1, #items, 3 do
  local id, h = items[k], items[k + 1]
  local cls = 'x'
  if h ~= '' then
    cls = 'c'
    local cur = call('HGET', state, id)
    if cur and string.sub(cur, 1, #h + 1) == h .. '|' then cls = 'u' end
  end
  if call('HSETNX', index, id, cls .. items[k + 2]) == 1 then
    if cls == 'u' then
      unchanged = unchanged + 1
    elseif cls == 'c' then
      changed[#changed + 1] = (k + 2) / 3
    end
  else
    local first = call('HGET', index, id)
    if string.sub(first, 1, 1) ~= 'D' then call('HSET', index, id, 'D' .. first) end
    dups[#dups + 1] = (k + 2) / 3
    dups[#dups + 1] = first
  end
end
call('EXPIRE', index, ARGV[2])
return {unchanged, changed, dups}
"""

# One HSCAN step over the scope's write model: return the live ids (and their
# hash|version) absent from the snapshot index, marking them so an id HSCAN
# returns twice is deleted once.
ABSENT_SCRIPT = """
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local out = {r[1]}
local kv = r[2]
for i = 1, #kv, 2 do
  local id, v = kv[i], kv[i + 1]
  if string.byte(id, 1) ~= 0 and string.sub(v, 1, 1) ~= '|' then
    if redis.call('HSETNX', KEYS[2], id, '-') == 1 then
      out[#out + 1] = id
      out[#out + 1] = v
    end
  end
end
return out
"""


async def run_script(redis: Redis, source: str, keys: list[str], *args: Any) -> Any:
    """EVAL with typed arguments (redis-py's stubs want str for every ARGV)."""
    return await redis.eval(source, len(keys), *keys, *args)  # type: ignore[misc]


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC while scanning: parsed JSON has no cycles (refcounting frees it) and
    GC passes over a part's ~30k live objects cost ~40% of the scan."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class SnapshotGone(Exception):
    """The session (or one of its parts) is no longer in Redis."""


def frame(change: bytes, state: dict[str, tuple[str, int]]) -> bytes:
    """A staged slice: 4-byte length, the encoded change entry, the state updates (JSON)."""
    flat = [x for rid, v in state.items() for x in (rid, ScopeState.encode(v))]
    return len(change).to_bytes(4, "big") + change + orjson.dumps(flat)


def unframe(raw: bytes) -> tuple[bytes, list[str]]:
    n = int.from_bytes(raw[:4], "big")
    return raw[4 : 4 + n], orjson.loads(raw[4 + n :])


class Slicer:
    """Accumulates effects into change-entry slices and stages them in a Redis list."""

    def __init__(self, redis: Redis, meta: RawMeta, out_key: str) -> None:
        self.redis = redis
        self.meta = meta
        self.out_key = out_key
        self.slices = 0
        self.totals = {"created": 0, "updated": 0, "deleted": 0}
        self._pending: list[bytes] = []
        self._new()

    def _new(self) -> None:
        self.change = Change(self.meta, "applied", last=False)
        self.state = ScopeState()
        self._bytes = 0

    def added(self, size: int = 0) -> bool:
        """Account for effects just appended; True when the slice is full."""
        self._bytes += size
        return len(self.change.effects) >= SLICE_EFFECTS or self._bytes >= SLICE_BYTES

    async def cut(self, force: bool = False) -> None:
        if self.change.effects:
            for e in self.change.effects:
                self.totals[e.op] += 1
            self._pending.append(frame(self.change.encode(), self.state.dirty))
            self.slices += 1
            self._new()
        if self._pending and (force or len(self._pending) >= STAGE_BATCH):
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(self.out_key, *self._pending)
            pipe.expire(self.out_key, SCRATCH_TTL)
            await pipe.execute()
            self._pending = []


class BulkCommit:
    """Diff and commit one bulk raw event (see the module docstring)."""

    def __init__(self, drainer: Drainer, entry: Entry, gone: list[bytes]) -> None:
        self.d = drainer
        self.redis: Redis = drainer.redis
        self.e = entry
        self.meta = entry.meta
        self.gone = gone
        m = entry.meta
        self.p = drainer.p
        self.session = str(m.extra.get("session", ""))
        self.partial = bool(m.extra.get("partial"))
        self.session_key = streams.session_key(self.p, m.resource_type, m.group_key, self.session)
        self.state_key = streams.state_key(self.p, m.resource_type, m.group_key)
        self.snapshots_key = streams.snapshots_key(self.p, m.resource_type, m.group_key)
        self.index_key, self.out_key = streams.bulk_work_keys(self.p, m.id, drainer.lease.token)
        self.parts = 0
        self.seq = 0  # set once the session is read: only then is it retired
        self.slices = 0
        self.timings: dict[str, float] = {}
        self.session_ttl = SCRATCH_TTL

    async def run(self) -> None:
        try:
            change = await self._decide()
        except SnapshotGone:
            change = self._refused(
                "session_missing",
                "the upload session or one of its parts is no longer stored "
                "(expired or removed); send the snapshot again",
            )
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
        head = await self.redis.hmget(self.session_key, ["eid", "seq", "total", "ttl"])  # type: ignore[misc]
        if head[0] is None or head[0].decode() != self.meta.id or head[2] is None:
            raise SnapshotGone
        self.parts, self.session_ttl = int(head[2]), int(head[3])
        self.seq = int(head[1])
        committed = int(await self.redis.hget(self.snapshots_key, "committed") or 0)  # type: ignore[misc]
        if self.seq <= committed:
            return self._refused(
                "snapshot_superseded",
                "a snapshot of this scope opened after this one has already been applied; "
                "this older one is discarded so it cannot overwrite newer data",
            )
        table = await self._table()
        if table is None:
            return self._refused("table_not_found", "the table no longer exists")
        fx = FastExtractor(self.d.registry.snapshot.compiled(table))
        if not await self.redis.hexists(self.state_key, streams.STATE_LOADED_FIELD):  # type: ignore[misc]
            await self.d._rebuild_scope(self.meta.resource_type, self.meta.group_key)
        await self.redis.delete(self.index_key, self.out_key)
        tally = Tally(self.partial, with_parts=not self.session.startswith(IMPLICIT))
        t0 = time.perf_counter()
        with gc_paused():
            changed = await self._scan(fx, tally)
        self.timings["scan"] = time.perf_counter() - t0
        if tally.rejects_all:
            return tally.final(self.meta, {}, [])
        slicer = Slicer(self.redis, self.meta, self.out_key)
        t0 = time.perf_counter()
        await self._stage_upserts(fx, changed, slicer)
        self.timings["upserts"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if tally.may_delete:
            await self._stage_deletions(slicer)
        await slicer.cut(force=True)
        self.timings["deletions"] = time.perf_counter() - t0
        self.slices = slicer.slices
        return tally.final(self.meta, slicer.totals, [])

    async def _table(self) -> Any:
        table = self.d.registry.snapshot.by_type.get(self.meta.resource_type)
        if table is None:
            await self.d.registry.refresh(force=True)
            table = self.d.registry.snapshot.by_type.get(self.meta.resource_type)
        return table

    def _refused(self, code: str, message: str) -> Change:
        issue = Issue(code, message).as_dict()
        return Change(self.meta, "rejected", issues=[issue], issues_total=1, totals={})

    async def _part(self, n: int) -> list[Any]:
        raw = await self.redis.hget(self.session_key, f"p:{n}")  # type: ignore[misc]
        if raw is None:
            raise SnapshotGone
        items = orjson.loads(raw)
        return items if isinstance(items, list) else []

    async def _alive(self) -> None:
        from services.worker.drain import LostLease

        if not await self.d.lease.refresh():
            raise LostLease

    async def _scan(self, fx: FastExtractor, tally: Tally) -> dict[int, array[int]]:
        """Step 1: validate, hash, classify and index every item; return changed positions.

        The script for one chunk runs in Redis while the next chunk is validated here
        (one at a time, in order, so duplicates across chunks are still found)."""
        changed: dict[int, array[int]] = {}
        offset = 0
        pending: asyncio.Task[None] | None = None
        try:
            for part in range(1, self.parts + 1):
                items = await self._part(part)
                positions = changed.setdefault(part, array("I"))
                for start in range(0, len(items), CHUNK):
                    chunk = items[start : start + CHUNK]
                    scanned = [scan_item(x, offset + start + i, fx) for i, x in enumerate(chunk)]
                    for s in scanned:
                        if s.issues:
                            tally.invalid(s, part)
                    keyed = [s for s in scanned if s.rid is not None]
                    if pending is not None:
                        await pending
                    await self._alive()
                    pending = asyncio.create_task(
                        self._classify(keyed, tally, part, fx, positions, offset)
                    )
                offset += len(items)
            if pending is not None:
                await pending
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
        return {part: pos for part, pos in changed.items() if pos}

    async def _classify(
        self,
        keyed: list[Scanned],
        tally: Tally,
        part: int,
        fx: FastExtractor,
        positions: array[int],
        offset: int,
    ) -> None:
        if not keyed:
            return
        flat: list[Any] = []
        for s in keyed:
            flat += (s.rid, s.content_hash or "", s.index)
        unchanged, changed, dups = await run_script(
            self.redis,
            CLASSIFY_SCRIPT,
            [self.state_key, self.index_key],
            orjson.dumps(flat),
            SCRATCH_TTL,
        )
        tally.unchanged += unchanged
        for pos in changed:
            positions.append(keyed[pos - 1].index - offset)
        for i in range(0, len(dups), 2):
            tally.duplicate(keyed[dups[i] - 1], dups[i + 1], fx.id_pointer, part)

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
                for data, ex, mark, raw in zip(datas, exs, marks, current, strict=True):
                    assert isinstance(ex, Extracted)
                    if mark is None or mark.startswith(DUPLICATE.encode()):
                        continue  # a duplicated id: never applied
                    cur = ScopeState.decode(raw)
                    if cur is not None:
                        slicer.state.known[ex.id] = cur
                    apply_upsert(slicer.change, slicer.state, ex, data)
                    if slicer.added(len(orjson.dumps(data))):
                        await slicer.cut()
                await self._alive()

    async def _stage_deletions(self, slicer: Slicer) -> None:
        """Step 2b: HSCAN the scope's write model; stage deletions of ids absent from it."""
        cursor: bytes | int = 0
        while True:
            res = await run_script(
                self.redis, ABSENT_SCRIPT, [self.state_key, self.index_key], cursor, CHUNK
            )
            cursor = res[0]
            for i in range(1, len(res), 2):
                rid = res[i].decode()
                if deletion(slicer.change, slicer.state, rid, res[i + 1]) and slicer.added():
                    await slicer.cut()
            await self._alive()
            if cursor in (b"0", 0, "0"):
                return

    # -- committing ---------------------------------------------------------------

    def _tail(self, change: Change) -> list[tuple[Any, ...]]:
        """Everything after the staged slices: the receipt entry, sequence, acks, cleanup."""
        cmds: list[tuple[Any, ...]] = [
            ("XADD", streams.changes_stream(self.p), "*", streams.F_CHANGE, change.encode())
        ]
        if change.status == "applied":
            cmds.append(("HSET", self.snapshots_key, "committed", self.seq))
        ids = [self.e.sid, *self.gone]
        cmds.append(("XACK", self.d.stream, streams.INGEST_GROUP, *ids))
        cmds.append(("XDEL", self.d.stream, *ids))
        if self.seq and self.session.startswith(IMPLICIT):
            cmds.append(("DEL", self.session_key))
        elif self.seq:  # retire the session: parts go, the header stays to answer retries
            parts = [f"p:{n}" for n in range(1, self.parts + 1)]
            cmds.append(("HDEL", self.session_key, *parts))
            cmds.append(("HSET", self.session_key, "state", "done"))
            cmds.append(("EXPIRE", self.session_key, self.session_ttl))
        cmds.append(("DEL", self.index_key, self.out_key))
        return cmds

    async def _commit(self, change: Change) -> None:
        from services.worker.drain import LostLease

        lease = self.d.lease
        normal = lease.ttl_ms
        lease.ttl_ms = normal + self.slices  # +1 ms per slice: the commit streams them all
        try:
            if not await lease.refresh():
                raise LostLease
        finally:
            lease.ttl_ms = normal
        conn = await _connection(self.redis)
        try:
            result = await self._transaction(conn, change)
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await self.redis.connection_pool.release(conn)
        if result is None:
            raise LostLease
        errors = [r for r in result if isinstance(r, Exception)]
        if errors:  # a bug, not a race: Redis has no rollback, so say it loudly
            log.error("bulk %s: commit reported errors: %s", self.meta.id, errors[:3])

    async def _transaction(self, conn: AbstractConnection, change: Change) -> Any:
        from services.worker.drain import LostLease

        lease = self.d.lease
        await _call(conn, ("WATCH", lease.key))
        if await _call(conn, ("GET", lease.key)) != lease.token.encode():
            raise LostLease
        await _call(conn, ("MULTI",))
        changes = streams.changes_stream(self.p)
        for start in range(0, self.slices, STAGE_BATCH):
            staged = await self.redis.lrange(self.out_key, start, start + STAGE_BATCH - 1)  # type: ignore[misc]
            cmds: list[tuple[Any, ...]] = []
            for raw in staged:
                entry, state = unframe(raw)
                cmds.append(("XADD", changes, "*", streams.F_CHANGE, entry))
                if state:
                    cmds.append(("HSET", self.state_key, *state))
            await _queue(conn, cmds)
        await _queue(conn, self._tail(change))
        return await _call(conn, ("EXEC",))


async def _connection(redis: Redis) -> AbstractConnection:
    pool = redis.connection_pool
    try:
        return await pool.get_connection()  # type: ignore[no-any-return]
    except TypeError:  # redis-py < 5.3 wants a command name
        return await pool.get_connection("MULTI")  # type: ignore[no-any-return]


async def _call(conn: AbstractConnection, cmd: tuple[Any, ...]) -> Any:
    await conn.send_command(*cmd)
    return await conn.read_response()


async def _queue(conn: AbstractConnection, cmds: list[tuple[Any, ...]]) -> None:
    if not cmds:
        return
    await conn.send_packed_command(conn.pack_commands(cmds))
    for _ in cmds:
        reply = await conn.read_response()
        if reply not in (b"QUEUED", "QUEUED"):
            raise RuntimeError(f"unexpected reply while queueing a bulk commit: {reply!r}")
