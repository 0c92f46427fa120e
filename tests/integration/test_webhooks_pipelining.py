"""Pipelined delivery to one endpoint (INGESTD_WEBHOOK_INFLIGHT changes in flight) against
a receiver that answers after random delays (so out of order) and fails some attempts:
each resource's versions still arrive in order, each exactly once, never two of one
resource at once; a change being retried holds back its resource and the stored cursor
only, and once it gets through the cursor passes every change."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from shared import feed
from shared.config import Settings
from tests.conftest import ADMIN, InlinePipeline, seed_directory
from tests.helpers import applying, emp, poll, post
from tests.webhook_notifier import W, hook, notifier
from tests.webhook_receiver import Receiver

RESOURCES, VERSIONS = 6, 8


@pytest.fixture
def wsettings(settings: Settings) -> Settings:
    return replace(
        settings, webhook_allow_private=True, webhook_timeout_ms=2000,
        webhook_retry_base_ms=50, webhook_lease_s=6, webhook_inflight=16,
    )  # fmt: skip


@pytest.fixture
async def gw(wsettings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(wsettings))) as c:
        yield c


async def _cursor(pool: asyncpg.Pool, webhook_id: str) -> feed.Position:
    r = await pool.fetchrow("SELECT cursor_txid, cursor_id FROM webhooks WHERE id = $1", webhook_id)
    return (int(str(r["cursor_txid"])), r["cursor_id"])


async def test_pipelined_deliveries_keep_each_resources_order(
    gw: TestClient[Any, Any], wsettings: Settings, pool: asyncpg.Pool,
    pipeline: InlinePipeline,
) -> None:  # fmt: skip
    seeded = await seed_directory(gw)
    async with Receiver() as receiver:
        made = await hook(gw, receiver.url("p"))
        p = receiver.path("p")
        p.secret, p.jitter_s = made["secret"], 0.05
        gate = {"r0 v2 fails": True}

        def fail_when(body: dict[str, Any], nth: int) -> bool:
            if (body["id"], body["version"]) == ("r0", 2):
                return gate["r0 v2 fails"]
            # some first attempts fail (then the retry goes through)
            return nth == 1 and (body["version"] + int(body["id"][1:])) % 3 == 0

        p.fail_when = fail_when
        async with notifier(wsettings, pool), applying(pipeline):
            for v in range(1, VERSIONS + 1):
                for i in range(RESOURCES):
                    await post(gw, seeded, emp(f"r{i}", employee={"age": v}))

            def got(rid: str) -> list[int]:
                return [b["version"] for b in p.bodies() if b["id"] == rid]

            async def others_done() -> bool:
                return all(len(got(f"r{i}")) == VERSIONS for i in range(1, RESOURCES))

            # r0's version 2 keeps failing: the other resources go on to their last version
            await poll("the other resources' changes", others_done, 30)
            assert got("r0") == [1]
            r0v2 = next(
                feed.decode(d["cursor"])
                for d in await _deliveries(gw, made["id"])
                if (d["resourceId"], d["version"]) == ("r0", 2)
            )

            async def others_recorded() -> bool:
                ds = await _deliveries(gw, made["id"])
                return sum(d["status"] == "delivered" for d in ds) == 1 + VERSIONS * 5

            await poll("the other resources' deliveries recorded", others_recorded, 10)
            # ... and the stored cursor stays before it, the endpoint failing since then
            assert await _cursor(pool, made["id"]) < r0v2
            w = await (await gw.get(f"{W}/{made['id']}", headers=ADMIN)).json()
            assert w["failingSince"] is not None and w["enabled"]

            gate["r0 v2 fails"] = False
            total = RESOURCES * VERSIONS
            await poll("every change", lambda: _count(p.bodies(), total), 30)
            last = max(feed.decode(b["cursor"]) for b in p.bodies())

            async def settled() -> bool:
                w = await (await gw.get(f"{W}/{made['id']}", headers=ADMIN)).json()
                return w["failingSince"] is None and await _cursor(pool, made["id"]) >= last

            await poll("the cursor past every change, nothing failing", settled, 10)
    for i in range(RESOURCES):  # in order, each once (no crash, no timeout here)
        assert got(f"r{i}") == list(range(1, VERSIONS + 1)), (i, got(f"r{i}"))
    assert p.overlaps == [] and p.most_open > 1  # pipelined, one request per resource
    assert all(r.verified for r in p.received)
    ds = {(d["resourceId"], d["version"]): d for d in await _deliveries(gw, made["id"])}
    assert len(ds) == total and {d["status"] for d in ds.values()} == {"delivered"}
    assert ds[("r0", 2)]["attempts"] >= 2 and ds[("r1", 2)]["attempts"] == 2
    assert ds[("r1", 1)]["attempts"] == 1


async def _deliveries(gw: TestClient[Any, Any], webhook_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    url = f"{W}/{webhook_id}/deliveries?limit=100"
    while True:
        page = await (await gw.get(url, headers=ADMIN)).json()
        out += page["items"]
        if not page.get("next"):
            return out
        url = f"{W}/{webhook_id}/deliveries?limit=100&before={page['next']}"


async def _count(bodies: list[dict[str, Any]], n: int) -> bool:
    return len({(b["id"], b["version"]) for b in bodies}) >= n
