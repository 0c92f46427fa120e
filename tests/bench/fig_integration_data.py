"""Figure 10: GET of one integration data instance, req/s through one ``ingestd gateway``,
as a ratio to the single-event ingest (figure 1's workload) measured in the same run.

A read of one small row must not be slower than an ingest: the target is ratio >= 1.
Rounds alternate the two loads against the same gateway process (no worker or projector
runs during them; the streams the ingest load fills are cleared after each run).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp

from tests.bench.core import Bench, Figure, single_body
from tests.bench.env import fresh, procs
from tests.bench.fig_gateway import PATH, _brief, clear_streams
from tests.bench.loadgen import Load, run_load

RESOURCE = "e-1"  # the id single_body() ingests


async def _make_live(port: int, key: str, rt: str) -> str:
    """Ingest the resource, wait until it is live, PUT a vendor's map; its instance path."""
    base = f"http://127.0.0.1:{port}"
    auth = {"X-Ingest-Key": key}
    inst = f"/api/v1/resources/{rt}/{RESOURCE}/integrationdata/bench/"
    async with aiohttp.ClientSession(base) as s:
        r = await s.post(
            PATH, data=single_body(), headers=auth | {"Content-Type": "application/json"}
        )
        assert r.status == 202, await r.text()
        body = {"VendorID": "bench", "ID": "9943lkz0ll104", "LastSynchronized": "2012-01-01"}
        deadline = time.monotonic() + 60
        while True:
            r = await s.put(inst, json=body, headers=auth)
            if r.status in (200, 201):
                return inst
            if time.monotonic() > deadline:
                raise RuntimeError(f"the resource did not become live: {await r.text()}")
            await asyncio.sleep(0.05)


async def figure10(bench: Bench) -> Figure:
    fig = Figure(
        10,
        "integration data GET of one instance, one gateway, keep-alive, 32 conns",
        unit="req/s",
        floor_title="single-event POST (figure 1's workload) on the same gateway",
        target="ratio >= 1.0",
    )
    seeded = await fresh(bench.settings)
    s = bench.sizes
    key = f"X-Ingest-Key: {seeded.key}"
    runs: dict[str, list[dict[str, Any]]] = {"get": [], "ingest": []}
    with procs(bench.settings, bench.workdir) as ps:
        gw, port = ps.stage("gateway")
        assert port is not None
        worker, _ = ps.stage("worker")
        projector, _ = ps.stage("projector")
        inst = await _make_live(port, seeded.key, seeded.resource_type)
        ps.stop(worker)
        ps.stop(projector)
        await clear_streams(bench)
        loads = {
            "ingest": Load(
                f"http://127.0.0.1:{port}{PATH}", (key, "Content-Type: application/json"),
                single_body(), bench.connections, s.duration, s.warmup,
            ),
            "get": Load(
                f"http://127.0.0.1:{port}{inst}", (key,), b"", bench.connections, s.duration,
                s.warmup, method="GET",
            ),
        }  # fmt: skip
        for _ in range(s.rounds):
            for name, load in loads.items():
                r = await run_load(load, bench.generator, gw.target(), bench.workdir)
                if r["ok"] == 0:
                    raise RuntimeError(f"{name}: no 2xx answers: {r}")
                runs[name].append(r)
                await clear_streams(bench)
    fig.value = statistics.median(r["rps"] for r in runs["get"])
    fig.floor = statistics.median(r["rps"] for r in runs["ingest"])
    pairs = zip(runs["get"], runs["ingest"], strict=True)
    fig.ratio = float(statistics.median(g["rps"] / i["rps"] for g, i in pairs if i["rps"]))
    fig.met = fig.ratio >= 1.0
    cpu = {
        n: statistics.median(r.get("server_cpu_us_per_req", 0.0) for r in rs)
        for n, rs in runs.items()
    }
    fig.details = {
        "generator": bench.generator,
        "server_cpu_us_per_req": cpu,
        "get_runs": [_brief(r) for r in runs["get"]],
        "ingest_runs": [_brief(r) for r in runs["ingest"]],
    }
    fig.note = (
        f"CPU per request: GET {cpu['get']:.0f} us, ingest {cpu['ingest']:.0f} us; the GET "
        "authenticates the key, reads whether the resource is live and the map in one "
        "statement that concurrent GETs share (services/gateway/group_read.py) and writes "
        "the representation"
    )
    return fig
