"""The notifier stage's lifecycle: claim endpoints nobody delivers to, run one task per
endpoint (:class:`services.notifier.endpoint.Endpoint`), stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import signal
import socket
import time

import asyncpg

from services.notifier.endpoint import Endpoint, Limits
from shared import tasks
from shared.config import Settings
from shared.errors import ConfigError
from shared.outage import UNREACHABLE, Outages
from shared.pg.feed import ChangeSignal, FeedStore
from shared.pg.migrate import require_migrated
from shared.pg.pool import pool_when_reachable
from shared.pg.webhooks import WebhookStore
from shared.secrets import SecretBox

log = logging.getLogger("ingestd.notifier")
CLAIM_EVERY_S = 1.0
PURGE_EVERY_S = 600.0
#: how long endpoints have on a stop to record the answers they got, before they are cancelled
STOP_GRACE_S = 2.0


def limits_of(settings: Settings) -> Limits:
    return Limits(
        timeout_s=settings.webhook_timeout_ms / 1000,
        retry_window_s=float(settings.webhook_retry_window_s),
        retry_base_s=settings.webhook_retry_base_ms / 1000,
        lease_s=float(settings.webhook_lease_s),
        allow_private=settings.webhook_allow_private,
        inflight=settings.webhook_inflight,
    )


class Notifier:
    def __init__(self, store: WebhookStore, feed: FeedStore, limits: Limits) -> None:
        self.store = store
        self.feed = feed
        self.limits = limits
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.running: dict[str, asyncio.Task[None]] = {}
        self.outages = Outages(log)
        self._purged = -PURGE_EVERY_S  # the first turn purges

    async def claim(self, stop: asyncio.Event) -> None:
        for row in await self.store.claim(self.owner, self.limits.lease_s):
            if row.id in self.running:  # our own lease had run out: the task renews it
                continue
            ep = Endpoint(row, self.owner, self.store, self.feed, self.limits, stop)
            task = asyncio.create_task(self._guarded(ep))
            self.running[row.id] = task
            task.add_done_callback(functools.partial(self._done, row.id))

    def _done(self, webhook_id: str, _task: asyncio.Task[None]) -> None:
        self.running.pop(webhook_id, None)

    async def _guarded(self, ep: Endpoint) -> None:
        """An endpoint's task; PostgreSQL gone away ends it (its lease runs out and this
        or another notifier claims the endpoint again)."""
        try:
            await ep.run()
        except UNREACHABLE as e:
            log.warning("webhook %s: PostgreSQL unreachable (%s); will claim again", ep.row.id, e)
        except Exception:
            log.exception("webhook %s: unexpected error; will claim again", ep.row.id)

    async def purge(self, retention_days: int) -> None:
        """At most every :data:`PURGE_EVERY_S`: finished deliveries past their retention
        leave ``webhook_deliveries`` (one notifier doing it twice deletes nothing more)."""
        now = time.monotonic()
        if retention_days <= 0 or now - self._purged < PURGE_EVERY_S:
            return
        self._purged = now
        n = await self.store.purge_deliveries(retention_days)
        if n:
            log.info("purged %s webhook deliveries older than %s days", n, retention_days)

    async def serve(self, stop: asyncio.Event, retention_days: int = 0) -> None:
        while not stop.is_set():
            try:
                await self.claim(stop)
                await self.purge(retention_days)
                self.outages.all_answered()
            except UNREACHABLE as e:
                self.outages.failed(e)
            except asyncpg.PostgresError as e:
                log.warning("notifier: %s; retrying", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CLAIM_EVERY_S)
        await self.stop_tasks()

    async def stop_tasks(self) -> None:
        """Endpoints see the stop too: they drop their in-flight deliveries (their cursor
        has not moved past them, so they go again) and record the answers they got."""
        running = list(self.running.values())
        if running:
            await asyncio.wait(running, timeout=STOP_GRACE_S)
        await tasks.stop_all(running, log)


async def serve(settings: Settings) -> None:
    dsn, _ = settings.require_servers()
    if not settings.secret_key:
        raise ConfigError("INGESTD_SECRET_KEY must be set for the notifier (see README)")
    pool = await pool_when_reachable(dsn, 10, log)
    await require_migrated(pool)
    change_signal = ChangeSignal(dsn)
    await change_signal.start()
    store = WebhookStore(pool, SecretBox(settings.secret_key))
    notifier = Notifier(store, FeedStore(pool, change_signal), limits_of(settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("notifier %s delivering webhooks", notifier.owner)
    try:
        await notifier.serve(stop, settings.webhook_delivery_retention_days)
    finally:
        await change_signal.stop()
        await pool.close()
