"""The projector's transaction: every statement of one batch on ``resources``,
``resource_changes``, ``ingest_events``, ``sync_issues``, ``rejected_bodies`` and
``projector_positions``.

:func:`projection` opens ONE transaction per batch that locks the partitions' position
rows, reads the previous state of the resources the batch touches, writes (delete,
upsert, binary COPYs) and records the new positions, all or nothing: that recorded
position is what makes the effect exactly-once. The transaction is opened and ended by
hand so that BEGIN travels with the locks and COMMIT with the position update and the
change feed's notification, one script each (three round trips fewer per batch than
asyncpg's transaction with each statement alone; measured at 2,375 live events/s: the
projector's CPU per event 86-90 -> 79 us, PostgreSQL's 80-83 -> 77).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.pg.feed import NOTIFY_SQL
from shared.pg.pool import Db, connection
from shared.projection import BatchRows, Key

# ---- the projector's batch ----------------------------------------------------------

#: each partition's transaction-level advisory lock, taken (in ascending partition order,
#: so two batches never wait on each other in a cycle) before the transaction has an
#: xid, then their position rows: one round trip (the simple protocol; every value is an
#: int). The lock orders the xids of one partition's batches by commit (shared.pg.feed,
#: step 3).
POSITION_LOCK_STEP_SQL = "SELECT pg_advisory_xact_lock({lock_class}, {p});"
#: first in the same script: every statement of the projector's transaction reaches rows
#: by key, so the planner is told not to scan (statistics lag a table that grows fast)
POSITION_PLANNER_SQL = "SET LOCAL enable_seqscan = off;"
POSITION_ROWS_SQL = (
    "INSERT INTO projector_positions (partition, stream_ms, stream_seq) VALUES {rows}"
    " ON CONFLICT (partition) DO NOTHING"
)
#: the advisory lock class of projector partitions (the migrations' lock is one number)
PARTITION_LOCK_CLASS = 0x1D6E
POSITION_LOCK_SQL = (
    "SELECT partition, stream_ms, stream_seq FROM projector_positions"
    " WHERE partition = ANY($1::int[]) ORDER BY partition FOR UPDATE"
)
#: the new positions, in the script that ends the transaction (:data:`END_SQL`): every
#: value an int, so the simple protocol carries it and the COMMIT in one round trip
POSITION_UPDATE_SQL = (
    "UPDATE projector_positions AS pp SET stream_ms = u.ms, stream_seq = u.seq,"
    " updated_at = now() FROM (VALUES {rows}) AS u(p, ms, seq) WHERE pp.partition = u.p;"
)
#: the projector's transaction is opened and ended by hand, each with the statements
#: next to it in one script: BEGIN with the locks, the positions with COMMIT (three round
#: trips fewer per batch than BEGIN, UPDATE, notify and COMMIT each alone)
BEGIN_SQL = "BEGIN;"
END_SQL = "COMMIT;"
ROLLBACK_SQL = "ROLLBACK;"
#: one name serves every savepoint: PostgreSQL releases or rolls back to the newest of it
SAVEPOINT_SQL = "SAVEPOINT projection;"
RELEASE_SQL = "RELEASE SAVEPOINT projection;"
ROLLBACK_TO_SQL = "ROLLBACK TO SAVEPOINT projection;"
#: the previous state of the batch's keys: one primary-key probe per key, whatever the
#: statistics say (LATERAL fixes the keys as the outer side, OFFSET 0 keeps the probe a
#: parameterized subquery, and :data:`POSITION_PLANNER_SQL` leaves it the index). A plan
#: made while a fresh table's statistics said it was empty seq-scanned all of it on every
#: batch, for as long as the plan stayed cached.
PREV_SQL = """
SELECT r.resource_type, r.group_key, r.resource_id, r.data
FROM unnest($1::text[], $2::text[], $3::text[]) AS k(rt, gk, rid)
CROSS JOIN LATERAL (
  SELECT r.resource_type, r.group_key, r.resource_id, r.data FROM resources r
  WHERE r.resource_type = k.rt AND r.group_key = k.gk AND r.resource_id = k.rid
  OFFSET 0
) r
"""
DELETE_SQL = """
DELETE FROM resources r
USING unnest($1::text[], $2::text[], $3::text[]) AS k(rt, gk, rid)
WHERE r.resource_type = k.rt AND r.group_key = k.gk AND r.resource_id = k.rid
"""
UPSERT_SQL = """
INSERT INTO resources (resource_type, group_key, resource_id, name, important_fields, data,
                       content_hash, version, created_at, updated_at, last_event_id)
