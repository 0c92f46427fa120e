"""Committing one bulk snapshot: a streamed diff against the scope, then ONE MULTI/EXEC.

Contract: a snapshot takes effect entirely or not at all. Every change entry it
produces, every write-model update, the snapshot sequence of its scope, the
retirement of its upload session and the XACK/XDEL of its raw event are queued
in ONE MULTI/EXEC guarded by WATCH on the drain lease. A crash or a lost lease
before EXEC leaves nothing but scratch keys (named per lease token, with a TTL),
and the raw event is re-read by the next holder, which starts over.

Memory stays bounded whatever the scope size: session parts (each at most one
request body) are read one at a time; the snapshot's id index lives in Redis
(:func:`streams.bulk_work_keys`); deletions are found by HSCAN over the scope's
write model inside a script that returns only ids absent from the index; changed
items are re-read from their part and turned into change-entry slices staged in a
Redis list; the commit streams that list into the transaction slice by slice (a
raw MULTI on one connection, so the client never buffers the whole transaction).

Steps: (1) scan every item: validate, id, content hash; per chunk, one round trip
of plain commands (HMGET of the write model and of the index, HSET of the previous
chunk's index entries) classifies it and finds duplicate ids; (2) if nothing is at
fault (or ``partial``), stage upserts of changed items and deletions of live ids
absent from the index; (3) commit.

The write model counts its live ids (``streams.STATE_LIVE_FIELD``), and step 1
counts the indexed ids that are live, so step 2 knows how many deletions there
are before it looks: none (the common sync: nothing removed) skips the scan of
the scope, and the scan stops once it has found them all.

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
import contextlib
import gc
import logging
import operator
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from shared import resp, streams
from shared.bulk import (
    CHANGED,
    DUPLICATE,
    IMPLICIT,
    INVALID,
    UNCHANGED,
    FastExtractor,
    ScannedChunk,
    Tally,
    deletion,
    scan_chunk,
)
from shared.events import Change, RawMeta
from shared.processing import ScopeState, apply_upsert
from shared.schema_rules import Extracted, Issue
from shared.streamio import run_script

if TYPE_CHECKING:
    from services.worker.drain import Drainer, Entry

log = logging.getLogger("ingestd.worker.bulk")

CHUNK = 5000  # items (or scanned fields) per Redis round trip
SLICE_EFFECTS = 10  # effects per change entry ...
SLICE_BYTES = 16 << 10  # ... or this much resource data, whichever comes first
STAGE_BATCH = 64  # staged slices per RPUSH / per LRANGE during the commit
SCRATCH_TTL = 86_400
_CHANGED, _DUPLICATE, _INVALID, _UNCHANGED = (
    c.encode() for c in (CHANGED, DUPLICATE, INVALID, UNCHANGED)
)
_CLASS = {True: _UNCHANGED, False: _CHANGED}  # by "the write model holds this hash"
_IS_TOMBSTONE = operator.methodcaller("startswith", b"|")
_ENTRY = b"%b$%d\r\n%b\r\n"  # packed id, then the entry as a bulk string

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


@dataclass(slots=True)
class _Lookup:
    """A chunk whose lookups were sent; its replies are read when it is classified."""

    chunk: ScannedChunk
    packed: list[bytes]  # the chunk's ids as RESP bulk strings
    part: int
    positions: array[int]
    offset: int
    replies: int


class SnapshotGone(Exception):
    """The session (or one of its parts) is no longer in Redis."""


class SnapshotUnreadable(Exception):
    """A part passed the gateway's JSON check but orjson refuses it."""


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
        self.live_delta = self.dead_delta = 0
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
            self.live_delta += self.state.live_delta
            self.dead_delta += self.state.dead_delta
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
        self.matched_live = 0  # indexed ids that are live in the write model
        self.deltas = (0, 0)  # change of the scope's live and dead counts if it applies
        self._index_writes: list[bytes] = []  # id, entry (RESP) not yet sent to Redis

    async def run(self) -> None:
        try:
            change = await self._decide()
        except SnapshotGone:
            change = self._refused(
                "session_missing",
                "the upload session or one of its parts is no longer stored "
                "(expired or removed); send the snapshot again",
            )
        except SnapshotUnreadable as e:
            change = self._refused("invalid_json", str(e))
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
        loaded = await self.redis.hget(self.state_key, streams.STATE_LOADED_FIELD)  # type: ignore[misc]
        if loaded != streams.STATE_FORMAT:
            await self.d._rebuild_scope(self.meta.resource_type, self.meta.group_key)
        await self.redis.unlink(self.index_key, self.out_key)
        tally = Tally(self.partial, with_parts=not self.session.startswith(IMPLICIT))
        t0, c0 = time.perf_counter(), time.process_time()
        with gc_paused():
            changed = await self._scan(fx, tally)
        self.timings["scan"] = time.perf_counter() - t0
        self.timings["scan_cpu"] = time.process_time() - c0
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
        self.deltas = (slicer.live_delta, slicer.dead_delta)
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

    async def _part(self, n: int, raw: bytes | None = None) -> list[Any]:
        """Part ``n``'s items (``raw``: its body, when already fetched)."""
        if raw is None:
            raw = await self._raw_part(n)
        try:
            items = orjson.loads(raw)
        except orjson.JSONDecodeError as e:  # the gateway's check (simdjson) let it through
            raise SnapshotUnreadable(f"part {n} is not JSON this worker can read: {e}") from e
        return items if isinstance(items, list) else []

    async def _raw_part(self, n: int) -> bytes:
        raw = await self.redis.hget(self.session_key, f"p:{n}")  # type: ignore[misc]
        if raw is None:
            raise SnapshotGone
        return bytes(raw)

    async def _alive(self) -> None:
        from services.worker.drain import LostLease

        if not await self.d.lease.refresh():
            raise LostLease

    async def _scan(self, fx: FastExtractor, tally: Tally) -> dict[int, array[int]]:
        """Step 1: validate, hash, classify and index every item; return changed positions.

        The lookups go in RESP on a connection held for the scan (redis-py would spend
        more time packing a chunk's arguments than Redis spends answering), and a
        chunk's lookups are answered while the next chunk is being validated."""
        changed: dict[int, array[int]] = {}
        offset = 0
        sent: _Lookup | None = None
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
                    if sent is not None:
                        await self._classify(sent, tally, fx)
                    await self._alive()
                    sent = await self._look_up(chunk, part, positions, offset)
                offset += len(items)
            if sent is not None:
                await self._classify(sent, tally, fx)
            if self._index_writes:
                await self.d.conn.exchange(self._index_write_commands(), 2)
        except BaseException:
            if sent is not None:  # its replies are still coming: the connection is out of step
                await self.d.conn.drop()
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
        return resp.command_packed(
            ("HSET", self.index_key), 2 * len(writes), b"".join(writes)
        ) + resp.command("EXPIRE", self.index_key, SCRATCH_TTL)

    async def _look_up(
        self,
        chunk: ScannedChunk,
        part: int,
        positions: array[int],
        offset: int,
    ) -> _Lookup | None:
        """Send the index entries so far, then the chunk's write-model and index lookups."""
        ids = chunk.ids
        if not ids:
            return None
        packed = [resp.bulk(r) for r in ids]
        blob = b"".join(packed)
        head, replies = b"", 2
        if self._index_writes:
            head, replies = self._index_write_commands(), 4
        lookups = resp.command_packed(("HMGET", self.state_key), len(ids), blob)
        lookups += resp.command_packed(("HMGET", self.index_key), len(ids), blob)
        await self.d.conn.send(head + lookups)
        return _Lookup(chunk, packed, part, positions, offset, replies)

    async def _classify(self, sent: _Lookup, tally: Tally, fx: FastExtractor) -> None:
        """Compare each item's hash with the write model (the rule of
        :func:`shared.bulk.classify`) and index it as class + position; an id already
        indexed is a duplicate (its first entry gets the prefix D, once). The index
        entries go to Redis ahead of the next chunk's lookups, so ``earlier`` holds
        every entry of the chunks before this one."""
        *_, current, earlier = await self.d.conn.read(sent.replies)
        writes = self._index_writes
        positions, offset, part = sent.positions, sent.offset, sent.part
        chunk = sent.chunk
        n = len(chunk.ids)
        if (
            None not in current
            and None not in chunk.marks
            and earlier.count(None) == n
            and len(set(chunk.ids)) == n
        ):
            # the common chunk of a sync: every id known, valid, seen once. The same
            # rule at C speed (map), about half the cost of the loop below
            same = list(map(bytes.startswith, current, chunk.marks))  # type: ignore[arg-type]
            self.matched_live += n - sum(map(_IS_TOMBSTONE, current))
            unchanged = sum(same)
            tally.unchanged += unchanged
            if unchanged < n:
                changed = zip(chunk.indexes, same, strict=True)
                positions.extend(i - offset for i, u in changed if not u)
            values = list(
                map(bytes.__add__, map(_CLASS.__getitem__, same), map(b"%d".__mod__, chunk.indexes))
            )
            entries = zip(sent.packed, map(len, values), values, strict=True)
            writes.extend(map(_ENTRY.__mod__, entries))
            return
        fresh: dict[bytes, bytes] = {}  # this chunk's entries (earlier ones came as prev)
        matched = unchanged = 0
        for pos, (rid, mark, index, packed, cur, prev) in enumerate(
            zip(chunk.ids, chunk.marks, chunk.indexes, sent.packed, current, earlier, strict=True)
        ):
            first = fresh.get(rid, prev)
            if first is not None:
                tally.duplicate(chunk.item(pos), first, fx.id_pointer, part)
                if not first.startswith(_DUPLICATE):
                    fresh[rid] = _DUPLICATE + first
                    writes.append(packed + resp.bulk(fresh[rid]))
                continue
            if cur is not None and cur[0] != 124:  # not a tombstone ("|version")
                matched += 1
            if mark is None:
                cls = _INVALID
            elif cur is not None and cur.startswith(mark):
                cls = _UNCHANGED
                unchanged += 1
            else:
                cls = _CHANGED
                positions.append(index - offset)
            digits = b"%d" % index
            fresh[rid] = cls + digits
            writes.append(b"%b$%d\r\n%b%b\r\n" % (packed, len(digits) + 1, cls, digits))
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
        """Step 2b: HSCAN the scope's write model; stage deletions of ids absent from the
        index. The live count says how many there are: none skips the scan, and it stops
        once all are found. Counts that disagree with the hash's length, or with the
        snapshot, are logged and the scan runs in full."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.state_key, [streams.STATE_LIVE_FIELD, streams.STATE_DEAD_FIELD])
        pipe.hlen(self.state_key)
        (live, dead), fields = await pipe.execute()
        absent: int | None = None
        if live is not None and dead is not None:
            if int(live) + int(dead) + streams.STATE_OWN_FIELDS == fields:
                absent = int(live) - self.matched_live
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
            res = await run_script(
                self.redis, ABSENT_SCRIPT, [self.state_key, self.index_key], cursor, CHUNK
            )
            cursor = res[0]
            for i in range(1, len(res), 2):
                rid = res[i].decode()
                if deletion(slicer.change, slicer.state, rid, res[i + 1]):
                    found += 1
                    if slicer.added():
                        await slicer.cut()
            await self._alive()
            if cursor in (b"0", 0, "0") or (absent is not None and found >= absent):
                return

    # -- committing ---------------------------------------------------------------

    def _tail(self, change: Change) -> list[tuple[Any, ...]]:
        """Everything after the staged slices: the receipt entry, sequence, acks, cleanup."""
        cmds: list[tuple[Any, ...]] = [
            ("XADD", streams.changes_stream(self.p), "*", streams.F_CHANGE, change.encode())
        ]
        if change.status == "applied":
            cmds.append(("HSET", self.snapshots_key, "committed", self.seq))
            for name, delta in zip(
                (streams.STATE_LIVE_FIELD, streams.STATE_DEAD_FIELD), self.deltas, strict=True
            ):
                if delta:
                    cmds.append(("HINCRBY", self.state_key, name, delta))
        ids = [self.e.sid, *self.gone]
        cmds.append(("XACK", self.d.stream, streams.INGEST_GROUP, *ids))
        cmds.append(("XDEL", self.d.stream, *ids))
        if self.seq and self.session.startswith(IMPLICIT):
            cmds.append(("UNLINK", self.session_key))
        elif self.seq:  # retire the session: parts go, the header stays to answer retries
            parts = [f"p:{n}" for n in range(1, self.parts + 1)]
            cmds.append(("HDEL", self.session_key, *parts))
            cmds.append(("HSET", self.session_key, "state", "done"))
            cmds.append(("EXPIRE", self.session_key, self.session_ttl))
        cmds.append(("UNLINK", self.index_key, self.out_key))  # freed in the background
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
        try:
            result = await self._transaction(await self.d.conn.get(), change)
        except BaseException:
            await self.d.conn.drop()
            raise
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
