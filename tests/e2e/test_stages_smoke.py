from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from shared.config import Settings
from tests.conftest import seed_directory
from tests.e2e.procs import port, stages


async def test_separate_processes_apply_an_event(settings: Settings, tmp_path: Path) -> None:
    with stages(settings, tmp_path, "gateway", "worker", "projector") as s:
        base = f"http://127.0.0.1:{port(s['gateway'][0])}"
        async with aiohttp.ClientSession(base) as c:
            key = (await seed_directory(c, "_d")).key
            await asyncio.sleep(0.3)  # worker's registry poll
            r = await c.post(
                "/integration/custom-data/event/employee",
                json={"employeeId": "x"},
                headers={"X-Ingest-Key": key},
            )
            assert r.status == 202
            eid = (await r.json())["eventId"]
            for _ in range(100):
                r = await c.get(
                    f"/integration/custom-data/events/{eid}", headers={"X-Ingest-Key": key}
                )
                if (await r.json())["status"] != "pending":
                    break
                await asyncio.sleep(0.1)
            assert (await r.json())["status"] == "applied"
