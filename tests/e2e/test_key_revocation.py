"""A key revoked through one gateway is refused by another gateway process within 5 s."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.config import Settings
from tests.conftest import ADMIN, seed_directory
from tests.e2e.helpers import gateway_client
from tests.e2e.procs import stages
from tests.helpers import poll

pytestmark = pytest.mark.slow  # stages as processes, seconds each

EVENT = "/integration/custom-data/event/employee"
DEADLINE_S = 5.0


async def status_of(c: aiohttp.ClientSession, key: str) -> int:
    async with c.post(EVENT, json={"employeeId": "e1"}, headers={"X-Ingest-Key": key}) as r:
        await r.read()
        return r.status


async def until_status(c: aiohttp.ClientSession, key: str, want: int, within: float) -> None:
    """Until the key gets ``want``; fails if it does not within ``within`` s."""

    async def got() -> bool:
        return await status_of(c, key) == want

    await poll(f"{want} for the key", got, within, every=0.02)


async def admin(c: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> Any:
    async with c.request(method, path, headers=ADMIN, **kw) as r:
        assert r.status < 300, await r.text()
        return await r.json() if r.status != 204 else None


async def test_revocation_reaches_another_gateway(
    settings: Settings, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    with stages(settings, tmp_path, "gateway", "gateway") as s:
        gw_a, gw_b = s["gateway"]
        async with gateway_client(gw_a) as a, gateway_client(gw_b) as b:
            integ = await seed_directory(a)
            keys_url = f"/admin/v1/integrations/{integ.integration_id}/keys"
            second = await admin(a, "POST", keys_url)
            revoked, kept = integ.key, second["ingestKey"]

            # B learns about keys created through A without a restart
            await until_status(b, revoked, 202, DEADLINE_S)
            await until_status(b, kept, 202, DEADLINE_S)

            started = time.monotonic()  # before the DELETE: an upper bound
            await admin(a, "DELETE", f"{keys_url}/{integ.key_id}")
            assert await status_of(a, revoked) == 401  # the revoking gateway: at once
            await until_status(b, revoked, 401, DEADLINE_S)
            latency = time.monotonic() - started
            assert latency < DEADLINE_S
            print(f"\nrevocation seen by the other gateway after {latency:.3f} s")
            record_property("revocation_latency_s", round(latency, 3))

            assert await status_of(b, kept) == 202
            assert await status_of(a, kept) == 202
        for g_stage in s["gateway"]:
            assert g_stage.proc is not None and g_stage.proc.poll() is None, g_stage.log()
