"""The bench's direct synchronous peer (tests/bench/peer.py, figure 15's competitor) does
what it claims: per request, validation, hashing and one transaction writing the row,
its history with a JSON Patch and a receipt, before it answers."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from shared.config import Settings
from shared.embedded import free_port
from tests.bench.peer import PATH, create_tables

KEY = "peer-test-key"


async def _listening(port: int, proc: subprocess.Popen[bytes], within: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        assert proc.poll() is None, "the peer exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError("the peer is not listening")


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
async def peer(settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    dsn = settings.database_url
    assert dsn
    conn = await asyncpg.connect(dsn)
    try:
        await create_tables(conn, empty=True)
    finally:
        await conn.close()
    port = free_port()
    argv = [sys.executable, "-m", "tests.bench.peer", "--port", str(port), "--dsn", dsn]
    proc = _spawn([*argv, "--key", KEY], tmp_path / "peer.log")
    try:
        await _listening(port, proc)
        yield f"http://127.0.0.1:{port}{PATH}"
    finally:
        proc.terminate()
        proc.wait(10)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("DROP TABLE IF EXISTS peer_resources, peer_changes, peer_receipts")
        finally:
            await conn.close()


async def test_peer_create_update_resend_and_bad_body(peer: str, pool: asyncpg.Pool) -> None:
    doc = {"employeeId": "e-1", "active": True, "employee": {"username": "ann", "age": 30}}
    changed = {**doc, "employee": {"username": "ann", "age": 31}}
    headers = {"X-Ingest-Key": KEY, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        ops = []
        for body in (doc, changed, changed):
            async with http.post(peer, json=body) as r:
                assert r.status == 200, await r.text()
                ops.append((await r.json())["op"])
        assert ops == ["created", "updated", "unchanged"]
        async with http.post(peer, data=b'{"employeeId": 5}') as r:  # not a string id
            assert r.status == 400
        async with http.post(peer, data=b"{not json") as r:
            assert r.status == 400
        async with http.post(peer, json=doc, headers={"X-Ingest-Key": "wrong"}) as r:
            assert r.status == 401

    row = await pool.fetchrow("SELECT * FROM peer_resources")
    assert row is not None
    assert (row["resource_id"], row["version"], row["data"]) == ("e-1", 2, changed)
    assert row["name"] == "ann"
    assert row["important_fields"] == {"employeeId": "e-1", "active": True}
    history = await pool.fetch("SELECT * FROM peer_changes ORDER BY version")
    assert [(h["version"], h["op"]) for h in history] == [(1, "created"), (2, "updated")]
    assert history[1]["patch"] == [{"op": "replace", "path": "/employee/age", "value": 31}]
    assert history[1]["after"] == changed and history[1]["content_hash"] == row["content_hash"]
    receipts = await pool.fetch(
        "SELECT created, updated, unchanged, status FROM peer_receipts ORDER BY processed_at"
    )
    assert [tuple(r) for r in receipts] == [
        (1, 0, 0, "applied"),
        (0, 1, 0, "applied"),
        (0, 0, 1, "applied"),
    ]  # the bad bodies wrote nothing