SELECT rt, gk, rid, nm, imp, dat, h, v, $10::timestamptz, $10::timestamptz, ev
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
            $7::text[], $8::int[], $9::text[]) AS x(rt, gk, rid, nm, imp, dat, h, v, ev)
ON CONFLICT (resource_type, group_key, resource_id) DO UPDATE SET
  name = EXCLUDED.name, important_fields = EXCLUDED.important_fields, data = EXCLUDED.data,
  content_hash = EXCLUDED.content_hash, version = EXCLUDED.version,
  updated_at = EXCLUDED.updated_at, last_event_id = EXCLUDED.last_event_id
"""
#: the columns a batch's new resources are COPied with (keys no row held before the batch:
#: the partitions' locks keep any other writer of them out, so no conflict check is due;
#: at 1,000 new keys a batch, PostgreSQL's CPU per row 11-12 -> 7-9 us against the upsert)
RESOURCE_COLS = (
    "resource_type group_key resource_id name important_fields data content_hash version"
    " created_at updated_at last_event_id"
).split()
#: those of a batch's events whose receipt is stored already (also the store's, for the
#: worker's recheck)
APPLIED_EVENTS_SQL = "SELECT event_id FROM ingest_events WHERE event_id = ANY($1::text[])"
#: the column order of BatchRows.history, .events and .issues (shared.projection)
CHANGE_COLS = (
    "resource_type group_key resource_id version op event actor patch after event_id"
    " received_at applied_at name important_fields content_hash"
).split()
EVENT_COLS = (
    "event_id integration_id table_name resource_type group_key kind status event actor"
    " created updated deleted unchanged rejected skipped ignored_ids issues issues_total"
    " received_at processed_at idempotency_key request_fingerprint items items_total"
    " replay_of replay_item"
).split()
REJECTED_COLS = (
    "event_id item_index integration_id table_name resource_type group_key resource_id"
    " body created_at"
).split()
ISSUE_COLS = (
    "event_id integration_id table_name resource_type group_key resource_id item_index"
    " code message pointer created_at"
).split()


def _cols(keys: list[Key]) -> tuple[list[str], list[str], list[str]]:
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


def position_lock_sql(partitions: list[int]) -> str:
    """The advisory locks and position rows of ``partitions`` (ascending), one script."""
    ps = sorted({int(p) for p in partitions})
    steps = [POSITION_LOCK_STEP_SQL.format(lock_class=PARTITION_LOCK_CLASS, p=p) for p in ps]
    rows = ", ".join(f"({p}, 0, 0)" for p in ps)
    return "\n".join([POSITION_PLANNER_SQL, *steps, POSITION_ROWS_SQL.format(rows=rows)])


def position_update_sql(upto: dict[int, tuple[int, int]]) -> str:
    """The statement recording each partition's last applied stream id (ints only)."""
    rows = ", ".join(
        f"({int(p)}, {int(upto[p][0])}::bigint, {int(upto[p][1])}::bigint)" for p in sorted(upto)
    )
    return POSITION_UPDATE_SQL.format(rows=rows)


