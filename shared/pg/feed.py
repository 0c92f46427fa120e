"""The change feed: every row of ``resource_changes`` exactly once, in an order that never
lets a later commit land behind a reader's cursor.

Why an identity column is not enough: ids are handed out when a row is inserted, not
when its transaction commits. Projector A inserts id 10, projector B inserts id 11 and
commits first; a reader listing ``id > 9`` sees 11, moves its cursor there, and never
sees 10 when A commits.

What the feed does instead (the approach of the eventsourcing library and Marten's
"high water mark"): every history row records the id of the transaction that wrote it
(``txid``, migration 0009, ``DEFAULT pg_current_xact_id()``), and a read returns only rows
with ``txid < xmin``, where ``xmin = pg_snapshot_xmin(pg_current_snapshot())`` is taken
from the snapshot of the very statement that reads the rows, ordered by ``(txid, id)``.

The argument, in three steps:

1. Every transaction still in progress when the statement's snapshot is taken has an
   xid >= xmin (xmin is by definition the oldest xid in progress), and every transaction
   that gets an xid later gets one above all xids handed out so far, so >= xmin too.
   Hence no row with ``txid < xmin`` can be written after the read: the set of rows
   below xmin is final, and all of it is visible to the statement (a committed
   transaction below xmin is visible to every later snapshot; an aborted one left no
   rows).
2. A reader's cursor is a position ``(t, i)``, and it only ever moves to a position it
   has read through: the last row returned, or, after a page that held fewer rows than
   asked (so every matching row below xmin was returned), ``(xmin - 1, LAST_ID)`` (see
   :func:`shared.feed.settled`). Every row at or before the cursor was either returned
   or belongs to the final set below an xmin the reader read under; every row after it
   is returned by a later read once its transaction is below xmin. So each row is
   returned exactly once, in ``(txid, id)`` order, and nothing can appear behind the
   cursor later.
3. Per-resource order: a resource lives in one partition, whose batches are applied by
   one projector at a time, each batch in one transaction that first takes the
   partition's transaction-level advisory lock (before the transaction has an xid; see
   :meth:`shared.pg.resources.ResourceStore.projection`). The next batch of the
   partition can thus be given its xid only after the previous one committed, so the
   versions of one resource carry increasing txids, and within one transaction they
   are copied in version order (increasing ids).

The cost: an open transaction that holds an xid (any writer of this database, a
projector batch or an analyst's ``BEGIN; UPDATE …`` left open) holds the feed back at its
xid until it ends; rows committed after it wait. Nothing is lost, they are late.

Waking long polls: the projector sends ``NOTIFY`` (:data:`NOTIFY_SQL`) in the transaction
of every batch that wrote history, so it is delivered at commit. :class:`ChangeSignal`
LISTENs on one dedicated connection and wakes every waiter; since the feed can also
move because an unrelated transaction ended (xmin advanced, which notifies nobody),
waiters re-check on a short timer as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from orjson import Fragment

from shared import feed
from shared.feed import Position
from shared.pg.pool import Db

log = logging.getLogger("ingestd.feed")

CHANNEL = "ingestd_changes"
#: sent by the projector in its transaction (delivered at commit, collapsed per transaction)
NOTIFY_SQL = f"SELECT pg_notify('{CHANNEL}', '')"
#: how often a waiter looks again without a notification (an xmin advance sends none)
RECHECK_S = 0.5

_COLS = (
    "c.txid, c.id, c.resource_type, c.group_key, c.resource_id, c.version, c.op, c.event,"
    " {json}, c.event_id, c.applied_at"
)
_VALUES = "c.actor, c.patch, c.after"
#: the JSON columns as their text, for an answer that embeds them as they are
_TEXTS = "c.actor::text AS actor, c.patch::text AS patch, c.after::text AS after"
#: xmin and the rows after ($1, $2) up to ($3, $4) below it, in ONE statement: the bound
#: must come from the snapshot the rows are read with
_READ = """
SELECT x.xmin, {cols}
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) x
LEFT JOIN LATERAL (
    SELECT {inner} FROM resource_changes c
    WHERE c.txid < x.xmin AND (c.txid, c.id) > ($1::xid8, $2::bigint)
      AND (c.txid, c.id) <= ($3::xid8, $4::bigint)
      AND ($5::text[] IS NULL OR c.resource_type = ANY($5::text[]))
      AND ($6::text IS NULL OR c.group_key = $6::text)
    ORDER BY c.txid, c.id
    LIMIT $7
) c ON true
"""
_OUTER = _COLS.format(json="c.actor, c.patch, c.after")
READ_SQL = _READ.format(cols=_OUTER, inner=_COLS.format(json=_VALUES))
READ_TEXT_SQL = _READ.format(cols=_OUTER, inner=_COLS.format(json=_TEXTS))
HEAD_SQL = "SELECT pg_snapshot_xmin(pg_current_snapshot())"


@dataclass(frozen=True, slots=True)
class FeedChange:
    """One history row as the feed lists it; ``cursor`` is its position."""

    cursor: str
    position: Position
    resource_type: str
    group_key: str
    resource_id: str
    version: int
    op: str
    event: str | None
    actor: Any
    patch: Any  # a list of JSON Patch operations, or its orjson.Fragment
    after: Any  # the resource after the change (None for a delete), or its orjson.Fragment
    event_id: str
    applied_at: datetime


def _change(r: asyncpg.Record, raw: bool) -> FeedChange:
    pos = (r["txid"], r["id"])
    actor, patch, after = r["actor"], r["patch"], r["after"]
    if raw:
        actor, patch, after = (None if v is None else Fragment(v) for v in (actor, patch, after))
    return FeedChange(
        feed.encode(pos),
        pos,
        r["resource_type"],
        r["group_key"],
        r["resource_id"],
        r["version"],
        r["op"],
        r["event"],
        actor,
        patch,
        after,
        r["event_id"],
        r["applied_at"],
    )


def change_view(c: FeedChange) -> dict[str, Any]:
    """One change as the feed API and webhooks render it."""
    return {
        "cursor": c.cursor,
        "resourceType": c.resource_type,
        "groupKey": c.group_key,
        "id": c.resource_id,
        "version": c.version,
        "op": c.op,
        "event": c.event,
        "actor": c.actor,
        "patch": c.patch,
        "after": c.after,
        "eventId": c.event_id,
        "appliedAt": c.applied_at.isoformat(),
    }


class FeedStore:
    """Reads of the change feed, and the wake-up of long polls (:class:`ChangeSignal`)."""

    def __init__(self, db: Db, signal: ChangeSignal | None = None) -> None:
        self._db = db
        self.signal = signal

    async def read(
        self,
        after: str | None,
        limit: int,
        resource_types: list[str] | None = None,
        group_key: str | None = None,
        *,
        upto: Position | None = None,
        raw_json: bool = False,
    ) -> tuple[list[FeedChange], str]:
        """Up to ``limit`` changes after the cursor ``after`` (None: from the start) whose
        resource type is one of ``resource_types`` and whose groupKey is ``group_key``
        (None: any), and the cursor to read on from. ``upto``: none past this position
        (a replay of a range read before). ``raw_json``: ``actor``, ``patch`` and ``after``
        as ``orjson.Fragment`` of their stored JSON text, for an answer orjson writes
        (not decoded and encoded again). :class:`shared.feed.BadCursor` for a bad
        ``after``."""
        start = feed.START if after is None else feed.decode(after)
        items, pos = await self.read_at(
            start, limit, resource_types, group_key, upto=upto, raw_json=raw_json
        )
        return items, feed.encode(pos)

    async def read_at(
        self,
        start: Position,
        limit: int,
        resource_types: list[str] | None = None,
        group_key: str | None = None,
        *,
        upto: Position | None = None,
        raw_json: bool = False,
    ) -> tuple[list[FeedChange], Position]:
        """:meth:`read` with positions instead of cursors."""
        end = upto or (feed.MAX_TXID, feed.LAST_ID)
        rows = await self._db.fetch(
            READ_TEXT_SQL if raw_json else READ_SQL,
            start[0], start[1], end[0], end[1], resource_types, group_key, limit,
        )  # fmt: skip
        items = [_change(r, raw_json) for r in rows if r["id"] is not None]
        if len(items) == limit:
            return items, items[-1].position
        # every matching row below xmin (and up to ``upto``) was returned
        settled = feed.settled(start, rows[0]["xmin"])
        if upto is not None:
            settled = min(settled, upto)
        return items, max(settled, items[-1].position) if items else settled

    async def head(self) -> int:
        """The current xmin: every row with a txid below it is final."""
        xmin = await self._db.fetchval(HEAD_SQL)
        assert isinstance(xmin, int)
        return xmin

    @property
    def closing(self) -> bool:
        """Long polls end now: the process is shutting down."""
        return self.signal is not None and self.signal.closing

    def generation(self) -> int:
        """How many notifications this process has seen (see :meth:`wait_for_changes`)."""
        return 0 if self.signal is None else self.signal.generation

    async def wait_for_changes(self, seconds: float, since: int | None = None) -> bool:
        """Until a commit notified new changes (True) or ``seconds`` passed (False).
        With ``since`` (a :meth:`generation` taken before the caller's last read), a
        notification that came in between counts too, so no wake-up is missed."""
        if self.signal is None:
            await asyncio.sleep(seconds)
            return False
        return await self.signal.wait(seconds, since)


class ChangeSignal:
    """LISTEN on one dedicated connection; every notification wakes every waiter. The
    connection is re-opened when it is lost (waiters then rely on their timer)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._event = asyncio.Event()
        self.generation = 0
        self.closing = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def close(self) -> None:
        """The process is shutting down: wake every waiter now, and later ones at once."""
        self.closing = True
        self._wake()

    def _wake(self, *_: Any) -> None:
        self.generation += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, seconds: float, since: int | None = None) -> bool:
        if self.closing or (since is not None and self.generation > since):
            return True
        event = self._event
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        """End the LISTEN loop. It is asked to stop rather than cancelled: a cancelled
        ``asyncpg.connect`` can be left waiting forever (seen as a gateway that never
        finished its cleanup when it stopped right after starting)."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_S)
        except TimeoutError:
            log.warning("change feed: LISTEN loop did not stop within %s s", STOP_S)
            self._task.cancel()

    async def _listen(self) -> None:
        stopping = self._stopping
        while not stopping.is_set():
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._wake)
                self._wake()  # whatever committed while we were not listening
                await _first(lost.wait(), stopping.wait())
                if lost.is_set() and not stopping.is_set():
                    log.warning("change feed: LISTEN connection lost; reconnecting")
            except (OSError, TimeoutError, asyncpg.PostgresError) as e:
                log.warning("change feed: cannot LISTEN (%s); retrying", e)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1)


#: how long a stopping gateway waits for its LISTEN loop (a connect under way: <= 5 s)
STOP_S = 8.0


async def _first(*waits: Any) -> None:
    """Until the first of ``waits`` is done; the others are cancelled (Event.wait only)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
