"""Webhook deliveries by an in-process notifier (the stage's own Notifier loop) to a real
receiver: signatures verified with standardwebhooks, retries then order, a dead endpoint
not delaying a healthy one, disable after the retry window, rotate-secret, filters and
the deliveries listing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks import Webhook

from services.gateway.app import create_app
from shared.config import Settings
from tests.conftest import ADMIN, InlinePipeline, seed_directory
from tests.helpers import applying, delete, emp, poll, post
from tests.webhook_notifier import hook, notifier
from tests.webhook_receiver import Receiver

W = "/admin/v1/webhooks"


@pytest.fixture
def wsettings(settings: Settings) -> Settings:
    return replace(
        settings, webhook_allow_private=True, webhook_timeout_ms=500,
        webhook_retry_base_ms=50, webhook_lease_s=5,
    )  # fmt: skip


@pytest.fixture
async def gw(wsettings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(wsettings))) as c:
        yield c


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


def versions(bodies: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return [(b["id"], b["version"], b["op"]) for b in bodies]


async def test_signed_deliveries_in_order_after_retries_and_the_listing(
    gw: TestClient[Any, Any], wsettings: Settings, pool: asyncpg.Pool,
    pipeline: InlinePipeline, receiver: Receiver,
) -> None:  # fmt: skip
    seeded = await seed_directory(gw)
    await post(gw, seeded, emp("old"))
    await pipeline.run()
    # the feed's head past "old" (a transaction open elsewhere on the server can hold it
    # back): an endpoint created now starts after it
    await poll("old in the feed", lambda: _in_feed(gw, "old"), 20)
    made = await hook(gw, receiver.url("flaky"))
    p = receiver.path("flaky")
    p.secret, p.fail_first = made["secret"], 3
    # one change in flight: the whole feed order, b after a's earlier changes (pipelined,
    # only each resource's order holds: test_webhooks_pipelining.py)
    one_at_a_time = replace(wsettings, webhook_inflight=1)
    async with notifier(one_at_a_time, pool), applying(pipeline):
        await post(gw, seeded, emp("a", active=True), event="hired")
        await post(gw, seeded, emp("a", active=False))
        await post(gw, seeded, emp("b"))
        await delete(gw, seeded, "a")
        await poll("four deliveries", lambda: _at_least(p.received, 4), 20)
    assert versions(p.bodies()) == [
        ("a", 1, "created"), ("a", 2, "updated"), ("b", 1, "created"), ("a", 3, "deleted"),
    ]  # fmt: skip
    assert all(r.verified for r in p.received) and p.requests == 7
    first = p.received[0]
    assert first.body["event"] == "hired" and first.body["after"] == emp("a", active=True)
    assert set(first.body) >= {"cursor", "resourceType", "patch", "eventId", "appliedAt"}
    ids = [r.headers["webhook-id"] for r in p.received]
    assert len(set(ids)) == 4
    r = await gw.get(f"{W}/{made['id']}/deliveries?limit=3", headers=ADMIN)
    page = await r.json()
    assert [d["resourceId"] for d in page["items"]] == ["a", "b", "a"]  # newest first
    oldest_of_page = page["items"][-1]
    assert (oldest_of_page["version"], oldest_of_page["status"]) == (2, "delivered")
    r = await gw.get(f"{W}/{made['id']}/deliveries?before={page['next']}", headers=ADMIN)
    rest = (await r.json())["items"]
    assert len(rest) == 1
    d = rest[0]
    assert (d["status"], d["attempts"], d["responseStatus"], d["messageId"]) == (
        "delivered", 4, 204, ids[0],
    )  # fmt: skip
    assert d["latencyMs"] >= 0 and d["nextAttemptAt"] is None


async def _in_feed(c: Any, rid: str) -> bool:
    body = await (await c.get("/api/v1/changes?limit=1000", headers=ADMIN)).json()
    return any(i["id"] == rid for i in body["items"])


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_a_dead_endpoint_does_not_delay_a_healthy_one(
    gw: TestClient[Any, Any], wsettings: Settings, pool: asyncpg.Pool,
    pipeline: InlinePipeline, receiver: Receiver,
) -> None:  # fmt: skip
    seeded = await seed_directory(gw)
    dead = receiver.path("dead")
    dead.dead = True
    await hook(gw, receiver.url("dead"))
    healthy = await hook(gw, receiver.url("healthy"))
    receiver.path("healthy").secret = healthy["secret"]
    async with notifier(wsettings, pool), applying(pipeline):
        for i in range(3):
            await post(gw, seeded, emp(f"e{i}"))
            started = time.monotonic()
            want = i + 1
            await poll(
                "the healthy endpoint's change",
                lambda want=want: _at_least(receiver.path("healthy").received, want),  # type: ignore[misc]
                10, every=0.01,
            )  # fmt: skip
            # from accepted to received: within ~1 s, whatever the dead endpoint does
            assert time.monotonic() - started < 1.5
    assert dead.requests >= 1 and not dead.received


async def test_disabled_after_the_retry_window_with_the_reason(
    gw: TestClient[Any, Any], wsettings: Settings, pool: asyncpg.Pool,
    pipeline: InlinePipeline, receiver: Receiver,
) -> None:  # fmt: skip
    s = replace(wsettings, webhook_retry_window_s=1)
    seeded = await seed_directory(gw)
    made = await hook(gw, receiver.url("broken"))
    receiver.path("broken").fail_first = 10**9
    async with notifier(s, pool), applying(pipeline):
        await post(gw, seeded, emp("a"))

        async def disabled() -> dict[str, Any] | None:
            w = await (await gw.get(f"{W}/{made['id']}", headers=ADMIN)).json()
            return dict(w) if not w["enabled"] else None

        w = await poll("the endpoint disabled", disabled, 20)
    assert "HTTP 500" in w["disabledReason"] and w["disabledAt"]
    r = await gw.get(f"{W}/{made['id']}/deliveries", headers=ADMIN)
    (d,) = (await r.json())["items"]
    assert (d["status"], d["responseStatus"]) == ("failed", 500) and d["attempts"] >= 2
    # re-enabled, it resumes at the change it was stuck on
    receiver.path("broken").fail_first = 0
    r = await gw.put(f"{W}/{made['id']}", json={"url": made["url"], "enabled": True}, headers=ADMIN)
    assert (await r.json())["enabled"] is True
    async with notifier(s, pool):
        await poll("the stuck change", lambda: _at_least(receiver.path("broken").received, 1), 10)
    assert versions(receiver.path("broken").bodies()) == [("a", 1, "created")]


async def test_rotated_secret_both_sign_and_filters_apply(
    gw: TestClient[Any, Any], wsettings: Settings, pool: asyncpg.Pool,
    pipeline: InlinePipeline, receiver: Receiver,
) -> None:  # fmt: skip
    seeded = await seed_directory(gw)
    made = await hook(gw, receiver.url("rot"), events=["deleted"])
    other = await hook(gw, receiver.url("other"), resourceTypes=["_nothing_here"])
    r = await gw.post(f"{W}/{made['id']}/rotate-secret", headers=ADMIN)
    new = (await r.json())["secret"]
    receiver.path("rot").secret = made["secret"]  # the old secret still verifies
    async with notifier(wsettings, pool), applying(pipeline):
        await post(gw, seeded, emp("a"))
        await delete(gw, seeded, "a")
        await poll("the delete", lambda: _at_least(receiver.path("rot").received, 1), 10)
    got = receiver.path("rot").received
    assert versions([g.body for g in got]) == [("a", 2, "deleted")]
    assert len(got[0].headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(got[0].raw, got[0].headers)
    assert receiver.path("other").requests == 0
    row = await (await gw.get(f"{W}/{other['id']}/deliveries", headers=ADMIN)).json()
    assert row["items"] == []
