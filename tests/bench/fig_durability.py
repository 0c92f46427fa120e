"""Figure 13: the 202 throughput cost of ``INGESTD_DURABILITY=strict``.

Single-event POSTs through one ``ingestd gateway`` under the same concurrent load as
figure 1 (32 keep-alive connections), against two private ``redis-server`` processes
started for this figure: the default mode on ``appendonly yes`` + ``appendfsync
everysec`` (Redis as deployed) and strict mode on ``appendonly yes`` + ``appendfsync
always`` (what strict mode needs of a server without WAITAOF, this machine's 7.0).
Rounds alternate the two so they see the same machine noise; the ratio is the median
of the per-round strict/default ratios. Group commit is what keeps the cost down:
Redis fsyncs once per event loop iteration that wrote, and one appender round trip
carries every event queued while the previous one was in flight.
"""

from __future__ import annotations

import shutil
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from shared.redis import keyspace as ks
from tests.bench.core import Bench, Figure, single_body
from tests.bench.env import fresh, procs
from tests.bench.fig_gateway import PATH, _brief, _median, alternate, paired_ratio
from tests.faults.servers import PrivateRedis


async def _clear(urls: list[str], partitions: int) -> None:
    for url in urls:
        r = Redis.from_url(url)
        try:
            await r.delete(*(ks.ingest_stream(p) for p in range(partitions)))
        finally:
            await r.aclose()


async def figure13(bench: Bench) -> Figure:
    fig = Figure(
        13,
        "single-event POST, one gateway, 32 conns: strict durability (appendfsync always)",
        unit="req/s",
        floor_title="default mode (appendfsync everysec), same run",
        target="report (no target)",
    )
    base = Path(bench.workdir) / "fig13"
    servers = {
        "default": PrivateRedis(base / "everysec", appendfsync="everysec"),
        "gateway": PrivateRedis(base / "always", appendfsync="always"),
    }
    try:
        for r in servers.values():
            r.start()
        default = replace(bench.settings, redis_url=servers["default"].url)
        strict = replace(bench.settings, redis_url=servers["gateway"].url, durability="strict")
        seeded = await fresh(default)  # the registry in PostgreSQL serves both gateways
        headers = (f"X-Ingest-Key: {seeded.key}", "Content-Type: application/json")
        runs: dict[str, list[dict[str, Any]]] = {"default": [], "gateway": []}
        urls = [r.url for r in servers.values()]

        async def between(_: Bench) -> None:
            await _clear(urls, bench.settings.partitions)

        with procs(default, bench.workdir) as dps, procs(strict, bench.workdir) as sps:
            dgw, dport = dps.stage("gateway")
            sgw, sport = sps.stage("gateway")
            assert dport is not None and sport is not None
            order = {"default": (dgw, dport), "gateway": (sgw, sport)}
            await alternate(bench, order, PATH, headers, single_body(), runs, between)
    finally:
        for r in servers.values():
            r.stop()
        shutil.rmtree(base, ignore_errors=True)
    fig.value = _median(runs["gateway"])
    fig.floor = _median(runs["default"])
    fig.ratio = paired_ratio(runs, floor="default")
    p99 = {k: statistics.median(r["latency_ms"]["p99"] for r in v) for k, v in runs.items()}
    fig.details = {
        "strict_runs": [_brief(r) for r in runs["gateway"]],
        "default_runs": [_brief(r) for r in runs["default"]],
        "p99_ms": {"strict": p99["gateway"], "default": p99["default"]},
        "generator": bench.generator,
    }
    fig.note = (
        f"strict {fig.value:,.0f} req/s vs default {fig.floor:,.0f} req/s; p99 latency "
        f"{p99['gateway']:.1f} ms vs {p99['default']:.1f} ms (group commit: one fsync per "
        "appender round trip, shared by every event in it)"
    )
    return fig
