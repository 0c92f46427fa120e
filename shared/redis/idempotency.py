"""Idempotency-Key claims in Redis: the key's entry is taken in the same script as the
event it answers for, so a key is never held without its event nor an event appended
twice for one key.

An entry (:func:`keyspace.idempotency_key`) holds the request's fingerprint, event id,
status and response body (JSON, :func:`entry`). A claim script either finds an entry
(and appends nothing: the caller replays or refuses with 422) or stores the entry and
appends the event, atomically: a Redis that loses the tail of its writes loses both or
neither. PostgreSQL keeps the key on the event's ``ingest_events`` row for as long as
the row lives, and the gateway looks there on a miss
(:mod:`services.gateway.idempotency`), so an entry whose answer is the plain
``202 {"eventId"}`` is only needed until that row is committed: the projector then
unlinks it (:func:`entry_key`; an entry lives 7 days at most, the receipt TTL).
A session part's entry records another answer and stays for its TTL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from shared.redis import keyspace as ks

#: the claim, at the top of every script that appends a keyed event. The caller's script
#: names ``$key`` (the entry's key), ``$value`` and ``$ttl`` (its value and TTL) and
#: ``$undo`` (commands that remove what its transaction queued before the script).
CLAIM = """
local claimed = redis.call('GET', {key})
if claimed then
  {undo}
  return {{0, claimed}}
end
redis.call('SET', {key}, {value}, 'EX', {ttl})
"""

# The gateway's group-commit append of one keyed event (sent with EVAL, so no NOSCRIPT).
# KEYS: entry, receipt marker, ingest stream. ARGV: entry value, entry TTL, receipt
# marker, receipt TTL, then the stream entry's field/value pairs.
# Returns {1, stream id} (appended) or {0, the entry found} (nothing appended).
APPEND = (
    CLAIM.format(key="KEYS[1]", value="ARGV[1]", ttl="ARGV[2]", undo="")
    + """
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
return {1, redis.call('XADD', KEYS[3], '*', unpack(ARGV, 5))}
"""
)


@dataclass(frozen=True, slots=True)
class Entry:
    fingerprint: str
    event_id: str
    status: int
    body: dict[str, Any]


def entry(fingerprint: str, event_id: str, status: int, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"f": fingerprint, "e": event_id, "s": status, "b": body})


def decode(raw: bytes) -> Entry:
    d = orjson.loads(raw)
    return Entry(d["f"], d["e"], d["s"], d["b"])


def claim_reply(reply: list[Any]) -> tuple[bool, bytes]:
    """A claim script's reply: (claimed, stream id or seq | the entry found)."""
    won, value = reply
    return bool(int(won)), value if isinstance(value, bytes) else str(value).encode()


def entry_key(integration: str, key: str) -> str:
    """The Redis key of an integration's Idempotency-Key entry (the key's SHA-256)."""
    return ks.idempotency_key(integration, hashlib.sha256(key.encode()).hexdigest())
