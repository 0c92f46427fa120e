"""Figure 14: commit -> webhook received latency (p50/p99, ms) at 500 changes/s.

Single events at a steady 500/s (open loop: sent on a fixed schedule, not after the
previous answer) through ``ingestd gateway``, ``worker``, ``projector`` and ``notifier``
processes to a local receiver (an aiohttp server in this process) behind one endpoint.
Latency: from the change's ``appliedAt`` (the projector transaction's start time, so a
little before its commit: the figure is an upper bound of commit -> received) to the
receiver's clock at receipt. The floor, in the same run: the same changes' ``appliedAt``
-> seen by a client long-polling the change feed (``wait``) through the gateway; the
ratio is webhook p99 / feed p99 (a notifier adds signing, a POST and a cursor write per
change). Target: p99 < 1 s. One change goes through first (not measured): a notifier
picks a new endpoint up at its next claim, up to a second after it was created.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from shared.secrets import SecretBox
from tests.bench.core import Bench, Figure, employee
from tests.bench.env import ADMIN_TOKEN, fresh, procs

RATE = 500
EVENT = "/integration/custom-data/event/employee"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _lag_ms(applied_at: str, at: float) -> float:
    return (at - datetime.fromisoformat(applied_at).timestamp()) * 1000


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _receiver(lags: list[float]) -> tuple[web.AppRunner, int]:
    async def hook(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        lags.append(_lag_ms(body["appliedAt"], time.time()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def _follow(s: aiohttp.ClientSession, lags: list[float], stop: asyncio.Event) -> None:
    params = {"limit": "1000", "wait": "2"}
    r = await s.get("/api/v1/changes", params={**params, "wait": "0"}, headers=ADMIN)
    body: dict[str, Any] = await r.json()
    params["after"] = body["next"]
    while not stop.is_set():
        async with s.get("/api/v1/changes", params=params, headers=ADMIN) as r:
            body = orjson.loads(await r.read())
        now = time.time()
        lags.extend(_lag_ms(i["appliedAt"], now) for i in body["items"])
        params["after"] = body["next"]


async def _send(s: aiohttp.ClientSession, key: str, seconds: float) -> int:
    headers = {"X-Ingest-Key": key, "Content-Type": "application/json"}
    n = int(RATE * seconds)
    start = time.monotonic()
    pending: set[asyncio.Task[Any]] = set()

    async def one(i: int) -> None:
        async with s.post(EVENT, data=orjson.dumps(employee(i)), headers=headers) as r:
            assert r.status == 202, await r.text()

    for i in range(n):
        delay = start + i / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(one(i))
        pending.add(t)
        t.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return n


async def _warm_up(s: aiohttp.ClientSession, key: str, lags: list[float]) -> None:
    """One change through to the receiver before the measured load: a notifier picks a new
    endpoint up at its next claim (every second), which is not the latency measured."""
    headers = {"X-Ingest-Key": key, "Content-Type": "application/json"}
    async with s.post(EVENT, data=orjson.dumps(employee("warm-up")), headers=headers) as r:
        assert r.status == 202, await r.text()
    deadline = time.monotonic() + 30
    while not lags:
        if time.monotonic() > deadline:
            raise RuntimeError("the warm-up change never reached the receiver")
        await asyncio.sleep(0.05)
    lags.clear()


async def figure14(bench: Bench) -> Figure:
    seconds = max(5.0, bench.sizes.latency_duration)
    fig = Figure(
        14,
        f"commit -> webhook received latency at {RATE} changes/s ({seconds:g} s)",
        unit="ms p99",
        floor_title="the same changes seen by a change feed long poll (p99)",
        target="p99 < 1000 ms",
    )
    seeded = await fresh(bench.settings)
    settings = replace(
        bench.settings, secret_key=SecretBox.generate_key(), webhook_allow_private=True
    )
    hook_lags: list[float] = []
    feed_lags: list[float] = []
    runner, rport = await _receiver(hook_lags)
    try:
        with procs(settings, bench.workdir) as ps:
            _, port = ps.stage("gateway")
            ps.stage("worker")
            ps.stage("projector")
            ps.stage("notifier")
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as s:
                r = await s.post(
                    "/admin/v1/webhooks", json={"url": f"http://127.0.0.1:{rport}/hook"},
                    headers=ADMIN,
                )  # fmt: skip
                assert r.status == 201, await r.text()
                await _warm_up(s, seeded.key, hook_lags)
                stop = asyncio.Event()
                following = asyncio.create_task(_follow(s, feed_lags, stop))
                n = await _send(s, seeded.key, seconds)
                deadline = time.monotonic() + 120
                while len(hook_lags) < n or len(feed_lags) < n:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{len(hook_lags)}/{len(feed_lags)} of {n} arrived")
                    await asyncio.sleep(0.1)
                stop.set()
                await following
    finally:
        await runner.cleanup()
    p50, p99 = _pct(hook_lags, 0.5), _pct(hook_lags, 0.99)
    f50, f99 = _pct(feed_lags, 0.5), _pct(feed_lags, 0.99)
    fig.value, fig.floor = p99, f99
    fig.ratio = p99 / f99 if f99 > 0 else None
    fig.met = p99 < 1000
    fig.details = {
        "changes": n, "webhook_p50_ms": p50, "webhook_p99_ms": p99, "feed_p50_ms": f50,
        "feed_p99_ms": f99, "webhook_mean_ms": statistics.fmean(hook_lags),
    }  # fmt: skip
    fig.note = "latency from appliedAt (projector transaction start: an upper bound of commit)"
    return fig
