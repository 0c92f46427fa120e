"""Applying one batch of change entries to PostgreSQL in one transaction.

Entries at or below the partition's recorded position were applied before (a
projector that died between its commit and XACK) and are skipped; the rest are
decoded, turned into rows by :func:`shared.projection.build_rows` (pure) and written
by :class:`shared.pg.resources.Projection` in the same transaction that records the
new position. A receipt reads ``applied`` only once every slice of a bulk snapshot
before it is applied (stream order, and slices are committed by the worker all at
once or not at all).
"""

from __future__ import annotations

from datetime import UTC, datetime

from shared.events import Change
from shared.pg.resources import ResourceStore
from shared.projection import build_rows, keys_of
from shared.redis import keyspace as ks


async def apply_batch(store: ResourceStore, p: int, entries: list[tuple[bytes, bytes]]) -> int:
    """Apply entries (stream id, encoded change) past the recorded position; return how many."""
    async with store.projection(p) as tx:
        fresh = [
            (ks.stream_id_tuple(sid), raw)
            for sid, raw in entries
            if ks.stream_id_tuple(sid) > tx.position
        ]
        if not fresh:
            return 0
        changes = [c for _, raw in fresh for c in Change.decode_many(raw)]
        prev = await tx.previous(list(keys_of(changes)))
        rows = build_rows(changes, prev, datetime.now(UTC))
        await tx.write(rows, fresh[-1][0])
    return len(fresh)
