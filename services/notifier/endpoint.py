"""One endpoint's delivery, pipelined: a reader follows the feed after the endpoint's
cursor into its :class:`~services.notifier.window.Window`; up to ``inflight`` senders POST
changes of distinct resources at once (per resource one at a time, in feed order, each
retried with backoff and jitter until a 2xx or the end of the retry window, which disables
the endpoint); a recorder writes the 2xx answers and the cursor past every change done so
far in ONE statement per group (group commit: the answers that came during a write go in
the next one), and renews the lease meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson

from services.notifier.window import Entry, State, Window
from shared.pg.feed import RECHECK_S, FeedChange, FeedStore, change_view
from shared.pg.webhooks import Attempt, Recorded, WebhookRow, WebhookStore
from shared.webhook_net import CheckedResolver, literal_refused
from shared.webhooks import active, check_url, message_id, retry_delay, signature, wanted

log = logging.getLogger("ingestd.notifier")
BATCH = 100
#: changes kept past the stored cursor at most: how far other resources go on while one
#: change is being retried (then the endpoint waits for it)
WINDOW = 1000
USER_AGENT = "ingestd-webhooks/1"


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_s: float
    retry_window_s: float
    retry_base_s: float
    lease_s: float
    allow_private: bool
    inflight: int = 16


class LeaseLost(Exception):
    """The endpoint is no longer this notifier's (lease taken, deleted or disabled)."""


