"""Group reads (services/gateway/group_read.py) against a real gateway and PostgreSQL:
concurrent instance GETs share round trips, and each still answers exactly what a read
of its own would (its own map, its own 404, every write committed before it arrived)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from services.gateway.group_read import GroupRead
from services.gateway.state import IDATA_READS
from tests.conftest import ADMIN, InlinePipeline, Seeded
from tests.integration.test_integration_data import inst, live

Client = TestClient[Any, Any]


async def test_concurrent_gets_share_round_trips_and_each_gets_its_own_answer(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    ids = [f"g{i}" for i in range(20)]
    await live(client, seeded, pipeline, *ids)
    for rid in ids:
        r = await client.put(inst("acme", rid), json={"Mark": rid}, headers=ADMIN)
        assert r.status == 201, await r.text()
    reads = client.server.app[IDATA_READS]
    keys, batches = reads.keys, reads.batches

    async def get(path: str) -> tuple[int, Any]:
        r = await client.get(path, headers=ADMIN)
        return r.status, await r.json()

    paths = [inst("acme", rid) for rid in ids] * 5
    paths += [inst("other", "g1"), inst("acme", "gone")]  # no such vendor; not live
    answers = await asyncio.gather(*(get(p) for p in paths))
    for (status, body), rid in zip(answers[:100], ids * 5, strict=True):
        assert status == 200 and body["Mark"] == rid, body
    assert answers[100][0] == 404 and answers[100][1]["code"] == "integration_data_not_found"
    assert answers[101][0] == 404 and answers[101][1]["code"] == "resource_not_found"
    assert reads.keys - keys == len(paths)
    assert reads.batches - batches < len(paths) / 4  # shared: far fewer round trips


async def test_a_read_sees_every_write_committed_before_it(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await live(client, seeded, pipeline, "w1")
    stop = asyncio.Event()

    async def reader() -> int:  # keeps batches in flight, so reads queue behind them
        n = 0
        while not stop.is_set():
            r = await client.get(inst("acme", "w1"), headers=ADMIN)
            assert r.status in (200, 404)
            n += 1
        return n

    readers = [asyncio.ensure_future(reader()) for _ in range(6)]
    try:
        for n in range(40):
            r = await client.put(inst("acme", "w1"), json={"N": str(n)}, headers=ADMIN)
            assert r.status in (200, 201)
            r = await client.get(inst("acme", "w1"), headers=ADMIN)
            assert (await r.json())["N"] == str(n)  # never an answer read before the PUT
    finally:
        stop.set()
    assert all(await asyncio.gather(*readers))


async def test_a_failed_batch_fails_its_requests_only() -> None:
    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def fetch(keys: list[int]) -> list[int]:
        calls.append(keys)
        if keys[0] < 0:
            await gate.wait()
            raise RuntimeError("boom")
        return [k * 10 for k in keys]

    reads: GroupRead[int, int] = GroupRead(fetch, max_inflight=1)
    first = asyncio.ensure_future(reads.get(-1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first batch is in flight; these wait for the next one
    rest = [asyncio.ensure_future(reads.get(k)) for k in (1, 2, 3)]
    cancelled = asyncio.ensure_future(reads.get(4))
    await asyncio.sleep(0)
    cancelled.cancel()
    gate.set()
    assert [await r for r in rest] == [10, 20, 30]
    try:
        await first
    except RuntimeError as e:
        assert str(e) == "boom"
    else:
        raise AssertionError("the failed batch's request succeeded")
    assert calls == [[-1], [1, 2, 3, 4]]
    await reads.stop()


async def test_a_key_queued_as_the_last_drain_finishes_is_read() -> None:
    """The drain that answered the first read has finished but not yet left the set of
    tasks when its reader, woken first, asks again: a new drain must start."""

    async def fetch(keys: list[int]) -> list[int]:
        return [k * 10 for k in keys]

    reads: GroupRead[int, int] = GroupRead(fetch, max_inflight=1)
    for k in range(50):
        async with asyncio.timeout(5):  # not wait_for: its task would start a step later
            assert await reads.get(k) == k * 10
    await reads.stop()
