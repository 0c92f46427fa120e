"""Webhook endpoints, their deliveries and the notifier's position per endpoint: every
statement on ``webhooks`` and ``webhook_deliveries`` (migration 0012).

Signing secrets are sealed with the :class:`~shared.secrets.SecretBox` before they reach
PostgreSQL and opened on the way out (``WebhookRow.secrets``, left out of its ``repr``).

The notifier's writes (:meth:`WebhookStore.acknowledged`, :meth:`~WebhookStore.failed`,
:meth:`~WebhookStore.disable`) are each ONE statement,
conditional on the caller holding the endpoint's lease (``lease_owner``), and each renews
it and answers the endpoint as it is now (None: the lease is gone, or the endpoint was
deleted or disabled): a notifier that lost an endpoint learns it at its next write and
stops, and its position never moves under another notifier's feet. A group of 2xx
answers is recorded in one statement with the endpoint's cursor, which moves only past
changes that are all done (see services/notifier/window.py). ``failing_since`` is the
earliest first failed attempt of a change the endpoint is still retrying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from shared import feed
from shared.codes import Code
from shared.errors import NotFoundError
from shared.feed import Position
from shared.pg.feed import HEAD_SQL, FeedChange
from shared.pg.pool import Db, connection
from shared.secrets import SecretBox
from shared.webhooks import ROTATION_OVERLAP_S, SigningSecret, new_secret


@dataclass(frozen=True, slots=True)
class WebhookRow:
    id: str
    url: str
    resource_types: list[str] | None
    events: list[str] | None
    description: str | None
    secrets: list[SigningSecret] = field(repr=False)
    cursor: Position
    failing_since: datetime | None
    disabled_at: datetime | None
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    message_id: str
    change_cursor: str
    resource_type: str
    resource_id: str
    version: int
    op: str
    status: str
    attempts: int
    response_status: int | None
    error: str | None
    latency_ms: int | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one delivery attempt came to."""

    attempts: int
    response_status: int | None
    error: str | None
    latency_ms: int


@dataclass(frozen=True, slots=True)
class Recorded:
    """A change's delivery row as a notifier resuming an endpoint reads it."""

    status: str
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime


