"""Snapshot sessions: the parts of one (table, groupKey) snapshot, stored until it is applied.

A session is one hash (:func:`keyspace.session_key`; fields :class:`SessionField`,
parts ``p:N`` with their digests ``d:N``; states :class:`SessionState`) and each
scope has a sequence hash (:func:`keyspace.snapshots_key`; :class:`SnapshotsField`)
that numbers sessions as they open and records the newest snapshot applied. The
gateway (and the sources stage) store parts; whichever part completes the set
appends the snapshot's one raw event, atomically with storing it. The worker
reads the parts and retires the session in the transaction that commits the
snapshot. Rules (see ``services/gateway/bulk.py`` for the HTTP side): a part sent
twice is stored once, a different body for a stored part is a conflict, the
newest-opened complete snapshot wins (an older session is ``superseded``).

In strict durability mode (a :class:`~shared.redis.durable.Guard`) the writes of one
call run on one connection and end with one WAITAOF where the server has it
(:mod:`shared.redis.durable`): a part is acknowledged only once it is on disk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from shared.redis import idempotency, wire
from shared.redis import keyspace as ks
from shared.redis.conn import HeldConnection
from shared.redis.durable import Guard
from shared.redis.keyspace import SessionField as F
from shared.redis.keyspace import SessionState as S
from shared.redis.keyspace import SnapshotsField as Q
from shared.redis.scripts import Script, lua

_NAMES = {
    "eid": F.EVENT_ID, "int": F.INTEGRATION, "seq": F.SEQ, "ttl": F.TTL, "n": F.RECEIVED,
    "max": F.HIGHEST, "state": F.STATE, "total": F.TOTAL, "commit": F.COMMIT,
    "opened": F.OPENED, "next": Q.NEXT, "committed": Q.COMMITTED, "open": S.OPEN,
    "queued": S.QUEUED, "superseded": S.SUPERSEDED, "aborted": S.ABORTED,
    "p": ks.PART_PREFIX, "d": ks.DIGEST_PREFIX,
}  # fmt: skip

# KEYS: session, snapshots. ARGV: event id, integration, ttl, now ms.
OPEN = Script("session-open", lua("""
if redis.call('EXISTS', KEYS[1]) == 0 then
  local seq = redis.call('HINCRBY', KEYS[2], $next, 1)
  redis.call('HSET', KEYS[1], $eid, ARGV[1], $int, ARGV[2], $seq, seq, $ttl, ARGV[3],
             $n, 0, $max, 0, $state, $open, $opened, ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return redis.call('HMGET', KEYS[1], $eid, $int)
""", **_NAMES))  # fmt: skip

# KEYS: session, snapshots, ingest stream.
# ARGV: integration, part, body, digest, final (1/0), commit meta, meta field name.
# Returns {outcome, parts received, final part number (0 = unknown)}.
ADD = Script("session-add", lua("""
local s = KEYS[1]
local h = redis.call('HMGET', s, $int, $seq, $state, $total, $n, $max, $ttl)
if not h[1] then return {'gone', 0, 0} end
if h[1] ~= ARGV[1] then return {'foreign', 0, 0} end
local part = tonumber(ARGV[2])
local final = ARGV[5] == '1'
local state = h[3]
local total = tonumber(h[4] or '0')
local n = tonumber(h[5])
local highest = tonumber(h[6])
local prev = redis.call('HGET', s, $d .. ARGV[2])
if prev and prev ~= ARGV[4] then return {'part_conflict', n, total} end
if final and total > 0 and total ~= part then return {'final_conflict', n, total} end
if prev and (not final or total == part or state ~= $open) then
  return {'duplicate', n, total}
end
if state ~= $open then return {state, n, total} end
local committed = tonumber(redis.call('HGET', KEYS[2], $committed) or '0')
if tonumber(h[2]) <= committed then
  for _, f in ipairs(redis.call('HKEYS', s)) do
    if string.sub(f, 1, 2) == $p then redis.call('HDEL', s, f) end
  end
  redis.call('HSET', s, $state, $superseded)
  return {$superseded, n, total}
end
if total > 0 and part > total then return {'part_after_final', n, total} end
if final then
  if highest > part then return {'final_conflict', n, highest} end
  total = part
  redis.call('HSET', s, $total, part, $commit, ARGV[6])
end
if not prev then
  redis.call('HSET', s, $p .. ARGV[2], ARGV[3], $d .. ARGV[2], ARGV[4])
  n = redis.call('HINCRBY', s, $n, 1)
  if part > highest then redis.call('HSET', s, $max, part) end
end
if total > 0 and n == total then
  redis.call('XADD', KEYS[3], '*', ARGV[7], redis.call('HGET', s, $commit))
  redis.call('HSET', s, $state, $queued)
  redis.call('PERSIST', s)
  return {$queued, n, total}
end
redis.call('EXPIRE', s, h[7])
return {'stored', n, total}
""", **_NAMES))  # fmt: skip

# A single-request bulk: a one-part session, opened complete and queued in one step
# (its body is stored by a plain HSET in the same MULTI: Redis takes a big argument
# without copying it, and a script would copy it twice).
# KEYS: session, snapshots, ingest stream.
# ARGV: event id, integration, ttl, now ms, commit meta, meta field name.
SINGLE = Script("session-single", lua("""
local seq = redis.call('HINCRBY', KEYS[2], $next, 1)
redis.call('HSET', KEYS[1], $eid, ARGV[1], $int, ARGV[2], $seq, seq, $ttl, ARGV[3],
           $n, 1, $max, 1, $total, 1, $state, $queued, $opened, ARGV[4])
redis.call('XADD', KEYS[3], '*', ARGV[6], ARGV[5])
return seq
""", **_NAMES))  # fmt: skip

# The same with an Idempotency-Key (shared.redis.idempotency): the key's entry is
# claimed first; when another request holds it, the body and receipt marker the MULTI
# queued before this script are removed again and nothing is appended.
# KEYS: session, snapshots, ingest stream, entry, receipt marker.
# ARGV: event id, integration, ttl, now ms, commit meta, meta field name, entry, entry ttl.
# Returns {1, seq} or {0, the entry found}.
SINGLE_KEYED = Script("session-single-keyed", idempotency.CLAIM.format(
    key="KEYS[4]", value="ARGV[7]", ttl="ARGV[8]", undo="redis.call('DEL', KEYS[1], KEYS[5])",
) + lua("""
local seq = redis.call('HINCRBY', KEYS[2], $next, 1)
redis.call('HSET', KEYS[1], $eid, ARGV[1], $int, ARGV[2], $seq, seq, $ttl, ARGV[3],
           $n, 1, $max, 1, $total, 1, $state, $queued, $opened, ARGV[4])
redis.call('XADD', KEYS[3], '*', ARGV[6], ARGV[5])
return {1, seq}
""", **_NAMES))  # fmt: skip

# KEYS: session. ARGV: integration.
ABORT = Script("session-abort", lua("""
local h = redis.call('HMGET', KEYS[1], $int, $state)
if not h[1] then return 'gone' end
if h[1] ~= ARGV[1] then return 'foreign' end
if h[2] ~= $open then return h[2] end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == $p then redis.call('HDEL', KEYS[1], f) end
end
redis.call('HSET', KEYS[1], $state, $aborted)
return $aborted
""", **_NAMES))  # fmt: skip

SCRIPTS = (OPEN, ADD, SINGLE, SINGLE_KEYED, ABORT)


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a session lives: partition, resource type, groupKey, session id as stored."""

    p: int
    resource_type: str
    group_key: str
    session: str

    @property
    def key(self) -> str:
        return ks.session_key(self.p, self.resource_type, self.group_key, self.session)

    @property
    def snapshots(self) -> str:
        return ks.snapshots_key(self.p, self.resource_type, self.group_key)

    @property
    def implicit(self) -> bool:
        """A single-request bulk (a one-part session named after its event)."""
        return self.session.startswith(ks.IMPLICIT_SESSION)


@dataclass(frozen=True, slots=True)
class Added:
    event_id: str
    outcome: str  # stored | queued | duplicate, or a refusal (a SessionState or conflict)
    received: int
    total: int


@dataclass(frozen=True, slots=True)
class Status:
    event_id: str
    integration: str
    state: str  # a SessionState; an open session older than an applied one: superseded
    received: int
    total: int | None
    opened_ms: int | None
    expires_in: int | None


@dataclass(frozen=True, slots=True)
class Head:
    """What the worker needs of a queued session before reading its parts."""

    event_id: str | None
    seq: int
    total: int | None
    ttl: int
    committed: int  # the scope's newest applied snapshot number


@dataclass(frozen=True, slots=True)
class Marker:
    """A receipt marker stored (under the session's event id) once a part is accepted."""

    value: bytes
    ttl: int


_MULTI, _EXEC = wire.command("MULTI"), wire.command("EXEC")


class SessionStore:
    def __init__(self, redis: Redis, guard: Guard | None = None) -> None:
        self.redis = redis
        self.guard = guard

    @asynccontextmanager
    async def _writer(self) -> AsyncIterator[Redis]:
        """The client one call writes through: under a guard, one connection of the pool
        for the whole call (WAITAOF covers only its own connection's writes)."""
        if self.guard is None:
            yield self.redis
            return
        async with self.redis.client() as c:
            yield c

    # -- the gateway's side ---------------------------------------------------------

    async def add_part(
        self, s: Scope, integration: str, event_id: str, part: int, body: bytes, digest: str,
        final: bool, commit_meta: Callable[[str], bytes], ttl: int, marker: Marker | None = None,
    ) -> Added | None:  # fmt: skip
        """Open the session if needed (as ``event_id``), then store the part; None when the
        session vanished between the two steps (expired or retired: try again).
        ``commit_meta(event id)`` is the snapshot's raw event, stored with the final part
        (the event id is the session's, given when its first part arrived). ``marker``
        is set (for the session's event id) once the part is stored, queued or a
        duplicate."""
        now = int(time.time() * 1000)
        async with self._writer() as r:
            eid, owner = await OPEN.run(r, [s.key, s.snapshots], event_id, integration, ttl, now)
            if owner.decode() != integration:
                return Added(eid.decode(), "foreign", 0, 0)
            outcome, received, total = await ADD.run(
                r, [s.key, s.snapshots, ks.ingest_stream(s.p)], integration, part, body,
                digest, "1" if final else "0", commit_meta(eid.decode()) if final else b"",
                ks.F_META,
            )  # fmt: skip
            if outcome == b"gone":
                return None
            got = Added(eid.decode(), outcome.decode(), int(received), int(total))
            if marker is not None and got.outcome in ("stored", "queued", "duplicate"):
                await r.set(ks.receipt_key(got.event_id), marker.value, ex=marker.ttl)
            if self.guard is not None:
                await self.guard.confirm(r)
            return got

    async def store_single(
        self, s: Scope, integration: str, event_id: str, body: bytes, meta: bytes, ttl: int,
        receipt_key: str, receipt: bytes, receipt_ttl: int,
        claim: tuple[str, bytes, int] | None = None,
    ) -> bytes | None:  # fmt: skip
        """A single-request bulk in one round trip, one MULTI: its receipt marker, its
        body, then its one-part session opened complete and its raw event appended (and,
        under a guard on a server with WAITAOF, a WAITAOF after the EXEC).

        ``claim`` (an Idempotency-Key's entry key, value and TTL): the entry is claimed in
        the same script; when another request holds it, nothing is stored and its entry
        is returned (None: stored)."""
        script = SINGLE if claim is None else SINGLE_KEYED
        keys = [s.key, s.snapshots, ks.ingest_stream(s.p)]
        args: list[Any] = [event_id, integration, ttl, int(time.time() * 1000), meta, ks.F_META]
        if claim is not None:
            keys += [claim[0], receipt_key]
            args += [claim[1], claim[2]]
        tx = wire.commands(
            (
                ("SET", receipt_key, receipt, "EX", receipt_ttl),
                ("HSET", s.key, ks.part_field(1), body),
                script.call(keys, *args),
            )
        )
        tx = _MULTI + tx + _EXEC
        held = HeldConnection(self.redis)
        try:
            for attempt in range(2):
                conn = await held.get()
                confirm = self.guard is not None and self.guard.waitaof(conn)
                payload = tx + self.guard.command() if confirm and self.guard else tx
                await held.send(payload)
                replies = await held.read(5 + confirm, errors_as_values=True)
                result = replies[4]
                errors = [r for r in replies[1:4] if isinstance(r, ResponseError)]
                if isinstance(result, ResponseError):  # EXECABORT: nothing applied
                    errors.append(result)
                else:
                    errors += [r for r in result if isinstance(r, ResponseError)]
                if errors and isinstance(errors[0], NoScriptError) and not attempt:
                    # the SET and HSET (if applied) are repeated, with the same values
                    await script.load(self.redis)
                    continue
                if errors:
                    raise errors[0]
                if confirm and self.guard:
                    self.guard.check(replies[5])
                if claim is None:
                    return None
                won, found = idempotency.claim_reply(result[-1])
                return None if won else found
        except BaseException:
            await held.drop()
            raise
        finally:
            await held.release()
        return None  # not reached: the second NoScriptError is raised

    async def abort(self, s: Scope, integration: str) -> str:
        """``aborted``, ``gone``, ``foreign`` or the state that forbids aborting."""
        result: bytes = await ABORT.run(self.redis, [s.key], integration)
        return result.decode()

    async def status(self, s: Scope) -> Status | None:
        fields = [F.EVENT_ID, F.INTEGRATION, F.STATE, F.RECEIVED, F.TOTAL, F.OPENED, F.SEQ]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(s.key, fields)
        pipe.ttl(s.key)
        pipe.hget(s.snapshots, Q.COMMITTED)
        (eid, owner, state, n, total, opened, seq), ttl, committed = await pipe.execute()
        if eid is None or owner is None:
            return None
        status = state.decode()
        if status == S.OPEN and int(seq) <= int(committed or 0):
            status = S.SUPERSEDED
        return Status(
            eid.decode(), owner.decode(), status, int(n or 0), int(total) if total else None,
            int(opened) if opened else None, ttl if ttl >= 0 else None,
        )  # fmt: skip

    # -- the worker's side ----------------------------------------------------------

    async def head(self, s: Scope) -> Head:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(s.key, [F.EVENT_ID, F.SEQ, F.TOTAL, F.TTL])
        pipe.hget(s.snapshots, Q.COMMITTED)
        (eid, seq, total, ttl), committed = await pipe.execute()
        return Head(
            eid.decode() if eid is not None else None, int(seq or 0),
            int(total) if total is not None else None, int(ttl or 0), int(committed or 0),
        )  # fmt: skip

    async def part(self, s: Scope, n: int) -> bytes | None:
        raw: Any = await self.redis.hget(s.key, ks.part_field(n))  # type: ignore[misc]
        return None if raw is None else bytes(raw)

    @staticmethod
    def retire_commands(s: Scope, seq: int, parts: int, ttl: int, applied: bool) -> list[bytes]:
        """For the snapshot's commit: record it as the scope's newest applied one (when it
        applied) and retire its session: an implicit one goes, an explicit one keeps its
        header (to answer retries) as ``done`` for ``ttl`` seconds, without its parts."""
        cmds = []
        if applied:
            cmds.append(wire.command("HSET", s.snapshots, Q.COMMITTED, seq))
        if not seq:  # the session was never read: leave it as it is
            return cmds
        if s.implicit:
            cmds.append(wire.command("UNLINK", s.key))
            return cmds
        cmds.append(wire.command("HDEL", s.key, *[ks.part_field(n) for n in range(1, parts + 1)]))
        cmds.append(wire.command("HSET", s.key, F.STATE, S.DONE))
        cmds.append(wire.command("EXPIRE", s.key, ttl))
        return cmds