class Endpoint:
    def __init__(
        self, row: WebhookRow, owner: str, store: WebhookStore, feed: FeedStore, limits: Limits,
        stop: asyncio.Event,
    ) -> None:  # fmt: skip
        self.row = row
        self.owner = owner
        self.store = store
        self.feed = feed
        self.limits = limits
        self.stop = stop
        self.window = Window(row.cursor, limits.inflight, WINDOW)
        self.read_pos = row.cursor
        # the changes a notifier before this one may have attempted are in the first WINDOW
        # after the stored cursor: their delivery rows say which are delivered already and
        # (if the endpoint was failing) how far their retries got
        self._resume_left = WINDOW
        self._resume_failing = row.failing_since
        self._renewed = time.monotonic()
        self._write = asyncio.Lock()  # one statement of this endpoint at a time
        self._wake = asyncio.Event()  # something to record
        self._room = asyncio.Event()  # the window moved on
        self._tasks: set[asyncio.Task[None]] = set()
        self._end: asyncio.Future[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=None if self.limits.allow_private else CheckedResolver(),
            limit=self.limits.inflight,
        )
        timeout = aiohttp.ClientTimeout(total=self.limits.timeout_s)
        self._end = asyncio.get_running_loop().create_future()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            self._http = http
            stopping = asyncio.ensure_future(self.stop.wait())
            try:
                self._spawn(self._reader())
                self._spawn(self._recorder())
                await asyncio.wait((self._end, stopping), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                await self._cancel_tasks()  # in-flight POSTs dropped: they go again
                await asyncio.shield(self._finish())
        error = self._end.exception() if self._end.done() else None
        if isinstance(error, LeaseLost):
            log.info("webhook %s: no longer delivered by this notifier", self.row.id)
        elif error is not None:
            raise error

    async def _finish(self) -> None:
        """Stopping: record what was answered (best effort), then let the endpoint go."""
        if self._end is not None and not self._end.done():
            with contextlib.suppress(Exception):
                async with self._write:
                    await self._record(renew=False)
        await self.store.release(self.row.id, self.owner)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._reaped)

    def _reaped(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self._end is not None and not self._end.done():
            self._end.set_exception(error)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    def _keep(self, row: WebhookRow | None) -> None:
        if row is None:
            raise LeaseLost
        self.row = row
        self._renewed = time.monotonic()

    def _pump(self) -> None:
        for e in self.window.startable():
            self._spawn(self._send(e))

    # ---- the reader ---------------------------------------------------------------------

    async def _reader(self) -> None:
        while True:
            self._room.clear()
            room = self.window.room()
            if room <= 0:  # a change being retried holds the cursor WINDOW changes back
                await self._room.wait()
                continue
            seen = self.feed.generation()
            items, pos = await self.feed.read_at(
                self.read_pos, min(BATCH, room), self.row.resource_types, None, raw_json=True
            )
            await self._add(items)
            self.window.settled(pos)
            self.read_pos = pos
            self._pump()
            self._wake.set()  # the cursor may move (skipped changes, the settled head)
            if not items:
                await self.feed.wait_for_changes(RECHECK_S, since=seen)

    async def _add(self, items: list[FeedChange]) -> None:
        w = self.row
        entries = []
        for c in items:
            if wanted(w.resource_types, w.events, c.resource_type, c.op):
                e = Entry(c.position, c, message_id(w.id, c.position), State.WAITING)
            else:
                e = Entry(c.position, c)
            entries.append(e)
        if self._resume_left > 0:
            self._resume_left -= len(items)
            await self._resume([e for e in entries if e.state is State.WAITING])
        for e in entries:
            self.window.add(e)

    async def _resume(self, entries: list[Entry]) -> None:
        """Changes a notifier before this one attempted: a delivered one is done (it is
        not sent again), a retried one goes on with its attempts and its retry window."""
        if not entries:
            return
        known: dict[str, Recorded] = await self.store.recorded(
            self.row.id, [e.msg_id for e in entries]
        )
        for e in entries:
            r = known.get(e.msg_id)
            if r is None:
                continue
            if r.status == "delivered":
                e.state = State.DONE
            elif r.status == "retrying" and self._resume_failing is not None:
                e.attempts, e.next_at = r.attempts, r.next_attempt_at
                e.first_failed = max(r.created_at, self._resume_failing)

    # ---- the senders --------------------------------------------------------------------

    async def _send(self, e: Entry) -> None:
        """Until the endpoint answers 2xx for ``e`` (or is disabled: LeaseLost)."""
        assert e.change is not None and self._http is not None
        body = orjson.dumps(change_view(e.change))
        while True:
            if e.next_at is not None:
                await asyncio.sleep(max(0.0, (e.next_at - datetime.now(UTC)).total_seconds()))
            e.attempts += 1
            a = await self._attempt(self._http, e.change, e.msg_id, body, e.attempts)
            if a.error is None:
                self.window.acknowledged(e, a)
                self._wake.set()
                return
            await self._failed(e, a)

    async def _failed(self, e: Entry, a: Attempt) -> None:
        assert e.change is not None
        now = datetime.now(UTC)
        since = e.first_failed = e.first_failed or now
        if (now - since).total_seconds() >= self.limits.retry_window_s:
            reason = (
                f"every delivery attempt failed for {self.limits.retry_window_s:g} s (since"
                f" {since.isoformat()}); last: {a.error}"
            )
            log.warning("webhook %s disabled: %s", self.row.id, reason)
            async with self._write:
                await self._record(renew=False)  # the answers so far first
                await self.store.disable(self.row.id, self.owner, e.change, e.msg_id, a, reason)
            raise LeaseLost
        delay = retry_delay(a.attempts, self.limits.retry_base_s, random.Random())
        e.next_at = now + timedelta(seconds=delay)
        async with self._write:
            self._keep(await self.store.failed(
                self.row.id, self.owner, self.limits.lease_s, e.change, e.msg_id, a, e.next_at
            ))  # fmt: skip

    # ---- the recorder -------------------------------------------------------------------

    async def _recorder(self) -> None:
        """Group commit of the 2xx answers and the cursor; the lease renewed at least
        every third of it."""
        every = self.limits.lease_s / 3
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), every)
            self._wake.clear()
            async with self._write:
                moved = await self._record(renew=time.monotonic() - self._renewed >= every)
            if moved:
                self._pump()
                self._room.set()

    async def _record(self, renew: bool) -> bool:
        """One statement: the answers not recorded yet and the cursor past every change
        done so far (or just the lease). Whether anything was recorded."""
        batch, pos = self.window.take()
        moved = bool(batch) or pos > self.window.stored
        if not moved and not renew:
            return False
        rows = [(e.change, e.msg_id, e.result) for e in batch if e.change and e.result]
        self._keep(await self.store.acknowledged(
            self.row.id, self.owner, self.limits.lease_s, pos, rows,
            self.window.failing_since(),
        ))  # fmt: skip
        self.window.recorded(batch, pos)
        return moved

    async def _attempt(
        self, http: aiohttp.ClientSession, c: FeedChange, msg_id: str, body: bytes, n: int
    ) -> Attempt:
        """One POST: the Standard Webhooks headers, no redirect followed, bounded by the
        session's timeout; ``error`` is None for a 2xx."""
        started = time.monotonic()
        status: int | None = None
        error: str | None
        try:
            target = check_url(self.row.url)
            bad = None if self.limits.allow_private else literal_refused(target)
            if bad is not None:
                raise OSError(f"{bad} is a private address (refused)")
            now = datetime.now(UTC)
            secrets_ = active(self.row.secrets, now)
            headers = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signature(secrets_, msg_id, now, body),
            }
            async with http.post(
                self.row.url, data=body, headers=headers, allow_redirects=False
            ) as r:
                status = r.status
                await r.content.read(1 << 16)  # a little of the answer, then let go
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except TimeoutError:
            error = f"no answer within {self.limits.timeout_s:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"[:500]
        latency = int((time.monotonic() - started) * 1000)
        return Attempt(n, status, error, latency)
