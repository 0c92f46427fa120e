"""The README's repair examples, run as written: "Replaying rejected events" against an
in-process gateway (after the walkthrough, which the example builds on), and
"Rebuilding resources from history" as the command it shows."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp.test_utils import TestClient

from shared.config import Settings
from tests.conftest import ADMIN_TOKEN, InlinePipeline
from tests.e2e.readme import ROOT, block, output_matches
from tests.helpers import applying


async def _bash(script: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, cwd=ROOT, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, (out.decode(), err.decode())
    return out.decode()


async def test_the_readme_replay_example(
    client: TestClient[Any, Any], pipeline: InlinePipeline
) -> None:
    example = block("sh", containing="/replay")
    shown = block("text", before="prints", containing="already_replayed")
    base = str(client.make_url("")).rstrip("/")
    script = f". examples/walkthrough.sh > /dev/null\n{example}"
    async with applying(pipeline, every=0.05):
        printed = await _bash(script, {"B": base, "INGESTD_ADMIN_TOKEN": ADMIN_TOKEN})
    output_matches(shown, printed)


async def test_the_readme_rebuild_example(
    client: TestClient[Any, Any], pipeline: InlinePipeline, settings: Settings
) -> None:
    example = block("sh", before="checks and restores that")
    assert example.startswith(".venv/bin/ingestd rebuild --verify")
    base = str(client.make_url("")).rstrip("/")
    env = {"B": base, "INGESTD_ADMIN_TOKEN": ADMIN_TOKEN}
    walk = asyncio.create_task(_bash(". examples/walkthrough.sh > /dev/null", env))
    while not walk.done():  # the walkthrough waits for its receipts
        await pipeline.run()
        await asyncio.sleep(0.05)
    await walk
    assert settings.database_url
    printed = await _bash(example, {"DATABASE_URL": settings.database_url})
    output_matches(block("text", before="", containing="folding: …"), printed)
    assert "reading history: 0 change(s)" not in printed
