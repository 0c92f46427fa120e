"""Group commit of raw events to Redis.

Requests put their event on a queue and await a future; one task drains the
queue and sends everything queued so far as ONE pipelined write (XADD + receipt
marker per event). While a batch is in flight, newly arriving events
accumulate for the next one, so under load many requests share one round
trip and with no load an event is sent at once.

Under live traffic that is one round trip per one or two events, each costing Redis a
wakeup, a read and an AOF write. So when events arrive faster than one per
``linger_ms`` (an average of the gaps between appends) and fewer than half of the
open connections wait on an append (the others' clients may send without waiting for an
answer), the appender holds a small batch up to ``linger_ms`` from its first event
for more to join (Kafka's ``linger.ms``). It sends at once when half of the open
connections have an event waiting here: a closed-loop client's connections each wait for
an answer before sending again, so holding them would only idle the gateway.

A future resolves with the stream id only after Redis has answered that
event's XADD; on any error the event's request fails (503) and nothing is
acknowledged that Redis did not confirm.

Every event is answered within ``timeout_ms`` of being queued: a batch is sent
with the deadline of its oldest event, and an event whose deadline passed while
it waited is failed without being sent. A batch that times out after it was
sent has an unknown outcome (Redis may have stored it): its requests get 503
too, and the producer's retry may store the event a second time, so delivery is
at least once from the producer's side. A held connection that Redis closed
while the gateway was idle (a restart) is replaced before sending, not failed.

An event sent with an Idempotency-Key carries its claim (the key's entry and value):
it is appended by one EVAL of :data:`shared.redis.idempotency.APPEND` instead, which
stores the entry, the receipt marker and the XADD together, or, when another request
holds the key, appends nothing and resolves the future with :class:`Found` (its entry).

In strict durability mode (:mod:`shared.redis.durable`) the held connection is checked
when it opens, and on a server with WAITAOF the batch ends with ONE ``WAITAOF`` in the
same round trip: no event of the batch is answered before the server says its AOF
holds them all on disk (a batch it does not confirm in time fails with 503, like an
unanswered one). On an older server the connection is only accepted when that server
fsyncs every write before it replies.

The batch is packed by hiredis (:mod:`shared.redis.wire`) and written on a
connection this appender keeps to itself (:class:`shared.redis.conn.HeldConnection`):
per event that costs two C calls instead of two trips through redis-py's command
layer, which is what dominated the gateway's CPU profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError

from shared import tasks
from shared.codes import Code
from shared.errors import ApiError
from shared.redis import idempotency, wire
from shared.redis import keyspace as ks
from shared.redis.conn import HeldConnection
from shared.redis.durable import Guard, NotDurable

log = logging.getLogger("ingestd.gateway.appender")
MAX_BATCH = 512
#: a batch this large is sent without lingering
LINGER_BELOW = 64
#: a batch is sent at once when 1/WAITING_SHARE of the open connections have an event
#: waiting here: the clients seem to wait for their answers (closed loop), and the
#: others' next requests are in transit or being read
WAITING_SHARE = 2
#: weight of the newest gap between appends in their running average
GAP_WEIGHT = 0.2


class Connections:
    """The gateway's open client connections (counted by its HTTP server): the senders
    that could add to a lingering batch."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = 0


@dataclass(frozen=True, slots=True)
class Found:
    """A keyed event not appended: another request holds its Idempotency-Key (the entry)."""

    entry: bytes


@dataclass(slots=True)
class Pending:
    partition: int
    fields: dict[bytes, bytes]
    receipt_key: str
    receipt: bytes
    future: asyncio.Future[bytes | Found]
    deadline: float  # loop time by which the request is answered
    claim: tuple[str, bytes] | None = None  # Idempotency-Key entry: key, value

    @property
    def replies(self) -> int:
        return 1 if self.claim is not None else 2


def _unavailable(message: str) -> ApiError:
    return ApiError(Code.UNAVAILABLE, message, status=503, headers={"Retry-After": "1"})


def _closed_by_server(conn: AbstractConnection) -> bool:
    """Redis closed this connection (a restart) and nothing was sent on it since: the
    event loop has already read its EOF, so a new connection loses nothing."""
    reader = conn._reader
    return reader is not None and reader.at_eof()