def _uuid(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise NotFoundError(Code.WEBHOOK_NOT_FOUND, f"no webhook {value!r}") from None


INSERT_SQL = """
INSERT INTO webhooks (url, resource_types, events, description, secrets, cursor_txid, cursor_id)
VALUES ($1, $2, $3, $4, $5, $6::xid8, $7) RETURNING *
"""
GET_SQL = "SELECT * FROM webhooks WHERE id = $1"
LIST_SQL = "SELECT * FROM webhooks ORDER BY created_at, id"
UPDATE_SQL = """
UPDATE webhooks SET url = $2, resource_types = $3, events = $4, description = $5,
    disabled_at = CASE WHEN $6 THEN NULL ELSE disabled_at END,
    disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END,
    failing_since = CASE WHEN $6 THEN NULL ELSE failing_since END,
    updated_at = now()
WHERE id = $1 RETURNING *
"""
SECRETS_SQL = "SELECT secrets FROM webhooks WHERE id = $1 FOR UPDATE"
SET_SECRETS_SQL = "UPDATE webhooks SET secrets = $2, updated_at = now() WHERE id = $1 RETURNING *"
DELETE_SQL = "DELETE FROM webhooks WHERE id = $1"
DELIVERIES_SQL = """
SELECT * FROM webhook_deliveries WHERE webhook_id = $1 AND id < $2
ORDER BY id DESC LIMIT $3
"""
#: endpoints nobody delivers to now (never leased, lease expired or released)
CLAIM_SQL = """
UPDATE webhooks SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
WHERE disabled_at IS NULL AND (lease_owner IS NULL OR lease_until < now())
RETURNING *
"""
_MINE = "id = $1 AND lease_owner = $2 AND disabled_at IS NULL"
_LEASE = "lease_until = now() + make_interval(secs => $3)"
_FORWARD = "(cursor_txid, cursor_id) < ($4::xid8, $5::bigint)"
RELEASE_SQL = (
    "UPDATE webhooks SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2"
)
_DELIVERY_COLS = (
    "webhook_id, message_id, change_cursor, resource_type, resource_id, version, op, status,"
    " attempts, response_status, error, latency_ms, next_attempt_at"
)
_ON_CONFLICT = """
ON CONFLICT (webhook_id, message_id) DO UPDATE SET status = EXCLUDED.status,
    attempts = EXCLUDED.attempts, response_status = EXCLUDED.response_status,
    error = EXCLUDED.error, latency_ms = EXCLUDED.latency_ms,
    next_attempt_at = EXCLUDED.next_attempt_at, updated_at = now()
"""
_UPSERT = f"""
INSERT INTO webhook_deliveries ({_DELIVERY_COLS})
SELECT w.id, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17 FROM w
{_ON_CONFLICT}
"""
#: a group of 2xx answers: their delivery rows, the cursor (forward only: past the changes
#: done so far, which may stop before some of them), the endpoint's failing_since and its
#: lease, in one statement. Also the lease's renewal alone (no rows, the same cursor).
ACKNOWLEDGED_SQL = f"""
WITH w AS (
    UPDATE webhooks SET {_LEASE},
        cursor_txid = CASE WHEN {_FORWARD} THEN $4::xid8 ELSE cursor_txid END,
        cursor_id = CASE WHEN {_FORWARD} THEN $5::bigint ELSE cursor_id END,
        failing_since = $6::timestamptz
    WHERE {_MINE} RETURNING *
), d AS (
    INSERT INTO webhook_deliveries ({_DELIVERY_COLS})
    SELECT w.id, u.m, u.c, u.rt, u.rid, u.v, u.op, 'delivered', u.n, u.rs, NULL, u.ms, NULL
    FROM w, unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[],
        $12::text[], $13::int[], $14::int[], $15::int[]) AS u(m, c, rt, rid, v, op, n, rs, ms)
    {_ON_CONFLICT}
)
SELECT * FROM w
"""
#: a failed attempt: the cursor stays; the endpoint is failing since its first one
FAILED_SQL = f"""
WITH w AS (
    UPDATE webhooks SET {_LEASE}, failing_since = COALESCE(failing_since, now())
    WHERE {_MINE} AND $4::int IS NOT NULL AND $5::int IS NOT NULL RETURNING *
), d AS ({_UPSERT})
SELECT * FROM w
"""
DISABLE_SQL = f"""
WITH w AS (
    UPDATE webhooks SET disabled_at = now(), disabled_reason = $18, lease_owner = NULL,
        lease_until = NULL, updated_at = now()
    WHERE {_MINE} AND $3::float IS NOT NULL AND $4::int IS NOT NULL AND $5::int IS NOT NULL
    RETURNING *
), d AS ({_UPSERT})
SELECT * FROM w
"""
RECORDED_SQL = """
SELECT message_id, status, attempts, next_attempt_at, created_at FROM webhook_deliveries
WHERE webhook_id = $1 AND message_id = ANY($2::text[])
"""


#: finished deliveries (delivered, or given up) older than the retention, a batch at a time;
#: a delivery still being retried carries its attempts and is never purged
PURGE_DELIVERIES_SQL = """
DELETE FROM webhook_deliveries WHERE id IN (
    SELECT id FROM webhook_deliveries
    WHERE status IN ('delivered', 'failed') AND updated_at < now() - make_interval(days => $1)
    ORDER BY id LIMIT $2)
"""


class WebhookStore:
    def __init__(self, db: Db, box: SecretBox) -> None:
        self._db = db
        self._box = box

    async def purge_deliveries(self, retention_days: int, batch: int = 5000) -> int:
        """Delete finished deliveries older than ``retention_days``, ``batch`` rows per
        statement (no long lock, no huge transaction); how many went."""
        total = 0
        while True:
            status = await self._db.execute(PURGE_DELIVERIES_SQL, retention_days, batch)
            n = int(status.split()[-1])
            total += n
            if n < batch:
                return total

    def _row(self, r: asyncpg.Record) -> WebhookRow:
        sealed = self._box.open(r["secrets"]).get("secrets", [])
        return WebhookRow(
            str(r["id"]), r["url"], r["resource_types"], r["events"], r["description"],
            [SigningSecret.of(s) for s in sealed], (r["cursor_txid"], r["cursor_id"]),
            r["failing_since"], r["disabled_at"], r["disabled_reason"], r["created_at"],
            r["updated_at"],
        )  # fmt: skip

    def _seal(self, secrets_: list[SigningSecret]) -> bytes:
        return self._box.seal({"secrets": [s.as_dict() for s in secrets_]})

    # ---- the admin API ------------------------------------------------------------------

    async def create(
        self, url: str, resource_types: list[str] | None, events: list[str] | None,
        description: str | None,
    ) -> tuple[WebhookRow, str]:  # fmt: skip
        """A new endpoint, positioned at the feed's head (it gets the changes committed
        from now on, not the history), and its signing secret."""
        secret = new_secret()
        head = await self._db.fetchval(HEAD_SQL)
        pos = feed.settled(feed.START, head)
        r = await self._db.fetchrow(
            INSERT_SQL, url, resource_types, events, description,
            self._seal([SigningSecret(secret)]), pos[0], pos[1],
        )  # fmt: skip
        return self._row(r), secret

    async def get(self, webhook_id: str) -> WebhookRow:
        r = await self._db.fetchrow(GET_SQL, _uuid(webhook_id))
        if r is None:
            raise NotFoundError(Code.WEBHOOK_NOT_FOUND, f"no webhook {webhook_id!r}")
        return self._row(r)

    async def list_all(self) -> list[WebhookRow]:
        return [self._row(r) for r in await self._db.fetch(LIST_SQL)]

    async def update(
        self, webhook_id: str, url: str, resource_types: list[str] | None,
        events: list[str] | None, description: str | None, enable: bool,
    ) -> WebhookRow:  # fmt: skip
        """New settings; ``enable`` re-enables a disabled endpoint (it resumes at the
        change it was stuck on)."""
        r = await self._db.fetchrow(
            UPDATE_SQL, _uuid(webhook_id), url, resource_types, events, description, enable
        )
        if r is None:
            raise NotFoundError(Code.WEBHOOK_NOT_FOUND, f"no webhook {webhook_id!r}")
        return self._row(r)

    async def rotate(self, webhook_id: str, now: datetime) -> tuple[WebhookRow, str]:
        """A new current secret; the previous one signs too for ROTATION_OVERLAP_S more."""
        uid = _uuid(webhook_id)
        secret = new_secret()
        async with connection(self._db) as conn, conn.transaction():
            sealed = await conn.fetchval(SECRETS_SQL, uid)
            if sealed is None:
                raise NotFoundError(Code.WEBHOOK_NOT_FOUND, f"no webhook {webhook_id!r}")
            old = [SigningSecret.of(s) for s in self._box.open(sealed).get("secrets", [])]
            until = now + timedelta(seconds=ROTATION_OVERLAP_S)
            kept = [
                SigningSecret(s.secret, until if s.until is None else s.until)
                for s in old
                if s.until is None or s.until > now
            ]
            r = await conn.fetchrow(
                SET_SECRETS_SQL, uid, self._seal([SigningSecret(secret), *kept])
            )
        return self._row(r), secret

    async def delete(self, webhook_id: str) -> None:
        if await self._db.execute(DELETE_SQL, _uuid(webhook_id)) == "DELETE 0":
            raise NotFoundError(Code.WEBHOOK_NOT_FOUND, f"no webhook {webhook_id!r}")

    async def deliveries(
        self, webhook_id: str, before: int | None, limit: int
    ) -> list[DeliveryRow]:
        uid = _uuid(webhook_id)
        await self.get(webhook_id)  # 404 for an unknown endpoint
        rows = await self._db.fetch(DELIVERIES_SQL, uid, before or feed.LAST_ID, limit)
        return [DeliveryRow(**{k: r[k] for k in DeliveryRow.__slots__}) for r in rows]

    # ---- the notifier -------------------------------------------------------------------

    async def claim(self, owner: str, lease_s: float) -> list[WebhookRow]:
        return [self._row(r) for r in await self._db.fetch(CLAIM_SQL, owner, lease_s)]

    async def release(self, webhook_id: str, owner: str) -> None:
        await self._db.execute(RELEASE_SQL, UUID(webhook_id), owner)

    def _args(
        self, webhook_id: str, owner: str, lease_s: float, pos: Position, c: FeedChange,
        msg_id: str, status: str, a: Attempt, next_at: datetime | None,
    ) -> list[Any]:  # fmt: skip
        return [
            UUID(webhook_id), owner, lease_s, pos[0], pos[1], msg_id, c.cursor,
            c.resource_type, c.resource_id, c.version, c.op, status, a.attempts,
            a.response_status, a.error, a.latency_ms, next_at,
        ]  # fmt: skip

    async def acknowledged(
        self, webhook_id: str, owner: str, lease_s: float, pos: Position,
        batch: list[tuple[FeedChange, str, Attempt]], failing_since: datetime | None,
    ) -> WebhookRow | None:  # fmt: skip
        """Record a group of 2xx answers (change, message id, attempt) and move the cursor
        to ``pos`` (never backwards) in one statement; with no answers, the lease's
        renewal (and the cursor past changes the filters skip)."""
        cols: list[list[Any]] = [[] for _ in range(9)]
        for c, msg_id, a in batch:
            row = (
                msg_id, c.cursor, c.resource_type, c.resource_id, c.version, c.op,
                a.attempts, a.response_status, a.latency_ms,
            )  # fmt: skip
            for col, v in zip(cols, row, strict=True):
                col.append(v)
        r = await self._db.fetchrow(
            ACKNOWLEDGED_SQL, UUID(webhook_id), owner, lease_s, pos[0], pos[1], failing_since,
            *cols,
        )  # fmt: skip
        return None if r is None else self._row(r)

    async def failed(
        self, webhook_id: str, owner: str, lease_s: float, c: FeedChange, msg_id: str,
        a: Attempt, next_at: datetime,
    ) -> WebhookRow | None:  # fmt: skip
        args = self._args(webhook_id, owner, lease_s, (0, 0), c, msg_id, "retrying", a, next_at)
        r = await self._db.fetchrow(FAILED_SQL, *args)
        return None if r is None else self._row(r)

    async def disable(
        self, webhook_id: str, owner: str, c: FeedChange, msg_id: str, a: Attempt, reason: str
    ) -> None:
        args = self._args(webhook_id, owner, 0.0, (0, 0), c, msg_id, "failed", a, None)
        await self._db.fetchrow(DISABLE_SQL, *args, reason)

    async def recorded(self, webhook_id: str, msg_ids: list[str]) -> dict[str, Recorded]:
        """What is recorded of these changes (by message id) for the endpoint."""
        rows = await self._db.fetch(RECORDED_SQL, UUID(webhook_id), msg_ids)
        return {
            r["message_id"]: Recorded(
                r["status"], r["attempts"], r["next_attempt_at"], r["created_at"]
            )
            for r in rows
        }
