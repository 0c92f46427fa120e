"""/livez says only that the gateway process serves HTTP: 200 during a Redis outage, when
/healthz is 503 and the admin API keeps working (deploy/k8s uses /livez for liveness,
/healthz for readiness)."""

from __future__ import annotations

from dataclasses import replace

from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from shared.config import Settings
from shared.embedded import free_port
from tests.conftest import ADMIN


async def test_livez_is_200_while_redis_is_down(settings: Settings) -> None:
    down = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nobody there
    async with TestClient(TestServer(create_app(down))) as c:
        r = await c.get("/healthz")
        assert r.status == 503 and "redis" in (await r.json())["message"]
        r = await c.get("/livez")
        assert (r.status, await r.json()) == (200, {"status": "alive"})
        r = await c.get("/admin/v1/schema-groups", headers=ADMIN)
        assert r.status == 200


async def test_livez_and_healthz_when_all_is_well(settings: Settings) -> None:
    async with TestClient(TestServer(create_app(settings))) as c:
        assert (await c.get("/livez")).status == 200
        assert (await c.get("/healthz")).status == 200