class Appender:
    """``redis`` serves the backlog poll; ``appends`` (default: ``redis``) is the client
    whose connection the appender holds: give it no ``socket_timeout``, since the
    batch deadline bounds the whole exchange and a per-reply timer would cost two
    timers per event."""

    def __init__(
        self,
        redis: Redis,
        partitions: int,
        receipt_ttl: int,
        *,
        timeout_ms: int = 2000,
        appends: Redis | None = None,
        guard: Guard | None = None,
        linger_ms: float = 0.0,
        connections: Connections | None = None,
    ) -> None:
        self._redis = redis
        self._linger = linger_ms / 1000 if connections is not None else 0.0
        self._connections = connections or Connections()
        self._lingering = False
        self._sending = 0  # events of the batch in flight
        self._last_append = 0.0
        self._gap = 1.0  # running average of the gaps between appends, s (each capped at 1)
        self.lingered = 0  # batches held for more events (counters for tests and ops)
        self.flushes = 0  # batches sent
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None
        self._conn = HeldConnection(appends or redis)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._receipt_ttl = receipt_ttl
        self._timeout = timeout_ms / 1000
        self._guard = guard  # strict durability: give ``appends`` its client_kwargs()
        self._streams = [ks.ingest_stream(p) for p in range(partitions)]
        self._changes = [ks.changes_stream(p) for p in range(partitions)]
        #: per partition: raw events not yet processed + change entries not yet in
        #: PostgreSQL (what the gateway's 429 limit applies to), and the two parts
        self.backlog = [0] * partitions
        self.ingest_backlog = [0] * partitions
        self.changes_backlog = [0] * partitions

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="appender")
        self._backlog_task = asyncio.create_task(self._watch_backlog(), name="backlog")

    async def stop(self) -> None:
        for t in (self._task, self._backlog_task):
            await tasks.stop(t, log)
        await self._conn.drop()

    def append(
        self, partition: int, fields: dict[bytes, bytes], receipt_key: str, receipt: bytes,
        claim: tuple[str, bytes] | None = None,
    ) -> asyncio.Future[bytes | Found]:  # fmt: skip
        """Queue one event; the future resolves with its stream id (or, for an event with
        a ``claim`` whose key another request holds, with :class:`Found`)."""
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[bytes | Found] = loop.create_future()
        now = loop.time()
        deadline = now + self._timeout
        self._queue.append(Pending(partition, fields, receipt_key, receipt, fut, deadline, claim))
        if self._linger:
            self._gap += GAP_WEIGHT * (min(now - self._last_append, 1.0) - self._gap)
            self._last_append = now
        if not self._lingering or not self._may_grow():
            self._wake.set()
        return fut

    def _may_grow(self) -> bool:
        """More events may join a small batch soon: they have been arriving faster than
        one per linger, and fewer than half of the open connections are waiting on an
        append (a closed-loop client's would soon all wait, idle until answered)."""
        senders = self._connections.open
        return (
            len(self._queue) < LINGER_BELOW
            and self._gap < self._linger
            and (len(self._queue) + self._sending) * WAITING_SHARE < senders
        )

    async def _run(self) -> None:
        try:
            await self._drain()
        except asyncio.CancelledError:  # stopping: what waits here will not be sent
            self._fail(self._queue, _unavailable("the gateway is stopping; retry"))
            raise

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._linger and self._queue and self._may_grow():
                await self._hold()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                self._sending = len(batch)
                try:
                    await self._flush(batch)
                finally:
                    self._sending = 0

    async def _hold(self) -> None:
        """Wait ``linger_ms`` (the hold starts as the first queued event wakes the task), or
        until an append finds the batch should go (:meth:`_may_grow` false)."""
        assert self._loop is not None
        self.lingered += 1
        self._lingering = True
        timer = self._loop.call_at(self._loop.time() + self._linger, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()
            self._lingering = False
            self._wake.clear()

    def _encode(self, batch: list[Pending]) -> bytes:
        out: list[bytes] = []
        add = out.append
        ttl, names = self._receipt_ttl, self._streams
        for p in batch:
            if p.claim is not None:
                keys = (p.claim[0], p.receipt_key, names[p.partition])
                args: tuple[wire.Arg, ...] = (p.claim[1], ttl, p.receipt, ttl, *_flat(p.fields))
                add(wire.command("EVAL", idempotency.APPEND, 3, *keys, *args))
                continue
            add(wire.command("SET", p.receipt_key, p.receipt, "EX", ttl))
            add(wire.command("XADD", names[p.partition], "*", *_flat(p.fields)))
        return b"".join(out)

    async def _flush(self, batch: list[Pending]) -> None:
        batch = self._drop_expired(batch)
        if not batch:
            return
        payload = self._encode(batch)
        self.flushes += 1
        results: list[bytes | Exception] = []
        sent = False
        try:
            async with asyncio.timeout_at(batch[0].deadline):
                conn = await self._conn.get()
                if _closed_by_server(conn):
                    await self._conn.drop()
                    conn = await self._conn.get()
                confirm = self._guard is not None and self._guard.waitaof(conn)
                if confirm:
                    payload += self._waitaof(batch[0].deadline)
                sent = True
                await conn.send_packed_command(payload, check_health=False)
                for _ in range(sum(p.replies for p in batch) + confirm):
                    try:
                        results.append(await conn.read_response(disable_decoding=True))
                    except ResponseError as e:  # a command's error reply; the stream stays in step
                        results.append(e)
            if confirm:
                assert self._guard is not None
                self._guard.check(results.pop())
        except NotDurable as e:  # refused at connect, or not confirmed: replies in step
            self._fail(batch, self._failure(e, sent))
            return
        except (TimeoutError, RedisError, OSError) as e:
            await self._reset()
            self._fail(batch, self._failure(e, sent))
            return
        except asyncio.CancelledError:
            await self._reset()
            self._fail(batch, _unavailable("the gateway is stopping; retry"))
            raise
        at = 0
        for p in batch:
            at += p.replies
            sid = results[at - 1]
            if p.future.done():
                continue
            if isinstance(sid, Exception):
                p.future.set_exception(_unavailable(f"append failed: {sid}"))
            elif p.claim is None:
                p.future.set_result(sid)
            else:
                won, value = idempotency.claim_reply(sid)  # type: ignore[arg-type]
                p.future.set_result(value if won else Found(value))

    def _waitaof(self, deadline: float) -> bytes:
        """WAITAOF with what is left of the batch's deadline, less a margin for the server's
        timer (blocked clients time out on its 100 ms cron): its "not confirmed" reply
        arrives before the deadline."""
        assert self._guard is not None and self._loop is not None
        left = (deadline - self._loop.time()) * 1000
        return self._guard.command(max(1.0, left - max(150.0, left / 10)))

    async def _reset(self) -> None:
        """Drop the held connection (its replies may be out of step) and the pool's idle
        ones: a connect cut short by the deadline goes back to the pool with its
        handshake (SELECT, AUTH) possibly unanswered, whose late reply would be read
        as the next batch's."""
        await self._conn.drop()
        with contextlib.suppress(Exception):
            await self._conn.redis.connection_pool.disconnect(inuse_connections=False)

    def _drop_expired(self, batch: list[Pending]) -> list[Pending]:
        """Fail (unsent, so certainly not stored) the events whose deadline passed while
        they waited for an earlier batch; the queue is in arrival order."""
        assert self._loop is not None
        now = self._loop.time()
        if batch[0].deadline > now:
            return batch
        live = [p for p in batch if p.deadline > now]
        log.warning("append: %d event(s) waited past their deadline", len(batch) - len(live))
        self._fail(
            [p for p in batch if p.deadline <= now],
            _unavailable(
                f"the event store did not answer within {self._timeout * 1000:.0f} ms; "
                "nothing was stored: retry"
            ),
        )
        return live

    def _failure(self, e: BaseException, sent: bool) -> ApiError:
        what = (
            f"no answer within {self._timeout * 1000:.0f} ms"
            if isinstance(e, TimeoutError)
            else str(e) or type(e).__name__
        )
        log.warning("append failed (%s): %s", "after sending" if sent else "before sending", what)
        if sent:
            return _unavailable(
                f"the event store did not confirm the event ({what}); it may or may not "
                "have been stored: retry (a retry may store it twice)"
            )
        return _unavailable(f"cannot reach the event store ({what}); retry")

    @staticmethod
    def _fail(batch: list[Pending], err: ApiError) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(err)

    async def _watch_backlog(self) -> None:
        while True:
            try:
                await self.poll_backlog()
            except Exception as e:  # transient; keep the last figures
                tasks.reraise_if_cancelled()
                log.debug("backlog poll failed: %s", e)
            await asyncio.sleep(0.25)

    async def poll_backlog(self) -> None:
        """XLEN of every partition's ingest and changes stream, one pipelined round trip:
        a change entry leaves its stream only once PostgreSQL holds its effect, so a
        PostgreSQL outage fills ``changes:{p}`` while ``ingest:{p}`` stays short."""
        pipe = self._redis.pipeline(transaction=False)
        for name in (*self._streams, *self._changes):
            pipe.xlen(name)
        counts = [int(n) for n in await pipe.execute()]
        n = len(self._streams)
        self.ingest_backlog, self.changes_backlog = counts[:n], counts[n:]
        self.backlog = [a + b for a, b in zip(counts[:n], counts[n:], strict=True)]


def _flat(fields: dict[bytes, bytes]) -> list[bytes]:
    return [x for kv in fields.items() for x in kv]
