"""The write model: per scope, every resource id's current content hash and version.

One hash per scope (:func:`keyspace.state_key`): field = resource id, value =
``<hash>|<version>``; a deleted id keeps its version as a tombstone
``|<version>|<epoch ms of the delete>``. :func:`compact` removes the tombstones older
than ``INGESTD_TOMBSTONE_TTL`` and marks the scope compacted
(:func:`keyspace.compacted_key`): from then on an id the write model lacks may have had
versions, and the worker asks PostgreSQL for its last one before it creates it again
(a re-create continues the version sequence, never reviving version 1).
Three more fields no id can take (ids never contain NUL): the marker that the
scope was loaded from PostgreSQL (holding the format it was loaded in; an older
format is loaded again) and the counts of live and of deleted ids, which every
writer keeps with HINCRBY in the same transaction as its change (so
``live + dead + 3 == HLEN`` checks them). This module is the value codec's one
home and the one place that reads or writes those hashes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from shared.redis import keyspace as ks
from shared.redis import wire
from shared.redis.conn import HeldConnection
from shared.redis.lease import Lease
from shared.redis.scripts import Script
from shared.redis.txn import commit_guarded

Value = tuple[str, int]  # (content hash, version); hash "" marks a tombstone
SEP = b"|"
LOADED = ks.STATE_LOADED_FIELD
LIVE = ks.STATE_LIVE_FIELD
DEAD = ks.STATE_DEAD_FIELD
FORMAT = ks.STATE_FORMAT
OWN_FIELDS = ks.STATE_OWN_FIELDS


def encode(value: Value) -> bytes:
    if not value[0]:  # a tombstone: with the time it was written
        return b"|%d|%d" % (value[1], time.time() * 1000)
    return b"%b|%d" % (value[0].encode(), value[1])


def decode(raw: bytes | str | None) -> Value | None:
    if raw is None:
        return None
    s = raw.decode() if isinstance(raw, bytes) else raw
    h, _, v = s.partition("|")
    return h, int(v.partition("|")[0])


def tombstone_ms(raw: bytes) -> int | None:
    """When a tombstone was written (None: not a tombstone, or written without a time)."""
    if not raw.startswith(SEP):
        return None
    _, _, ms = raw[1:].partition(SEP)
    return int(ms) if ms else None


def live_prefix(content_hash: bytes) -> bytes:
    """The prefix of a value that holds exactly this content (``bytes.startswith``)."""
    return content_hash + SEP


def is_tombstone(raw: bytes) -> bool:
    return raw.startswith(SEP)


TOMBSTONE_BYTE = SEP[0]


# One HSCAN step over a scope: the live ids (and their values) absent from a snapshot's
# index, each marked in the index so an id HSCAN returns twice is deleted once.
ABSENT = Script(
    "writemodel-absent",
    """
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
""",
)


def update_commands(
    key: str, dirty: dict[str, Value], live_delta: int, dead_delta: int
) -> list[bytes]:
    """The packed commands that store ``dirty`` and move the counts."""
    if not dirty:
        return []
    flat = [x for rid, v in dirty.items() for x in (rid, encode(v))]
    cmds = [wire.command("HSET", key, *flat)]
    cmds += count_commands(key, live_delta, dead_delta)
    return cmds


def count_commands(key: str, live_delta: int, dead_delta: int) -> list[bytes]:
    cmds = []
    if live_delta:
        cmds.append(wire.command("HINCRBY", key, LIVE, live_delta))
    if dead_delta:
        cmds.append(wire.command("HINCRBY", key, DEAD, dead_delta))
    return cmds


def loaded_fields(live: int, dead: int) -> dict[str, str]:
    """The fields a rebuild writes last: the counts and the loaded marker."""
    return {LIVE: str(live), DEAD: str(dead), LOADED: FORMAT.decode()}


async def lookup(
    conn: HeldConnection, keys_ids: Iterable[tuple[str, list[str]]]
) -> list[tuple[bool, list[Value | None], bool]]:
    """For each (state key, ids): whether the scope is loaded, each id's value, and
    whether the scope's tombstones were ever compacted. Packed by hiredis and sent on
    the partition's held connection (a batch event names up to 10,000 ids: redis-py's
    packer cost ~1 us each)."""
    wanted = list(keys_ids)
    payload = b"".join(
        wire.command("HMGET", key, LOADED, *ids) + wire.command("EXISTS", ks.compacted_key(key))
        for key, ids in wanted
    )
    replies = await conn.exchange(payload, 2 * len(wanted))
    out = []
    for values, compacted in zip(replies[::2], replies[1::2], strict=True):
        out.append((values[0] == FORMAT, [decode(v) for v in values[1:]], bool(compacted)))
    return out


async def is_compacted(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(ks.compacted_key(key)))


COMPACT_CHUNK = 1000


async def compact(
    conn: HeldConnection, lease: Lease, redis: Redis, key: str, cutoff_ms: int
) -> int:
    """Remove the scope's tombstones written before ``cutoff_ms``, a chunk at a time,
    each in the partition's guarded transaction (the drain holding ``lease`` is the only
    writer of the scope); how many went."""
    removed = 0
    expired: list[bytes] = []

    async def flush() -> None:
        nonlocal removed, expired
        if expired:
            cmds = [wire.command("HDEL", key, *expired), *count_commands(key, 0, -len(expired))]
            cmds.append(wire.command("SET", ks.compacted_key(key), b"1"))
            await commit_guarded(conn, lease, {key: "hash", ks.compacted_key(key): "string"}, cmds)
            removed += len(expired)
            expired = []

    async for field, raw in redis.hscan_iter(key, count=COMPACT_CHUNK):
        ms = tombstone_ms(raw) if not field.startswith(b"\x00") else None
        if ms is not None and ms < cutoff_ms:
            expired.append(field)
            if len(expired) >= COMPACT_CHUNK:
                await flush()
    await flush()
    return removed


async def is_loaded(redis: Redis, key: str) -> bool:
    raw: Any = await redis.hget(key, LOADED)  # type: ignore[misc]
    return bool(raw == FORMAT)


async def counts(redis: Redis, key: str) -> tuple[int | None, int | None, int]:
    """(live, dead, fields in the hash); a count is None when it is not stored."""
    pipe = redis.pipeline(transaction=False)
    pipe.hmget(key, [LIVE, DEAD])
    pipe.hlen(key)
    (live, dead), fields = await pipe.execute()
    return (
        None if live is None else int(live),
        None if dead is None else int(dead),
        int(fields),
    )


def counts_agree(live: int | None, dead: int | None, fields: int) -> bool:
    return live is not None and dead is not None and live + dead + OWN_FIELDS == fields
