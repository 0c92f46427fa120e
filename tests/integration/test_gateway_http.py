"""HTTP-level hardening of the gateway: slow connections, malformed requests, clients that
go away, query parameters that are not UTF-8, id bounds, 405/404 answers.

The connection-level tests run the gateway as ``ingestd gateway`` does
(:func:`services.gateway.server.start`, a real listening socket) and speak raw HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.gateway.ingest import MAX_DELETE_IDS, MAX_ID_LENGTH
from services.gateway.server import GatewayRunner, start
from services.gateway.state import CONNECTIONS
from shared.config import Settings
from shared.embedded import free_port
from shared.redis import keyspace as ks
from tests.conftest import InlinePipeline, Seeded, seed_directory
from tests.helpers import poll, receipt

Client = TestClient[Any, Any]
INGEST = "/integration/custom-data"
EVENT = f"{INGEST}/event/employee"
BOUND_MS = 500
SLACK_S = 1.5


@dataclass
class Running:
    runner: GatewayRunner
    port: int
    http: aiohttp.ClientSession
    key: Seeded

    async def raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    s = replace(
        settings,
        http_port=free_port(),
        http_idle_timeout_ms=BOUND_MS,
        http_body_timeout_ms=BOUND_MS,
    )
    runner = await start(s)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{s.http_port}") as http:
            key = await seed_directory(http)
            yield Running(runner, s.http_port, http, key)
    finally:
        await runner.cleanup()


def _gateway_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(("ingestd.gateway", "aiohttp"))
        and (r.levelno >= logging.ERROR or r.exc_info)
    ]


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sent until it closed the connection (fails after ``seconds``)."""
    data = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionResetError:
        pass
    return data


async def _trickle(writer: asyncio.StreamWriter, piece: bytes, every: float) -> None:
    try:
        while True:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(every)
    except (ConnectionError, RuntimeError):
        return


async def _served_meanwhile(g: Running, until: asyncio.Event) -> list[float]:
    """A normal client's latencies while the slow ones trickle."""
    latencies = []
    while not until.is_set():
        t = time.monotonic()
        r = await g.http.post(EVENT, json={"employeeId": "n"}, headers={"X-Ingest-Key": g.key.key})
        assert r.status == 202, await r.text()
        latencies.append(time.monotonic() - t)
        await asyncio.sleep(0.02)
    return latencies


# ---- slow connections ----------------------------------------------------------------------


@pytest.mark.parametrize("what", ["headers", "body"])
async def test_a_trickling_client_is_cut_off_while_others_are_served(
    running: Running, what: str
) -> None:
    head = f"POST {EVENT} HTTP/1.1\r\nHost: x\r\nX-Ingest-Key: {running.key.key}\r\n".encode()
    if what == "body":
        head += b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    slow = [await running.raw() for _ in range(20)]
    started = time.monotonic()
    trickles = []
    for _, w in slow:
        w.write(head)
        trickles.append(asyncio.create_task(_trickle(w, b"X-A: b\r\n" if what == "headers"
                                                       else b" ", 0.05)))  # fmt: skip
    done = asyncio.Event()
    normal = asyncio.create_task(_served_meanwhile(running, done))
    try:
        answers = await asyncio.gather(
            *(_closed_within(r, BOUND_MS / 1000 + SLACK_S) for r, _ in slow)
        )
        elapsed = time.monotonic() - started
    finally:
        done.set()
        latencies = await normal
        for t in trickles:
            t.cancel()
        for _, w in slow:
            w.transport.abort()
    assert elapsed >= BOUND_MS / 1000 * 0.8, elapsed  # cut by the timeout, not at once
    for data in answers:
        if what == "headers":  # nothing to answer yet: closed
            assert data == b"", data[:200]
        else:  # answered, then closed without reading the rest
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), head
            assert orjson.loads(body)["code"] == "http_error"
    assert latencies and max(latencies) < 1.0, latencies


