"""The README's webhooks example, run by bash against an in-process gateway (private
addresses allowed, as the README says) with a real receiver at ``$HOOK``; its output is
compared with what the README shows."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from shared.config import Settings
from tests.conftest import ADMIN_TOKEN
from tests.e2e.readme import ROOT, block, output_matches
from tests.webhook_receiver import Receiver

PRELUDE = (
    'H="Authorization: Bearer $INGESTD_ADMIN_TOKEN"; J="Content-Type: application/json"\n'
    'j() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }\n'
)


async def test_the_webhooks_example(settings: Settings) -> None:
    script = block("sh", containing="/admin/v1/webhooks")
    app = create_app(replace(settings, webhook_allow_private=True))
    async with Receiver() as receiver, TestClient(TestServer(app)) as c:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")},
            "B": str(c.make_url("")).rstrip("/"),
            "HOOK": receiver.url("readme"),
            "INGESTD_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", PRELUDE + script, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0 and not err, out.decode() + err.decode()
        r = await c.get("/admin/v1/webhooks", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert (await r.json())["items"] == []  # the example deleted it
    output_matches(block("text", before="The webhooks example prints"), out.decode())
