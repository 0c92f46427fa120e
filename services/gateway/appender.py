"""Group commit of raw events to Redis.

Requests put their event on a queue and await a future; one task drains the
queue and sends everything queued so far as ONE pipelined write (XADD + receipt
marker per event). While a batch is in flight, newly arriving events
accumulate for the next one, so under load many requests share one round
trip and with no load an event is sent at once (no timer, no added latency).

A future resolves with the stream id only after Redis has answered that
event's XADD; on any error the event's request fails (503) and nothing is
acknowledged that Redis did not confirm.

The batch is encoded straight into the Redis protocol and written on a
connection this appender keeps to itself (taken from the client's pool, so
URL, auth, TLS and database selection stay the client's): per event that costs
a few byte joins instead of two trips through redis-py's command layer, which
is what dominated the gateway's CPU profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import resp, streams
from shared.codes import Code
from shared.errors import ApiError
from shared.streamio import HeldConnection

log = logging.getLogger("ingestd.gateway.appender")
MAX_BATCH = 512
# redis-py < 5.3 requires a command name here; 5.3 deprecates passing one


@dataclass(slots=True)
class Pending:
    partition: int
    fields: dict[bytes, bytes]
    receipt_key: str
    receipt: bytes
    future: asyncio.Future[bytes]


def _unavailable(message: str) -> ApiError:
    return ApiError(Code.UNAVAILABLE, message, status=503, headers={"Retry-After": "1"})


class Appender:
    def __init__(self, redis: Redis, partitions: int, receipt_ttl: int) -> None:
        self._redis = redis
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None
        self._conn = HeldConnection(redis)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._set_tail = b"$2\r\nEX\r\n" + resp.bulk(str(receipt_ttl).encode())
        self._xadd_head = [
            b"$4\r\nXADD\r\n" + resp.bulk(streams.ingest_stream(p).encode()) + b"$1\r\n*\r\n"
            for p in range(partitions)
        ]
        self.backlog = [0] * partitions

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="appender")
        self._backlog_task = asyncio.create_task(self._watch_backlog(), name="backlog")

    async def stop(self) -> None:
        for t in (self._task, self._backlog_task):
            if t:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        await self._conn.drop()

    def append(
        self, partition: int, fields: dict[bytes, bytes], receipt_key: str, receipt: bytes
    ) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = (self._loop or asyncio.get_running_loop()).create_future()
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

    def _encode(self, batch: list[Pending]) -> bytes:
        out: list[bytes] = []
        add = out.append
        set_tail, xadd_head = self._set_tail, self._xadd_head
        for p in batch:
            key, receipt = p.receipt_key.encode(), p.receipt
            add(
                b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n%b*%d\r\n%b"
                % (
                    len(key),
                    key,
                    len(receipt),
                    receipt,
                    set_tail,
                    3 + 2 * len(p.fields),
                    xadd_head[p.partition],
                )
            )
            for k, v in p.fields.items():
                add(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(k), k, len(v), v))
        return b"".join(out)

    async def _flush(self, batch: list[Pending]) -> None:
        payload = self._encode(batch)
        results: list[bytes | Exception] = []
        try:
            conn = await self._conn.get()
            await conn.send_packed_command(payload, check_health=False)
            for _ in range(2 * len(batch)):
                try:
                    results.append(await conn.read_response(disable_decoding=True))
                except ResponseError as e:  # a command's error reply; the stream stays in step
                    results.append(e)
        except (TimeoutError, RedisError, OSError) as e:
            log.warning("append failed: %s", e)
            await self._conn.drop()
            self._fail(batch, _unavailable("cannot reach the event store; retry"))
            return
        except asyncio.CancelledError:
            await self._conn.drop()
            self._fail(batch, _unavailable("the gateway is stopping; retry"))
            raise
        for i, p in enumerate(batch):
            sid = results[2 * i + 1]
            if p.future.done():
                continue
            if isinstance(sid, Exception):
                p.future.set_exception(_unavailable(f"append failed: {sid}"))
            else:
                p.future.set_result(sid)

    @staticmethod
    def _fail(batch: list[Pending], err: ApiError) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(err)

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
