"""The ``Idempotency-Key`` header of every ingest POST and DELETE.

A key (1-255 printable ASCII characters, else 400 ``invalid_idempotency_key``) names
one request of one integration: the same key with the same request (route, table,
query, content type and body: its fingerprint) answers exactly the first response,
the same status and body with the same ``eventId``, and enqueues nothing; the same key
with another request is 422 ``idempotency_key_reused``.

Where a key is remembered (the guarantee the README states):

- Redis holds an entry per key (:mod:`shared.redis.idempotency`), claimed in the same
  script as the event's XADD, until the projector has committed the event's
  ``ingest_events`` row (7 days at most; a session part's entry for those 7 days).
  Two concurrent requests with one key: one claim wins and appends; the other finds
  its entry and replays it (the winner's response is known when it claims).
- PostgreSQL keeps the key on the event's ``ingest_events`` row (unique per
  integration) for as long as that row lives. A key Redis does not know (its entry
  expired, or Redis was flushed or lost data) is looked up there before anything is
  appended; found, its entry is put back in Redis and replayed. So only requests that
  carry a key Redis does not hold wait on PostgreSQL (and get 503 while it is down).
- An event accepted but lost by Redis before it reached PostgreSQL (the tail of the
  AOF) loses its entry with it: a retry is then accepted again, which is right, since
  the first one will never apply.

Parts of a snapshot session are idempotent by themselves (a part sent twice is
stored once); with a key, the first answer is recorded after the part is stored and
replayed from Redis while its entry lives.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from services.gateway.http import respond
from services.gateway.state import REDIS, RESOURCES, SETTINGS
from shared.codes import Code
from shared.errors import ApiError
from shared.redis import idempotency

HEADER = "Idempotency-Key"
MAX_KEY = 255
REPLAYED = "Idempotent-Replayed"  # on a replayed answer: true


@dataclass(frozen=True, slots=True)
class Claim:
    """A keyed request: its key, the Redis entry's key and the request's fingerprint."""

    key: str
    redis_key: str
    fingerprint: str

    def entry(self, event_id: str, status: int, body: dict[str, Any]) -> bytes:
        return idempotency.entry(self.fingerprint, event_id, status, body)


def header_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key, checked (400); None without one."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 0 < len(key) <= MAX_KEY or not all(" " <= c <= "~" for c in key):
        raise ApiError(
            Code.INVALID_IDEMPOTENCY_KEY,
            f"{HEADER} must be 1 to {MAX_KEY} printable ASCII characters "
            f"(got {len(key)} characters)",
            pointer=f"/headers/{HEADER}",
        )
    return key


def fingerprint(request: web.Request, table: str, body: bytes) -> str:
    """SHA-256 of what makes two requests the same: method, route, the table it names,
    the query (order-insensitive), the media type and the body exactly as sent."""
    route = request.match_info.route.resource
    head = orjson.dumps(
        [
            request.method,
            route.canonical if route is not None else request.path,
            table,
            sorted(request.query.items()),
            request.content_type if request.body_exists else "",
        ]
    )
    return hashlib.sha256(head + b"\0" + body).hexdigest()


def claim_for(request: web.Request, integration: str, key: str | None, table: str,
              body: bytes) -> Claim | None:  # fmt: skip
    if key is None:
        return None
    return Claim(key, idempotency.entry_key(integration, key), fingerprint(request, table, body))


def replay(request: web.Request, claim: Claim, raw: bytes) -> web.Response:
    """The first response recorded for the key, or 422 when it answered another request."""
    found = idempotency.decode(raw)
    if found.fingerprint != claim.fingerprint:
        raise ApiError(
            Code.IDEMPOTENCY_KEY_REUSED,
            f"this {HEADER} was already used for another request (a different body, "
            f"route or query; event {found.event_id}): use a new key for a new request",
            status=422,
            pointer=f"/headers/{HEADER}",
        )
    return respond(request, found.body, status=found.status, headers={REPLAYED: "true"})


async def recorded(request: web.Request, integration: str, claim: Claim | None
                   ) -> web.Response | None:  # fmt: skip
    """The answer of a key already used: from Redis, else from PostgreSQL (then its
    entry is put back in Redis). None: the key is new, go on and claim it."""
    if claim is None:
        return None
    redis = request.app[REDIS]
    raw = await redis.get(claim.redis_key)
    if raw is not None:
        return replay(request, claim, raw)
    found = await request.app[RESOURCES].idempotent_event(integration, claim.key)
    if found is None:
        return None
    event_id, fp = found
    raw = idempotency.entry(fp, event_id, 202, {"eventId": event_id})
    ttl = request.app[SETTINGS].receipt_ttl
    await redis.set(claim.redis_key, raw, ex=ttl, nx=True)
    return replay(request, claim, raw)


async def record(request: web.Request, claim: Claim, event_id: str, status: int,
                 body: dict[str, Any]) -> web.Response:  # fmt: skip
    """After a request stored what it needs by itself (a session part): record its
    answer unless a concurrent request with the key was first (then replay that)."""
    redis = request.app[REDIS]
    raw = claim.entry(event_id, status, body)
    ttl = request.app[SETTINGS].receipt_ttl
    if await redis.set(claim.redis_key, raw, ex=ttl, nx=True):
        return respond(request, body, status=status)
    earlier = await redis.get(claim.redis_key)
    return replay(request, claim, earlier if earlier is not None else raw)
