"""Figure 1: single-event POST req/s through one ``ingestd gateway`` vs a bare aiohttp handler.

Rounds alternate floor, ceiling and gateway so all see the same machine noise; the
figure is the median of each. The ceiling is the bare handler that also appends each
body through the gateway's own group-commit appender. A canned raw-asyncio responder
gives the load generator's own ceiling, and the CPU each process used says which side
was the bottleneck.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from shared.redis import keyspace as ks
from tests.bench.core import Bench, Figure, single_body
from tests.bench.env import Proc, fresh, procs
from tests.bench.loadgen import Load, run_load

PATH = "/integration/custom-data/event/employee"


async def clear_streams(bench: Bench) -> None:
    assert bench.settings.redis_url
    r = Redis.from_url(bench.settings.redis_url)
    try:
        await r.delete(*(ks.ingest_stream(p) for p in range(bench.settings.partitions)))
    finally:
        await r.aclose()


async def alternate(
    bench: Bench,
    servers: dict[str, tuple[Proc, int]],
    path: str,
    headers: tuple[str, ...],
    body: bytes,
    runs: dict[str, list[dict[str, Any]]],
    between: Callable[[Bench], Awaitable[None]],
) -> None:
    """``bench.sizes.rounds`` rounds of the same load against each server in turn, so
    each figure and its floors are measured minutes apart at most; ``between`` resets
    the shared servers after every run."""
    s = bench.sizes
    for _ in range(s.rounds):
        for name, (proc, port) in servers.items():
            load = Load(
                f"http://127.0.0.1:{port}{path}", headers, body, bench.connections,
                s.duration, s.warmup,
            )  # fmt: skip
            r = await run_load(load, bench.generator, proc.target(), bench.workdir)
            if r["ok"] == 0:
                raise RuntimeError(f"{name}: no 2xx answers: {r}")
            runs[name].append(r)
            await between(bench)


def paired_ratio(
    runs: dict[str, list[dict[str, Any]]], key: str = "rps", floor: str = "bare"
) -> float:
    """Median over rounds of gateway/floor, each pair measured back to back (less noise
    than dividing the two medians, which may come from different minutes)."""
    pairs = zip(runs["gateway"], runs[floor], strict=True)
    return float(statistics.median(g[key] / b[key] for g, b in pairs if b[key]))


def _median(runs: list[dict[str, Any]], key: str = "rps") -> float:
    return float(statistics.median(r[key] for r in runs))


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "rps",
        "mb_per_s",
        "requests",
        "ok",
        "non_2xx",
        "errors",
        "latency_ms",
        "cpu_pct",
        "server_cpu_us_per_req",
    )
    return {k: r[k] for k in keep if k in r}


async def figure1(bench: Bench) -> Figure:
    fig = Figure(
        1,
        "single-event POST, one gateway, keep-alive, 32 conns",
        unit="req/s",
        floor_title="bare aiohttp handler (read body, 202)",
        target="ratio >= 0.8",
    )
    seeded = await fresh(bench.settings)
    s = bench.sizes
    headers = (f"X-Ingest-Key: {seeded.key}", "Content-Type: application/json")
    body = single_body()
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "append": [], "gateway": []}
    with procs(bench.settings, bench.workdir) as ps:
        gw, gport = ps.stage("gateway")
        bare, bport = ps.floor_server()
        app_, aport = ps.floor_server(append=bench.settings.redis_url)
        servers = {"bare": (bare, bport), "append": (app_, aport), "gateway": (gw, gport)}
        await alternate(bench, servers, PATH, headers, body, runs, clear_streams)
        ps.stop(gw)
        ps.stop(bare)
        ps.stop(app_)
        canned, cport = ps.floor_server(canned=True)
        ceiling = await run_load(
            Load(
                f"http://127.0.0.1:{cport}{PATH}",
                headers,
                body,
                bench.connections,
                s.duration,
                s.warmup,
            ),
            bench.generator,
            canned.target(),
            bench.workdir,
        )
    fig.value = _median(runs["gateway"])
    fig.floor = _median(runs["bare"])
    fig.ratio = paired_ratio(runs)
    fig.met = fig.ratio >= 0.8
    cpu_gw = _median(runs["gateway"], "server_cpu_us_per_req")
    cpu_bare = _median(runs["bare"], "server_cpu_us_per_req")
    append_over_bare = paired_ratio({"gateway": runs["append"], "bare": runs["bare"]})
    gateway_over_append = paired_ratio(runs, floor="append")
    cpu_append = _median(runs["append"], "server_cpu_us_per_req")
    fig.details = {
        "append_floor_rps": _median(runs["append"]),
        "append_cpu_us_per_req": cpu_append,
        "append_over_bare": append_over_bare,
        "gateway_over_append": gateway_over_append,
        "generator": bench.generator,
        "server_cpu_us_per_req": {"gateway": cpu_gw, "bare": cpu_bare},
        "cpu_normalised_ratio": cpu_bare / cpu_gw,
        "generator_ceiling_rps": ceiling["rps"],
        "ceiling_cpu_pct": ceiling.get("cpu_pct"),
        "gateway_runs": [_brief(r) for r in runs["gateway"]],
        "bare_runs": [_brief(r) for r in runs["bare"]],
        "append_runs": [_brief(r) for r in runs["append"]],
    }
    fig.note = (
        f"CPU per request: gateway {cpu_gw:.0f} us, bare {cpu_bare:.0f} us "
        f"(CPU-normalised ratio {cpu_bare / cpu_gw:.2f}). Ceiling: the bare handler that "
        f"also appends each body through the gateway's group-commit appender "
        f"({cpu_append:.0f} us) is {append_over_bare:.2f} of bare, and the gateway "
        f"{gateway_over_append:.2f} of it; " + bottleneck_note(runs["gateway"], fig.floor, ceiling)
    )
    return fig


def bottleneck_note(runs: list[dict[str, Any]], floor: float, ceiling: dict[str, Any]) -> str:
    cpu = statistics.median(r.get("cpu_pct", {}).get("server", 0.0) for r in runs)
    gen = statistics.median(r.get("cpu_pct", {}).get("generator", 0.0) for r in runs)
    share = floor / ceiling["rps"] if ceiling["rps"] else 0.0
    floor_side = (
        "the floor is near the generator's ceiling, so the ratio is overstated"
        if share > 0.8
        else "the generator is not the bottleneck"
    )
    return (
        f"gateway process at {cpu:.0f}% of one core, generator at {gen:.0f}%; "
        f"generator ceiling (canned responder) {ceiling['rps']:.0f} req/s, "
        f"floor at {100 * share:.0f}% of it: {floor_side}; "
        "generator, servers, Redis and PostgreSQL share this machine's cores"
    )
