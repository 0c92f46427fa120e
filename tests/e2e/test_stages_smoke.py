"""The smallest process-level check: gateway, worker and projector as processes apply one
event (kept fast, so a run with ``-m 'not slow'`` still starts the stages once)."""

from __future__ import annotations

from pathlib import Path

from shared.config import Settings
from tests.conftest import seed_directory
from tests.e2e.helpers import gateway_client
from tests.e2e.procs import stages
from tests.helpers import post, wait_receipt


async def test_separate_processes_apply_an_event(settings: Settings, tmp_path: Path) -> None:
    with stages(settings, tmp_path, "gateway", "worker", "projector") as s:
        async with gateway_client(s["gateway"][0]) as c:
            key = (await seed_directory(c, "_d")).key
            # the worker loads a table it does not know yet itself (a forced registry refresh)
            eid = await post(c, key, {"employeeId": "x"})
            assert (await wait_receipt(c, key, eid, 10))["status"] == "applied"
