"""Group reads: concurrent requests for single rows share one PostgreSQL round trip.

The read-side twin of the appender's group commit. A request asks :meth:`GroupRead.get`
for one key; the keys of every request that arrives while a batch is being read are
read together in the next one (at most ``max_batch`` each, at most ``max_inflight``
batches in flight). Each answer is as fresh as a read of its own: its batch starts
after the request arrived, so a write committed before a request arrives is always
seen (read-your-writes holds, across gateways too: nothing is cached).

At low load a request is read alone at once (a batch of one); under load the round
trip, the pool's acquire/release and the statement's fixed costs are paid once per
batch instead of once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class GroupRead(Generic[K, V]):
    def __init__(
        self,
        fetch: Callable[[list[K]], Awaitable[list[V]]],
        *,
        max_batch: int = 256,
        max_inflight: int = 2,
    ) -> None:
        self._fetch = fetch
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: list[tuple[K, asyncio.Future[V]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: drains running: a drain leaves this count in the same step as it sees the queue
        #: empty (no await between), so a key queued after that always starts a new one.
        #: (``len(self._tasks)`` would not do: a finished task leaves the set only in a
        #: later loop iteration, and a key queued meanwhile would wait for ever.)
        self._running = 0
        #: how many keys were read, in how many batches (since start)
        self.keys = 0
        self.batches = 0

    async def get(self, key: K) -> V:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[V] = loop.create_future()
        self._queue.append((key, fut))
        if self._running < self._max_inflight:
            self._running += 1
            task = loop.create_task(self._drain(), name="group-read")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _drain(self) -> None:
        try:
            await self._drain_queue()
        finally:
            self._running -= 1

    async def _drain_queue(self) -> None:
        await asyncio.sleep(0)  # the requests that arrived in this loop iteration join
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self.keys += len(batch)
            self.batches += 1
            try:
                values = await self._fetch([k for k, _ in batch])
            except asyncio.CancelledError:
                _fail(batch, ConnectionAbortedError("the gateway is stopping; retry"))
                raise
            except Exception as e:  # each request fails as its own read would have
                _fail(batch, e)
                continue
            for (_, fut), value in zip(batch, values, strict=True):
                if not fut.done():  # its request may have been cancelled meanwhile
                    fut.set_result(value)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._running = 0  # a task cancelled before it ran never reached its finally
        _fail(self._queue, ConnectionAbortedError("the gateway is stopping; retry"))
        self._queue = []


def _fail(batch: list[tuple[K, asyncio.Future[V]]], error: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(error)