async def test_a_whole_body_arriving_in_parts_within_the_bound_is_accepted(
    running: Running,
) -> None:
    body = orjson.dumps({"employeeId": "slow-but-fine"})
    r, w = await running.raw()
    w.write(
        f"POST {EVENT} HTTP/1.1\r\nHost: x\r\nX-Ingest-Key: {running.key.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:5]
    )
    await w.drain()
    await asyncio.sleep(BOUND_MS / 1000 / 5)
    w.write(body[5:])
    status = await r.readline()
    assert status.startswith(b"HTTP/1.1 202"), status
    w.close()


# ---- malformed requests and clients that go away ------------------------------------------


async def test_a_request_line_over_the_limit_is_a_json_400_without_a_traceback(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    ids = ",".join(f"resource-{i}" for i in range(3000))
    r, w = await running.raw()
    w.write(
        f"DELETE {INGEST}/employee?resourceIds={ids} HTTP/1.1\r\nHost: x\r\n"
        f"X-Ingest-Key: {running.key.key}\r\n\r\n".encode()
    )
    data = await _closed_within(r, 10)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), head
    assert b"Content-Type: application/json" in head, head
    err = orjson.loads(body)
    assert err["code"] == "http_error" and "resourceIds" in err["message"], err
    assert not _gateway_errors(caplog)


async def test_a_header_over_the_limit_is_a_json_400(running: Running) -> None:
    r = await running.http.get("/healthz", headers={"X-Big": "x" * 9000})
    assert r.status == 400
    assert (await r.json())["code"] == "http_error"


async def test_a_client_that_goes_away_mid_body_is_not_an_error(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingestd.gateway")
    _, w = await running.raw()
    w.write(
        f"POST {EVENT} HTTP/1.1\r\nHost: x\r\nX-Ingest-Key: {running.key.key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
    )
    await w.drain()
    w.close()

    async def logged() -> bool:
        return any("client went away" in rec.getMessage() for rec in caplog.records)

    await poll("the gateway to note the client went away", logged, 5, every=0.02)
    assert not _gateway_errors(caplog)


# ---- 405 and trailing slashes --------------------------------------------------------------


async def test_405_names_the_allowed_methods(client: Client, seeded: Seeded) -> None:
    r = await client.get(EVENT, headers=seeded.headers)
    assert r.status == 405
    assert (await r.json())["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]


async def test_a_trailing_slash_is_a_404_that_suggests_the_path(
    client: Client, seeded: Seeded
) -> None:
    r = await client.post(f"{EVENT}/", json={"employeeId": "a"}, headers=seeded.headers)
    body = await r.json()
    assert r.status == 404 and body["code"] == "not_found"
    assert repr(EVENT) in body["message"], body
    r = await client.get("/nowhere/", headers=seeded.headers)
    assert (await r.json())["message"] == "Not Found"


# ---- query parameters that are not UTF-8 ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("post", EVENT, "groupKey"),
        ("post", EVENT, "event"),
        ("post", EVENT, "actor"),
        ("delete", f"{INGEST}/employee", "resourceIds"),
        ("post", f"{INGEST}/bulk-event/employee", "session"),
    ],
)
async def test_a_parameter_that_is_not_utf8_is_refused(
    client: Client, seeded: Seeded, redis: Redis, method: str, path: str, name: str
) -> None:
    extra = "&part=1" if name == "session" else ""
    body = [{"employeeId": "a"}] if "bulk" in path else {"employeeId": "a"}
    r = await getattr(client, method)(
        f"{path}?{name}=%ED%A0%80{extra}", json=body if method == "post" else None,
        headers=seeded.headers,
    )  # fmt: skip
    err = await r.json()
    assert r.status == 400, err
    assert err["code"] == "invalid_parameter" and err["pointer"] == f"/query/{name}", err
    assert "UTF-8" in err["message"]
    assert await redis.xlen(ks.ingest_stream(0)) + await redis.xlen(ks.ingest_stream(1)) == 0


