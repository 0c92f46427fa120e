"""The README's change feed and pull transfer examples, run by bash against an in-process
gateway after the README's walkthrough script (sourced, as the README says), with the
worker and projector applying events in the background; each output is compared with
what the README shows."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN_TOKEN, InlinePipeline
from tests.e2e.readme import ROOT, block, output_matches
from tests.helpers import applying

MARK = "--- next example ---"
pytestmark = pytest.mark.slow  # the walkthrough waits on receipts: ~20 s


async def test_the_feed_and_pull_transfer_examples(
    client: TestClient[Any, Any], pipeline: InlinePipeline
) -> None:
    feed = block("sh", containing='F="$B/api/v1/changes')
    pull = block("sh", containing="pull/transfer")
    script = f". examples/walkthrough.sh > /dev/null || exit 1\n{feed}echo '{MARK}'\n{pull}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")},
        "B": str(client.make_url("")).rstrip("/"),
        "INGESTD_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    async with applying(pipeline):
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", script, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0 and not err, out.decode() + err.decode()
    feed_out, pull_out = out.decode().split(MARK + "\n")
    output_matches(block("text", before="The feed example prints"), feed_out)
    output_matches(block("text", before="The pull transfer example prints"), pull_out)