class _Savepoint:
    """A nested transaction by hand (the projection's own is not asyncpg's, so asyncpg's
    ``Connection.transaction()`` refuses to nest in it)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def __aenter__(self) -> None:
        await self._conn.execute(SAVEPOINT_SQL)

    async def __aexit__(self, et: type[BaseException] | None, *_: object) -> None:
        await self._conn.execute(RELEASE_SQL if et is None else ROLLBACK_TO_SQL)


class Projection:
    """One projector transaction over one or more partitions, open for the ``async with``
    block of :meth:`ResourceStore.projection`; ``positions`` maps each partition to the
    last stream id of it applied (``position``: that of the only one)."""

    def __init__(self, conn: asyncpg.Connection, positions: dict[int, tuple[int, int]]) -> None:
        self._conn = conn
        self.positions = positions
        self._wrote_history = False
        #: what :meth:`record` decided, sent with the COMMIT when the block ends
        self.ending = ""

    @property
    def position(self) -> tuple[int, int]:
        (only,) = self.positions.values()
        return only

    async def previous(self, keys: list[Key]) -> dict[Key, Any]:
        """The current data of those of ``keys`` that exist."""
        prev: dict[Key, Any] = {}
        if keys:
            for r in await self._conn.fetch(PREV_SQL, *_cols(keys)):
                prev[(r["resource_type"], r["group_key"], r["resource_id"])] = r["data"]
        return prev

    async def applied_events(self, event_ids: list[str]) -> set[str]:
        """Those of ``event_ids`` whose receipt is stored already: their effect is here."""
        if not event_ids:
            return set()
        return {r["event_id"] for r in await self._conn.fetch(APPLIED_EVENTS_SQL, event_ids)}

    def savepoint(self) -> _Savepoint:
        """A nested transaction: a statement that fails inside it undoes only its block."""
        return _Savepoint(self._conn)

    async def write(self, rows: BatchRows, upto: tuple[int, int] | dict[int, Any]) -> None:
        """Write the batch's rows and record the partitions' new positions (``upto``: a
        stream id of the only partition, or one per partition)."""
        await self.write_rows(rows)
        await self.record(upto)

    async def record(self, upto: tuple[int, int] | dict[int, Any]) -> None:
        """Record the last stream id applied of each partition (a bare stream id: of the
        only one); when the batch wrote history, notify the change feed's listeners
        (delivered at commit). Both are sent with the COMMIT, in one script."""
        if not isinstance(upto, dict):
            (p,) = self.positions
            upto = {p: upto}
        self.ending = position_update_sql(upto)
        if self._wrote_history:
            self.ending += NOTIFY_SQL + ";"

    async def write_rows(self, rows: BatchRows) -> None:
        conn = self._conn
        if rows.deletes:
            await conn.execute(DELETE_SQL, *_cols(list(rows.deletes)))
        now = rows.now or datetime.now(UTC)
        new: list[tuple[Key, tuple[Any, ...]]] = []
        ups: list[tuple[Key, tuple[Any, ...]]] = []
        for key, v in rows.final.items():
            if v is not None:
                (new if key in rows.new else ups).append((key, v))
        if ups:
            cols: list[list[Any]] = [[] for _ in range(9)]
            for (rt, gk, rid), (name, imp, data, h, v, ev) in ups:
                for i, val in enumerate((rt, gk, rid, name, imp, data, h, v, ev)):
                    cols[i].append(val)
            await conn.execute(UPSERT_SQL, *cols, now)
        if new:
            records = [(*key, name, imp, data, h, v, now, now, ev)
                       for key, (name, imp, data, h, v, ev) in new]  # fmt: skip
            await conn.copy_records_to_table("resources", records=records, columns=RESOURCE_COLS)
        if rows.history:
            self._wrote_history = True
            await conn.copy_records_to_table(
                "resource_changes", records=rows.history, columns=CHANGE_COLS
            )
        if rows.events:
            await conn.copy_records_to_table(
                "ingest_events", records=rows.events, columns=EVENT_COLS
            )
        if rows.issues:
            await conn.copy_records_to_table("sync_issues", records=rows.issues, columns=ISSUE_COLS)
        if rows.rejected:
            await conn.copy_records_to_table(
                "rejected_bodies", records=rows.rejected, columns=REJECTED_COLS
            )


@asynccontextmanager
async def projection(db: Db, p: int | list[int]) -> AsyncIterator[Projection]:
    """One transaction holding the position rows of partition ``p`` (or of each of a
    list) locked: committed when the block ends, rolled back when it raises."""
    ps = sorted({int(x) for x in ([p] if isinstance(p, int) else p)})
    async with connection(db) as conn:
        try:
            await conn.execute(BEGIN_SQL + position_lock_sql(ps))
            rows = await conn.fetch(POSITION_LOCK_SQL, ps)
            positions = {r["partition"]: (r["stream_ms"], r["stream_seq"]) for r in rows}
            assert len(positions) == len(ps)
            tx = Projection(conn, positions)
            yield tx
            # an error in this script skips the rest of it, COMMIT included
            await conn.execute(tx.ending + END_SQL)
        except BaseException:
            if not conn.is_closed():
                with contextlib.suppress(Exception):  # (a broken connection: gone)
                    await conn.execute(ROLLBACK_SQL)
            raise