async def test_an_encoded_replacement_character_is_a_valid_group_key(
    client: Client, seeded: Seeded
) -> None:
    r = await client.post(f"{EVENT}?groupKey=%EF%BF%BDx", json={"employeeId": "a"},
                          headers=seeded.headers)  # fmt: skip
    assert r.status == 202, await r.text()


# ---- resourceIds: bounds, and a JSON body ---------------------------------------------------


async def test_a_resource_id_over_the_bound_is_refused(client: Client, seeded: Seeded) -> None:
    long_id = "x" * (MAX_ID_LENGTH + 1)
    r = await client.delete(f"{INGEST}/employee", params={"resourceIds": f"a,{long_id}"},
                            headers=seeded.headers)  # fmt: skip
    err = await r.json()
    assert r.status == 400 and err["pointer"] == "/query/resourceIds", err
    r = await client.delete(f"{INGEST}/employee", json={"resourceIds": ["a", long_id]},
                            headers=seeded.headers)  # fmt: skip
    err = await r.json()
    assert r.status == 400 and err["pointer"] == "/resourceIds/1", err
    ok = "y" * MAX_ID_LENGTH
    r = await client.delete(f"{INGEST}/employee", json={"resourceIds": [ok]},
                            headers=seeded.headers)  # fmt: skip
    assert r.status == 202, await r.text()


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"resourceIds": []}, "/resourceIds"),
        ({"resourceIds": "a,b"}, "/resourceIds"),
        ({"ids": ["a"]}, "/resourceIds"),
        (["a"], "/resourceIds"),
        ({"resourceIds": ["a", ""]}, "/resourceIds/1"),
        ({"resourceIds": ["a", True]}, "/resourceIds/1"),
        ({"resourceIds": [1.5]}, "/resourceIds/0"),
        ({"resourceIds": ["a\x00"]}, "/resourceIds/0"),
        ({"resourceIds": ["a"] * (MAX_DELETE_IDS + 1)}, "/resourceIds"),
    ],
)
async def test_a_bad_delete_body_is_refused(
    client: Client, seeded: Seeded, body: Any, pointer: str
) -> None:
    r = await client.delete(f"{INGEST}/employee", json=body, headers=seeded.headers)
    err = await r.json()
    assert r.status == 400, err
    assert err["pointer"] == pointer, err


async def test_ids_in_both_the_query_and_the_body_are_refused(
    client: Client, seeded: Seeded
) -> None:
    r = await client.delete(f"{INGEST}/employee?resourceIds=a", json={"resourceIds": ["b"]},
                            headers=seeded.headers)  # fmt: skip
    assert r.status == 400
    assert (await r.json())["pointer"] == "/query/resourceIds"


async def test_a_delete_with_ids_in_a_json_body_deletes_them(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    """3,000 ids (more than a request line holds), one with a comma, one an integer."""
    h = seeded.headers
    for rid in ("a,b", "42", "keep"):
        r = await client.post(EVENT, json={"employeeId": rid}, headers=h)
        assert r.status == 202
    ids: list[Any] = ["a,b", 42, *(f"absent-{i}" for i in range(2998))]
    r = await client.delete(f"{INGEST}/employee?event=cleanup", json={"resourceIds": ids},
                            headers=h)  # fmt: skip
    assert r.status == 202, await r.text()
    eid = (await r.json())["eventId"]
    await pipeline.run()
    got = await receipt(client, seeded, eid)
    assert got["status"] == "applied" and got["deleted"] == 2, got
    assert len(got["ignored"]) == 2998


async def test_the_server_counts_its_open_connections_for_the_appender(running: Running) -> None:
    counted = running.runner.app[CONNECTIONS]
    before = counted.open
    opened = [await running.raw() for _ in range(3)]
    for reader, writer in opened:  # an answer on each: the server has them all
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    assert counted.open == before + 3
    for _, writer in opened:
        writer.close()
        await writer.wait_closed()

    async def closed() -> bool:
        return counted.open == before

    await poll("the closed connections uncounted", closed, 5, every=0.01)
