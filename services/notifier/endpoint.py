"""One endpoint's delivery loop: read the feed after its cursor, POST each change it
wants, move the cursor after each 2xx; on a failure retry the same change (backoff with
jitter) until it succeeds or the retry window ends (then the endpoint is disabled)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson

from shared.feed import Position
from shared.pg.feed import RECHECK_S, FeedChange, FeedStore, change_view
from shared.pg.webhooks import Attempt, WebhookRow, WebhookStore
from shared.webhook_net import CheckedResolver, literal_refused
from shared.webhooks import active, check_url, message_id, retry_delay, signature, wanted

log = logging.getLogger("ingestd.notifier")
BATCH = 100
USER_AGENT = "ingestd-webhooks/1"


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_s: float
    retry_window_s: float
    retry_base_s: float
    lease_s: float
    allow_private: bool


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
        self.cursor: Position = row.cursor
        self._renewed = time.monotonic()

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=None if self.limits.allow_private else CheckedResolver(), limit=4
        )
        timeout = aiohttp.ClientTimeout(total=self.limits.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            try:
                while not self.stop.is_set():
                    await self._round(http)
            except LeaseLost:
                log.info("webhook %s: no longer delivered by this notifier", self.row.id)
            finally:
                await asyncio.shield(self.store.release(self.row.id, self.owner))

    async def _round(self, http: aiohttp.ClientSession) -> None:
        seen = self.feed.generation()
        w = self.row
        items, pos = await self.feed.read_at(
            self.cursor, BATCH, w.resource_types, None, raw_json=True
        )
        for c in items:
            if wanted(self.row.resource_types, self.row.events, c.resource_type, c.op):
                await self._deliver(http, c)
            self.cursor = c.position
        if pos > self.cursor or time.monotonic() - self._renewed > self.limits.lease_s / 3:
            # a skipped change, the feed's settled head or just the lease: one statement
            self._keep(await self.store.advance(w.id, self.owner, self.limits.lease_s, pos))
            self.cursor = max(self.cursor, pos)
        if not items:
            await self._wait(seen)

    def _keep(self, row: WebhookRow | None) -> None:
        if row is None:
            raise LeaseLost
        self.row = row
        self._renewed = time.monotonic()

    async def _wait(self, seen: int) -> None:
        waiting = asyncio.ensure_future(self.feed.wait_for_changes(RECHECK_S, since=seen))
        stopping = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait((waiting, stopping), return_when=asyncio.FIRST_COMPLETED)
        for f in (waiting, stopping):
            f.cancel()

    async def _deliver(self, http: aiohttp.ClientSession, c: FeedChange) -> None:
        """Until the endpoint answers 2xx for ``c`` (or is disabled: LeaseLost)."""
        msg_id = message_id(self.row.id, c.position)
        body = orjson.dumps(change_view(c))
        attempts, next_at = 0, None
        if self.row.failing_since is not None:  # stuck on this change before a restart
            attempts, next_at = await self.store.attempts_of(self.row.id, msg_id)
        while True:
            if next_at is not None:
                await self._sleep_until(next_at)
            attempts += 1
            a = await self._attempt(http, c, msg_id, body, attempts)
            if a.error is None:
                self._keep(await self.store.delivered(
                    self.row.id, self.owner, self.limits.lease_s, c, msg_id, a
                ))  # fmt: skip
                return
            next_at = await self._failed(c, msg_id, a)

    async def _failed(self, c: FeedChange, msg_id: str, a: Attempt) -> datetime:
        now = datetime.now(UTC)
        since = self.row.failing_since or now
        if (now - since).total_seconds() >= self.limits.retry_window_s:
            reason = (
                f"every delivery attempt failed for {self.limits.retry_window_s:g} s (since"
                f" {since.isoformat()}); last: {a.error}"
            )
            log.warning("webhook %s disabled: %s", self.row.id, reason)
            await self.store.disable(self.row.id, self.owner, c, msg_id, a, reason)
            raise LeaseLost
        delay = retry_delay(a.attempts, self.limits.retry_base_s, random.Random())
        next_at = now + timedelta(seconds=delay)
        self._keep(await self.store.failed(
            self.row.id, self.owner, self.limits.lease_s, c, msg_id, a, next_at
        ))  # fmt: skip
        return next_at

    async def _sleep_until(self, at: datetime) -> None:
        """Until ``at``, renewing the lease meanwhile; LeaseLost when stopping."""
        while True:
            left = (at - datetime.now(UTC)).total_seconds()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(self.stop.wait(), min(left, self.limits.lease_s / 3))
                raise LeaseLost  # stopping: the next notifier retries from the cursor
            except TimeoutError:
                pass
            self._keep(await self.store.renew(self.row.id, self.owner, self.limits.lease_s))

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
