"""A snapshot's effects, cut into change-entry slices and staged in Redis until its commit.

Slices hold at most :data:`SLICE_EFFECTS` effects (or :data:`SLICE_BYTES` of resource
data), so a projector batch (a count of entries) stays about ten times a batch of
single events; only the last entry carries the receipt. Staged slices sit in a
scratch list (:func:`keyspace.bulk_work_keys`) that the commit streams into its
transaction, so memory stays bounded however large the snapshot.
"""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from shared.events import Change, RawMeta
from shared.processing import ScopeState
from shared.redis import writemodel

SLICE_EFFECTS = 10  # effects per change entry ...
SLICE_BYTES = 16 << 10  # ... or this much resource data, whichever comes first
STAGE_BATCH = 64  # staged slices per RPUSH / per LRANGE during the commit
SCRATCH_TTL = 86_400


def frame(change: bytes, state: dict[str, tuple[str, int]]) -> bytes:
    """A staged slice: 4-byte length, the encoded change entry, the state updates (JSON)."""
    flat = [x for rid, v in state.items() for x in (rid, writemodel.encode(v).decode())]
    return len(change).to_bytes(4, "big") + change + orjson.dumps(flat)


def unframe(raw: bytes) -> tuple[bytes, list[str]]:
    n = int.from_bytes(raw[:4], "big")
    return raw[4 : 4 + n], orjson.loads(raw[4 + n :])


class Slicer:
    """Accumulates effects into change-entry slices and stages them in a Redis list."""

    def __init__(
        self, redis: Redis, meta: RawMeta, out_key: str, local: list[str] | None = None
    ) -> None:
        self.redis = redis
        self.meta = meta
        self.local = local  # the table's local fields, on every slice (shared.ownership)
        self.out_key = out_key
        self.slices = 0
        self.totals = {"created": 0, "updated": 0, "deleted": 0}
        self.live_delta = self.dead_delta = 0
        self._pending: list[bytes] = []
        self._new()

    def _new(self) -> None:
        self.change = Change(self.meta, "applied", last=False, local=self.local)
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
