"""``ingestd gateway`` as a process: its server answers what the HTTP parser refuses in the
JSON error shape, and SIGTERM stops it cleanly (exit 0, no traceback)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import orjson
import pytest

from shared.config import Settings
from tests.conftest import seed_directory
from tests.e2e.helpers import gateway_client
from tests.e2e.procs import port, stages
from tests.helpers import post

pytestmark = pytest.mark.slow


async def test_a_gateway_process_answers_json_and_stops_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    with stages(settings, tmp_path, "gateway") as s:
        gw = s["gateway"][0]
        async with gateway_client(gw) as c:
            key = (await seed_directory(c, "_p")).key
            await post(c, key, {"employeeId": "x"})
            reader, writer = await asyncio.open_connection("127.0.0.1", port(gw))
            writer.write(b"GET /healthz?" + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            assert b" 400 " in head.split(b"\r\n")[0], head
            assert orjson.loads(body)["code"] == "http_error"
        assert gw.proc is not None
        os.killpg(gw.pid, signal.SIGTERM)
        assert await asyncio.to_thread(gw.proc.wait, 15) == 0
    log = gw.log()
    assert "Traceback" not in log, log
