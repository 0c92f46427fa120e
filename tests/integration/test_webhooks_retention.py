"""Finished webhook deliveries leave ``webhook_deliveries`` after
INGESTD_WEBHOOK_DELIVERY_RETENTION_DAYS; one still being retried never does."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from services.notifier.main import Notifier
from shared.pg.webhooks import WebhookStore
from shared.secrets import SecretBox
from tests.conftest import SECRET_KEY
from tests.integration.test_webhooks_api import GOOD, _create

ROW_SQL = """
INSERT INTO webhook_deliveries (webhook_id, message_id, change_cursor, resource_type,
                                resource_id, version, op, status, attempts, updated_at)
VALUES ($1, $2, 'c', 't', 'r', 1, 'created', $3, 1, now() - make_interval(days => $4))
"""


async def test_old_finished_deliveries_are_purged_and_retries_kept(
    client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    hook = await _create(client, GOOD)
    rows = [
        ("old-delivered", "delivered", 8),
        ("old-failed", "failed", 30),
        ("old-retrying", "retrying", 30),
        ("new-delivered", "delivered", 1),
    ]
    for mid, status, days in rows:
        await pool.execute(ROW_SQL, hook["id"], mid, status, days)
    store = WebhookStore(pool, SecretBox(SECRET_KEY))
    assert await store.purge_deliveries(7, batch=1) == 2  # batches of one: each in turn
    left = await pool.fetch("SELECT message_id FROM webhook_deliveries ORDER BY message_id")
    assert [r["message_id"] for r in left] == ["new-delivered", "old-retrying"]
    notifier = Notifier(store, None, None)  # type: ignore[arg-type]
    await notifier.purge(0)  # 0: kept for ever
    await notifier.purge(1)
    assert [r["message_id"] for r in await pool.fetch(
        "SELECT message_id FROM webhook_deliveries ORDER BY message_id"
    )] == ["old-retrying"]  # fmt: skip
    await pool.execute(ROW_SQL, hook["id"], "later", "delivered", 30)
    await notifier.purge(1)  # within PURGE_EVERY_S of the last turn: nothing yet
    assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries") == 2
