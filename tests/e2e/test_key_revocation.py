"""A key revoked through one gateway is refused by another gateway process within 5 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.config import Settings
from tests.conftest import ADMIN, EMPLOYEE_SCHEMA
from tests.e2e.procs import port, stages

pytestmark = pytest.mark.slow  # stages as processes, seconds each

EVENT = "/integration/custom-data/event/employee"
DEADLINE_S = 5.0


async def status_of(c: aiohttp.ClientSession, key: str) -> int:
    async with c.post(EVENT, json={"employeeId": "e1"}, headers={"X-Ingest-Key": key}) as r:
        await r.read()
        return r.status


async def poll(c: aiohttp.ClientSession, key: str, want: int, within: float) -> float:
    """Seconds until the key gets ``want``; fails if it does not within ``within`` s."""
    start = time.monotonic()
    last = None
    while time.monotonic() - start < within:
        last = await status_of(c, key)
        if last == want:
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"still {last} (wanted {want}) after {within} s")


async def admin(c: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> Any:
    async with c.request(method, path, headers=ADMIN, **kw) as r:
        assert r.status < 300, await r.text()
        return await r.json() if r.status != 204 else None


async def test_revocation_reaches_another_gateway(
    settings: Settings, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    with stages(settings, tmp_path, "gateway", "gateway") as s:
        a_port, b_port = (port(g) for g in s["gateway"])
        async with (
            aiohttp.ClientSession(f"http://127.0.0.1:{a_port}") as a,
            aiohttp.ClientSession(f"http://127.0.0.1:{b_port}") as b,
        ):
            g = await admin(
                a,
                "POST",
                "/admin/v1/schema-groups",
                json={"name": "directory", "prefix": "_directory"},
            )
            await admin(
                a,
                "POST",
                f"/admin/v1/schema-groups/{g['id']}/schemas",
                json={"table": "employee", "schema": EMPLOYEE_SCHEMA},
            )
            integ = await admin(
                a, "POST", "/admin/v1/integrations", json={"name": "HR", "schemaGroup": g["id"]}
            )
            keys_url = f"/admin/v1/integrations/{integ['id']}/keys"
            second = await admin(a, "POST", keys_url)
            revoked, kept = integ["ingestKey"], second["ingestKey"]

            # B learns about keys created through A without a restart
            await poll(b, revoked, 202, DEADLINE_S)
            await poll(b, kept, 202, DEADLINE_S)

            started = time.monotonic()  # before the DELETE: an upper bound
            await admin(a, "DELETE", f"{keys_url}/{integ['keyId']}")
            assert await status_of(a, revoked) == 401  # the revoking gateway: at once
            await poll(b, revoked, 401, DEADLINE_S)
            latency = time.monotonic() - started
            assert latency < DEADLINE_S
            print(f"\nrevocation seen by the other gateway after {latency:.3f} s")
            record_property("revocation_latency_s", round(latency, 3))

            assert await status_of(b, kept) == 202
            assert await status_of(a, kept) == 202
        for g_stage in s["gateway"]:
            assert g_stage.proc is not None and g_stage.proc.poll() is None, g_stage.log()
