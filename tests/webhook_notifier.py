"""Webhook tests' helpers: an in-process notifier (the stage's own Notifier loop), the
pipeline applying in the background, and an endpoint made through the admin API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from services.notifier.main import Notifier, limits_of
from shared.config import Settings
from shared.pg.feed import ChangeSignal, FeedStore
from shared.pg.webhooks import WebhookStore
from shared.secrets import SecretBox
from tests.conftest import ADMIN

W = "/admin/v1/webhooks"


@contextlib.asynccontextmanager
async def notifier(s: Settings, pool: asyncpg.Pool) -> AsyncIterator[Notifier]:
    assert s.database_url and s.secret_key
    signal = ChangeSignal(s.database_url)
    await signal.start()
    n = Notifier(WebhookStore(pool, SecretBox(s.secret_key)), FeedStore(pool, signal), limits_of(s))
    stop = asyncio.Event()
    task = asyncio.create_task(n.serve(stop))
    try:
        yield n
    finally:
        stop.set()
        await task
        await signal.stop()


async def hook(c: Any, url: str, **extra: Any) -> dict[str, Any]:
    r = await c.post(W, json={"url": url, **extra}, headers=ADMIN)
    assert r.status == 201, await r.text()
    return dict(await r.json())
