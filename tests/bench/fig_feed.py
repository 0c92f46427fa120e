"""Figure 11: change feed read throughput (changes/s) through one ``ingestd gateway`` over a
backlog of 100,000 changes (``--quick``: 5,000), following ``next`` with limit 1000 from
the start, as a ratio to a plain asyncpg ``SELECT`` of the same rows in pages of 1000
(keyset on the same (txid, id) index, the pool's orjson jsonb codec) in the same run.

The backlog is made by the pipeline itself (bulk snapshots of 1,000 new resources each,
through the gateway, worker and projector processes), so the rows are what the feed
serves in production. Rounds alternate the floor and the feed; the ratio is the median
of the per-round ratios. Target: ratio >= 0.5 (the gateway's own work per change, a
dict per row, orjson out and in over HTTP, should cost no more than PostgreSQL's).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp
import asyncpg
import orjson

from shared.pg.pool import create_pool
from tests.bench.core import Bench, Figure, employee
from tests.bench.env import ADMIN_TOKEN, fresh, procs

BULK = "/integration/custom-data/bulk-event/employee"
PAGE = 1000
FLOOR_SQL = (
    "SELECT txid, id, resource_type, group_key, resource_id, version, op, event, actor,"
    " patch, after, event_id, applied_at FROM resource_changes"
    " WHERE (txid, id) > ($1::xid8, $2::bigint) ORDER BY txid, id LIMIT $3"
)


def backlog_size(bench: Bench) -> int:
    return min(100_000, bench.sizes.snapshot // 2)


async def _make_backlog(port: int, key: str, pool: asyncpg.Pool, n: int) -> None:
    headers = {"X-Ingest-Key": key, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as s:
        for part in range(n // PAGE):
            body = orjson.dumps([employee(part * PAGE + i) for i in range(PAGE)])
            r = await s.post(BULK, params={"groupKey": f"g{part}"}, data=body, headers=headers)
            assert r.status == 202, await r.text()
    deadline = time.monotonic() + 600
    while await pool.fetchval("SELECT count(*) FROM resource_changes") < n:
        if time.monotonic() > deadline:
            raise RuntimeError("the backlog was not applied within 600 s")
        await asyncio.sleep(0.2)


async def _floor(pool: asyncpg.Pool, n: int) -> float:
    started = time.perf_counter()
    at, got = (0, 0), 0
    while True:
        rows = await pool.fetch(FLOOR_SQL, at[0], at[1], PAGE)
        if not rows:
            break
        got += len(rows)
        at = (rows[-1]["txid"], rows[-1]["id"])
    assert got == n, (got, n)
    return got / (time.perf_counter() - started)


async def _feed(port: int, n: int) -> float:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    params = {"limit": str(PAGE)}
    got = 0
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as s:
        started = time.perf_counter()
        while True:
            async with s.get("/api/v1/changes", params=params, headers=headers) as r:
                assert r.status == 200, await r.text()
                body: dict[str, Any] = orjson.loads(await r.read())
            if not body["items"]:
                break
            got += len(body["items"])
            params["after"] = body["next"]
        elapsed = time.perf_counter() - started
    assert got == n, (got, n)
    return got / elapsed


async def figure11(bench: Bench) -> Figure:
    n = backlog_size(bench)
    fig = Figure(
        11,
        f"change feed read, {n:,}-change backlog, pages of {PAGE}, one gateway",
        unit="changes/s",
        floor_title="plain asyncpg SELECT of the same rows, same pages",
        target="ratio >= 0.5",
    )
    seeded = await fresh(bench.settings)
    assert bench.settings.database_url
    pool = await create_pool(bench.settings.database_url, max_size=2)
    feed_runs: list[float] = []
    floor_runs: list[float] = []
    try:
        with procs(bench.settings, bench.workdir) as ps:
            _, port = ps.stage("gateway")
            assert port is not None
            worker, _ = ps.stage("worker")
            projector, _ = ps.stage("projector")
            await _make_backlog(port, seeded.key, pool, n)
            ps.stop(worker)
            ps.stop(projector)
            for _ in range(max(3, bench.sizes.rounds)):
                floor_runs.append(await _floor(pool, n))
                feed_runs.append(await _feed(port, n))
    finally:
        await pool.close()
    fig.value = statistics.median(feed_runs)
    fig.floor = statistics.median(floor_runs)
    fig.ratio = float(statistics.median(f / b for f, b in zip(feed_runs, floor_runs, strict=True)))
    fig.met = fig.ratio >= 0.5
    fig.details = {"feed_runs": feed_runs, "floor_runs": floor_runs, "changes": n}
    fig.note = (
        "the feed: one statement per page (xmin and the rows in one snapshot), a dict per "
        "change, orjson out, HTTP, orjson in at the client; the floor: the same rows "
        "decoded by asyncpg alone"
    )
    return fig
