"""Process-level fault scenarios (see tests/faults/harness.py for the harness and the check)."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.harness import FaultEnv, Run

pytestmark = [pytest.mark.slow, pytest.mark.faults]


async def test_postgres_immediate_restart(fault_env: FaultEnv) -> None:
    async with Run(fault_env, "postgres immediate restart") as run:
        await run.traffic()
        run.fault_began()
        fault_env.pg.stop("immediate")
        await asyncio.sleep(1)
        fault_env.pg.start()
        run.fault_ended()
        await run.flowing()
        await run.finish()
