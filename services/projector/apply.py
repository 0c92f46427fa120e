"""Applying one batch of change entries to PostgreSQL in one transaction.

Entries at or below the partition's recorded position were applied before (a
projector that died between its commit and XACK) and are skipped; so are changes of
events whose receipt is stored already (Redis lost the tail of its writes and the
worker decided them again under new stream ids). The rest are decoded, turned into
rows by :func:`shared.projection.build_rows` (pure) and written by
:class:`shared.pg.projection.Projection` in the same transaction that records the new
position. A receipt reads ``applied`` only once every slice of a bulk snapshot before
it is applied (stream order, and slices are committed by the worker all at once or
not at all).

The fence: a batch PostgreSQL refuses because of its data (:func:`refused_for_good`)
is applied again change by change, each in a savepoint, and a change refused alone
becomes a rejected receipt with the issue ``unprocessable`` (see
:func:`shared.projection.refusal`), so no input can stop a partition. Any other
failure (connection, restart, serialization, a defect in a statement) is retried.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg

from shared.events import Change
from shared.pg.projection import Projection
from shared.pg.resources import ResourceStore
from shared.projection import Key, build_rows, keys_of, refusal
from shared.redis import idempotency
from shared.redis import keyspace as ks

log = logging.getLogger("ingestd.projector")

# SQLSTATE classes a change's own data causes: data exception, integrity constraint
# violation, program limit exceeded (an index row too large). Retrying cannot help.
DATA_CLASSES = ("22", "23", "54")


def settled_keys(ch: Change, with_key: bool = True) -> list[str]:
    """The Redis keys an event's stored receipt makes obsolete: its pending marker and,
    for a request with an Idempotency-Key answered ``202 {"eventId"}``, the key's entry
    (PostgreSQL answers both from now on). ``with_key`` False: the receipt may have been
    stored without its key (a change PostgreSQL refused, :func:`refusal`), so the entry
    stays for its TTL."""
    out = [ks.receipt_key(ch.meta.id)]
    idem, _ = ch.meta.idempotency()
    if with_key and idem is not None and ch.meta.integration is not None:
        out.append(idempotency.entry_key(ch.meta.integration, idem))
    return out


def _settled(changes: list[Change], with_key: bool) -> list[str]:
    return [k for c in changes if c.last for k in settled_keys(c, with_key)]


def refused_for_good(e: BaseException) -> bool:
    state = getattr(e, "sqlstate", None) or ""
    return isinstance(e, asyncpg.PostgresError) and state[:2] in DATA_CLASSES


Part = tuple[int, list[tuple[bytes, bytes]]]  # (partition, its entries in stream order)


async def apply_batch(
    store: ResourceStore,
    p: int,
    entries: list[tuple[bytes, bytes]],
    settled: list[str] | None = None,
) -> int:
    """Apply entries (stream id, encoded change) past the recorded position; return how
    many. ``settled``: gets the Redis keys the commit made obsolete (:func:`settled_keys`)."""
    outs = None if settled is None else [settled]
    try:
        (n,) = await _apply(store, [(p, entries)], fenced=False, settled=outs)
        return n
    except asyncpg.PostgresError as e:
        if not refused_for_good(e):
            raise
        log.warning("partition %s: PostgreSQL refused a batch (%s); applying it change by change",
                    p, e)  # fmt: skip
    (n,) = await _apply(store, [(p, entries)], fenced=True, settled=outs)
    return n


async def apply_group(
    store: ResourceStore, parts: list[Part], settled: list[list[str]] | None = None
) -> list[int]:
    """Apply the batches of several partitions (one part each) in ONE transaction; how
    many entries of each part were applied (``settled``: one list per part, see
    :func:`apply_batch`). Any failure fails the whole group: the caller then applies
    each part alone (:func:`apply_batch`), so that one partition's input never holds up
    another's."""
    return await _apply(store, parts, fenced=False, settled=settled)


async def _apply(
    store: ResourceStore, parts: list[Part], fenced: bool, settled: list[list[str]] | None
) -> list[int]:
    """``settled`` (one list per part) is extended only once the transaction committed,
    with the :func:`settled_keys` of the events whose receipt it stored."""
    got: list[list[str]] = []
    async with store.projection([p for p, _ in parts]) as tx:
        counts: list[int] = []
        uptos: dict[int, tuple[int, int]] = {}
        decoded: list[Change] = []
        for p, entries in parts:
            position = tx.positions[p]
            fresh: list[tuple[tuple[int, int], bytes]] = []
            stale: list[bytes] = []  # applied before, by a projector that died before XACK
            for sid, raw in entries:
                at = ks.stream_id_tuple(sid)
                if at > position:
                    fresh.append((at, raw))
                else:
                    stale.append(raw)
            counts.append(len(fresh))
            mine = [c for _, raw in fresh for c in Change.decode_many(raw)]
            if settled is not None:
                # a stale entry's key entry may not be obsolete: see settled_keys
                old = [c for raw in stale for c in Change.decode_many(raw)]
                got.append(_settled(mine, not fenced) + _settled(old, False))
            if fresh:
                uptos[p] = fresh[-1][0]
                decoded += mine
        if uptos:
            changes = await _not_applied(tx, sorted(uptos), decoded)
            prev = await tx.previous(list(keys_of(changes)))
            now = datetime.now(UTC)
            if fenced:
                await _one_by_one(tx, sorted(uptos), changes, prev, now)
                await tx.record(uptos)
            else:
                await tx.write(build_rows(changes, prev, now), uptos)
    if settled is not None:
        for out, ids in zip(settled, got, strict=True):
            out.extend(ids)
    return counts


async def _not_applied(tx: Projection, ps: list[int], changes: list[Change]) -> list[Change]:
    """Changes a worker decided while recovering from a Redis tail loss may belong to
    events PostgreSQL holds already (the worker checks too; this is the second fence)."""
    suspects = list({c.meta.id for c in changes if c.recheck})
    if not suspects:
        return changes
    done = await tx.applied_events(suspects)
    if not done:
        return changes
    log.warning("partition %s: %s event(s) already applied came again (Redis lost the tail of "
                "its writes?); skipped by event id", _named(ps), len(done))  # fmt: skip
    return [c for c in changes if c.meta.id not in done]


def _named(ps: list[int]) -> str:
    return ", ".join(map(str, ps))


async def _one_by_one(
    tx: Projection, ps: list[int], changes: list[Change], prev: dict[Key, object], now: datetime
) -> None:
    current = dict(prev)
    for ch in changes:
        rows = build_rows([ch], current, now)
        rows.new.clear()  # the fenced path upserts: a conflict here must not refuse the change
        try:
            async with tx.savepoint():
                await tx.write_rows(rows)
        except asyncpg.PostgresError as e:
            if not refused_for_good(e):
                raise
            log.error("partition %s: event %s refused by PostgreSQL: %s", _named(ps), ch.meta.id,
                      e)  # fmt: skip
            async with tx.savepoint():
                await tx.write_rows(build_rows([refusal(ch, str(e))], {}, now))
            continue
        for key, final in rows.final.items():
            current[key] = None if final is None else final[2]
