"""Group commit of raw events to Redis.

Requests put their event on a queue and await a future; one task drains the
queue and sends everything queued so far in ONE pipeline (XADD + receipt
marker per event). While a pipeline is in flight, newly arriving events
accumulate for the next one, so under load many requests share one round
trip and with no load an event is sent at once (no timer, no added latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import streams
from shared.errors import ApiError

log = logging.getLogger("ingestd.gateway.appender")
MAX_BATCH = 512


@dataclass(slots=True)
class Pending:
    partition: int
    fields: dict[bytes, bytes]
    receipt_key: str
    receipt: bytes
    future: asyncio.Future[bytes]


class Appender:
    def __init__(self, redis: Redis, partitions: int, receipt_ttl: int) -> None:
        self._redis = redis
        self._ttl = receipt_ttl
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None
        self.backlog = [0] * partitions

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="appender")
        self._backlog_task = asyncio.create_task(self._watch_backlog(), name="backlog")

    async def stop(self) -> None:
        for t in (self._task, self._backlog_task):
            if t:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    def append(
        self, partition: int, fields: dict[bytes, bytes], receipt_key: str, receipt: bytes
    ) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.append(Pending(partition, fields, receipt_key, receipt, fut))
        self._wake.set()
        return fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._flush(batch)

    async def _flush(self, batch: list[Pending]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for p in batch:
            pipe.set(p.receipt_key, p.receipt, ex=self._ttl)
            pipe.xadd(streams.ingest_stream(p.partition), p.fields)  # type: ignore[arg-type]
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as e:
            log.warning("append failed: %s", e)
            err = ApiError(
                "unavailable",
                "cannot reach the event store; retry",
                status=503,
                headers={"Retry-After": "1"},
            )
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        for i, p in enumerate(batch):
            sid = results[2 * i + 1]
            if p.future.done():
                continue
            if isinstance(sid, Exception):
                p.future.set_exception(
                    ApiError(
                        "unavailable",
                        f"append failed: {sid}",
                        status=503,
                        headers={"Retry-After": "1"},
                    )
                )
            else:
                p.future.set_result(sid)

    async def _watch_backlog(self) -> None:
        while True:
            try:
                pipe = self._redis.pipeline(transaction=False)
                for p in range(len(self.backlog)):
                    pipe.xlen(streams.ingest_stream(p))
                self.backlog = [int(n) for n in await pipe.execute()]
            except Exception as e:  # transient; keep the last figures
                log.debug("backlog poll failed: %s", e)
            await asyncio.sleep(0.25)
