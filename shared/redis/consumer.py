"""The consumer-group read loop that worker and projector share.

A consumer that holds a partition's lease reads its stream through a consumer
group: before each read of new entries, the entries still pending for the group
(delivered to a consumer that died, or to a holder that lost its lease mid-read)
are claimed by this one, in stream order, and handled first. Entries leave
the stream only when their effect is committed downstream (:func:`ack_commands`
inside the committing transaction, or :func:`ack` after a PostgreSQL commit).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.redis import wire
from shared.redis.lease import Lease

Row = tuple[bytes, dict[bytes, bytes]]  # (stream id, fields); fields empty: deleted meanwhile


def consumer_name() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


class GroupReader:
    """Batches of one partition's stream for the holder of ``lease``."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        group: str,
        consumer: str,
        lease: Lease,
        count: int,
        linger_s: float = 0.0,
    ) -> None:
        self.redis = redis
        self.linger_s = linger_s
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.lease = lease
        self.count = count

    async def batches(
        self, *, until: float | None = None, idle_exit: bool = False
    ) -> AsyncIterator[list[Row]]:
        """Yield batches until the monotonic time ``until`` (or, with ``idle_exit``, until
        nothing is left). Before every read of new entries, entries pending for any
        consumer of the group are claimed and yielded first, in stream order: those of a
        consumer that died, and those a holder that lost its lease was still being
        delivered (a read it sent before it stalled). The lease is refreshed after each
        batch is handled and :class:`~shared.redis.lease.LostLease` raised when it is gone.

        After a batch that did not fill ``count`` has been handled, the next read waits
        ``linger_s`` (the worker's ``INGESTD_READ_LINGER_MS``; never with ``idle_exit``):
        under live traffic a cycle then carries the events of that span and pays its
        fixed costs (round trips, lease check, the change entry the projector applies)
        once for them all, instead of once per event or two. A full batch (a backlog) is
        followed by the next read at once."""
        await ensure_group(self.redis, self.stream, self.group)
        # announce this consumer as the partition's reader (XINFO CONSUMERS shows who
        # drains what; XAUTOCLAIM and a blocked XREADGROUP create it only once they get
        # an entry)
        await self.redis.xgroup_createconsumer(self.stream, self.group, self.consumer)
        while until is None or time.monotonic() < until:
            rows = await self._read(block=None if idle_exit else 1000)
            if not rows and idle_exit:
                return
            if rows:
                yield rows
                if self.linger_s and not idle_exit and len(rows) < self.count:
                    await asyncio.sleep(self.linger_s)
            await self.lease.keep_due()

    async def _read(self, block: int | None) -> list[Row]:
        """One round trip: XAUTOCLAIM of entries pending for any consumer of the group
        (they are older, so they come first), and a read of new entries, which blocks for
        ``block`` ms only when there are none. Entries deleted from the stream while
        pending leave the group's list in the XAUTOCLAIM."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xautoclaim(self.stream, self.group, self.consumer, 0, "0-0", count=self.count)
        pipe.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.count, block=block
        )
        claimed, fresh = await pipe.execute()
        rows: list[Row] = list(claimed[1])
        if fresh:
            rows += fresh[0][1]
        return rows


def ack_commands(stream: str, group: str, ids: list[bytes]) -> list[bytes]:
    """XACK and XDEL of ``ids``, packed, for the transaction that commits their effect."""
    if not ids:
        return []
    return [wire.command("XACK", stream, group, *ids), wire.command("XDEL", stream, *ids)]


async def ack(
    redis: Redis, stream: str, group: str, ids: list[bytes], forget: list[str] | None = None
) -> None:
    """XACK and XDEL of ``ids`` in one MULTI, after their effect is committed elsewhere;
    ``forget``: keys that effect made obsolete, unlinked in the same MULTI."""
    pipe = redis.pipeline(transaction=True)
    pipe.xack(stream, group, *ids)
    pipe.xdel(stream, *ids)
    if forget:
        pipe.unlink(*forget)
    await pipe.execute()
