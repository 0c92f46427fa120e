"""The consumer-group read loop that worker and projector share.

A consumer that holds a partition's lease reads its stream through a consumer
group: first the entries still pending for the group (delivered to a consumer
that died, claimed by this one, in stream order), then new ones. Entries leave
the stream only when their effect is committed downstream (:func:`ack_commands`
inside the committing transaction, or :func:`ack` after a PostgreSQL commit).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

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


async def claim_pending(redis: Redis, stream: str, group: str, consumer: str) -> None:
    """Move every pending entry of the group to ``consumer`` (the caller holds the lease),
    so entries delivered to a consumer that died are re-read, in stream order."""
    start: str | bytes = "0-0"
    while True:
        res = await redis.xautoclaim(stream, group, consumer, 0, start, count=1000)
        start = res[0]
        if start in (b"0-0", "0-0"):
            return


class GroupReader:
    """Batches of one partition's stream for the holder of ``lease``."""

    def __init__(
        self, redis: Redis, stream: str, group: str, consumer: str, lease: Lease, count: int
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.lease = lease
        self.count = count

    async def batches(
        self, *, until: float | None = None, idle_exit: bool = False
    ) -> AsyncIterator[list[Row]]:
        """Yield batches until the monotonic time ``until`` (or, with ``idle_exit``, until
        nothing new is left). The lease is refreshed after each batch is handled and
        :class:`~shared.redis.lease.LostLease` raised when it is gone."""
        await ensure_group(self.redis, self.stream, self.group)
        await claim_pending(self.redis, self.stream, self.group, self.consumer)
        read_id = "0"  # own pending entries first, then new ones
        while until is None or time.monotonic() < until:
            resp: Any = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: read_id},
                count=self.count,
                block=None if read_id == "0" or idle_exit else 1000,
            )
            rows: list[Row] = resp[0][1] if resp else []
            if not rows and read_id == ">" and idle_exit:
                return
            if not rows and read_id == "0":
                read_id = ">"
            if rows:
                yield rows
            await self.lease.keep()


def ack_commands(stream: str, group: str, ids: list[bytes]) -> list[bytes]:
    """XACK and XDEL of ``ids``, packed, for the transaction that commits their effect."""
    if not ids:
        return []
    return [wire.command("XACK", stream, group, *ids), wire.command("XDEL", stream, *ids)]


async def ack(redis: Redis, stream: str, group: str, ids: list[bytes]) -> None:
    """XACK and XDEL of ``ids`` in one MULTI, after their effect is committed elsewhere."""
    pipe = redis.pipeline(transaction=True)
    pipe.xack(stream, group, *ids)
    pipe.xdel(stream, *ids)
    await pipe.execute()
