"""How fetched records enter the pipeline: the gateway's own session store, nothing else.

The sources stage hands each page of records to one of two writers, so pulled data
takes exactly the path of pushed data (same raw events, same worker, same receipts,
history and sync issues):

* :class:`SnapshotWriter` (a full run): every page is one part of a multi-part
  snapshot session of (table, groupKey); :meth:`SnapshotWriter.complete` adds an
  empty final part, which queues the snapshot — resources absent from it are
  deleted. :meth:`SnapshotWriter.abort` drops the session (a failed, cancelled or
  truncated run): nothing is deleted, nothing changes. The snapshot is ``partial``:
  a record that fails the schema is a sync issue, the valid ones apply, and a
  resource whose record was invalid is not deleted.
* :class:`UpsertWriter` (an incremental run): every page is one single-request
  bulk event marked ``upsert`` — the worker applies its records as upserts and
  deletes nothing (:mod:`shared.bulk`), so it is no snapshot of the scope.

A page larger than :data:`MAX_PART_BYTES` once encoded is split over several parts
(events), so no part is larger than what a gateway accepts in one request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import orjson
from redis.asyncio import Redis

from shared.events import RawMeta, new_event_id
from shared.redis import keyspace as ks
from shared.redis.durable import Guard
from shared.redis.sessions import Marker, Scope, SessionStore

MAX_PART_BYTES = 4 << 20


def _chunks(records: list[Any]) -> Iterator[bytes]:
    """``records`` as JSON arrays of at most :data:`MAX_PART_BYTES` (a single record
    larger than that goes alone: the worker takes it, and its schema decides)."""
    body = orjson.dumps(records)
    if len(body) <= MAX_PART_BYTES or len(records) < 2:
        yield body
        return
    half = len(records) // 2
    yield from _chunks(records[:half])
    yield from _chunks(records[half:])


async def abort_snapshot(
    redis: Redis, partitions: int, resource_type: str, group_key: str, session: str,
    integration: str,
) -> str:  # fmt: skip
    """Drop a run's snapshot session (one a stage left behind): ``aborted`` or why not."""
    p = ks.partition_of(resource_type, group_key, partitions)
    return await SessionStore(redis).abort(Scope(p, resource_type, group_key, session), integration)


class _Writer:
    def __init__(
        self, redis: Redis, *, partitions: int, integration: str, table: str,
        resource_type: str, group_key: str, event: str, actor: Any, session_ttl: int,
        receipt_ttl: int, guard: Guard | None = None,
    ) -> None:  # fmt: skip
        self.store = SessionStore(redis, guard)
        self.redis = redis
        self.p = ks.partition_of(resource_type, group_key, partitions)
        self.integration = integration
        self.table = table
        self.resource_type = resource_type
        self.group_key = group_key
        self.event = event
        self.actor = actor
        self.session_ttl = session_ttl
        self.receipt_ttl = receipt_ttl
        #: raw event ids appended so far (a run records them)
        self.event_ids: list[str] = []

    def _meta(self, event_id: str, extra: dict[str, Any]) -> RawMeta:
        return RawMeta(
            event_id, "bulk", self.integration, self.table, self.resource_type,
            self.group_key, self.event, self.actor, int(time.time() * 1000), None, extra,
        )  # fmt: skip

    def _receipt(self, where: list[Any] | None = None) -> bytes:
        marker: dict[str, Any] = {"i": self.integration}
        if where is not None:
            marker["s"] = where
        return orjson.dumps(marker)


class UpsertWriter(_Writer):
    async def add(self, records: list[Any]) -> list[str]:
        """Append ``records`` as upserts: one raw event per part; their ids."""
        out: list[str] = []
        for body in _chunks(records):
            eid = new_event_id()
            session = ks.IMPLICIT_SESSION + eid
            scope = Scope(self.p, self.resource_type, self.group_key, session)
            meta = self._meta(eid, {"session": session, "partial": True, "upsert": True})
            await self.store.store_single(
                scope, self.integration, eid, body, meta.encode(), self.session_ttl,
                ks.receipt_key(eid), self._receipt(), self.receipt_ttl,
            )  # fmt: skip
            out.append(eid)
        self.event_ids += out
        return out


class SessionGone(Exception):
    """The run's snapshot session was superseded, aborted or expired under it."""


class SnapshotWriter(_Writer):
    def __init__(self, redis: Redis, *, session: str, **kw: Any) -> None:
        super().__init__(redis, **kw)
        self.scope = Scope(self.p, self.resource_type, self.group_key, session)
        self.parts = 0
        self.event_id = new_event_id()

    async def add(self, records: list[Any]) -> None:
        for body in _chunks(records):
            await self._part(body, final=False)

    async def complete(self) -> str:
        """Add the final (empty) part: the snapshot is queued; its event id."""
        where = [self.p, self.resource_type, self.group_key, self.scope.session]
        await self._part(b"[]", final=True, marker=Marker(self._receipt(where), self.receipt_ttl))
        return self.event_id

    async def abort(self) -> str:
        """Drop the session: ``aborted`` or why not (``gone``, the state it is in)."""
        return await self.store.abort(self.scope, self.integration)

    async def _part(self, body: bytes, *, final: bool, marker: Marker | None = None) -> None:
        self.parts += 1
        extra = {"session": self.scope.session, "partial": True}
        got = await self.store.add_part(
            self.scope, self.integration, self.event_id, self.parts, body,
            hashlib.sha256(body).hexdigest(), final,
            lambda eid: self._meta(eid, extra).encode(), self.session_ttl, marker,
        )  # fmt: skip
        if got is None or got.outcome not in ("stored", "queued", "duplicate"):
            raise SessionGone(got.outcome if got is not None else "expired")
        self.event_id = got.event_id
        if not self.event_ids:
            self.event_ids.append(got.event_id)
