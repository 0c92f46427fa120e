"""Figures 15 and 16 (issue 18's "8" and "9"): ingestd under live traffic.

Figure 15: ``ingestd gateway`` + ``worker`` + ``projector`` (separate processes, a
fresh state per run) driven by the bench's generator (wrk ``-t1 -c32`` when installed:
far less CPU than the Python one on 2 cores) for ``live_duration`` seconds of single
events, beside the direct synchronous peer (:mod:`tests.bench.peer`: one aiohttp
process answering 200 after its transaction commits) under the same load, alternated
(ingestd, peer, ingestd, peer, ...); the ratio is the median of the per-pair ratios.
Two workloads: distinct ids (``@N@`` in the body, a new resource per request) and the
identical payload (the same body every time: ingestd answers 202 and the worker sees it
unchanged; the peer sees the hash unchanged). Both sides' applied rate is counted the
same way, after the pipeline drained: receipts (``ingest_events`` / ``peer_receipts``)
whose ``processed_at`` falls inside the measured window, ÷ the window.

Figure 16: CPU µs per event by process at 50 % and 90 % of figure 15's maximum live rate
(the median ingestd distinct-id sustained rate), at a fixed rate: wrk with a Lua
``delay()`` schedule (see :mod:`tests.bench.loadgen`; the Python generator's open loop
when wrk is absent: it costs several times wrk's CPU on these 2 cores, so it could not
offer 90 % of a rate wrk measured), printed beside figure 3's backlog costs
(``backlog_run``, run here when figure 3 has not). Target: live <= 2x backlog per stage
(worker, projector, PostgreSQL, Redis); the gateway has no backlog figure and is reported.
Live, Redis also serves the gateway's appends (an XADD and a receipt per event), which
figure 3's drain of a preloaded stream does not: Redis's baseline is the drain plus the
preload that accepted the same events (its CPU is measured too), and the ratio to the
drain alone is reported beside it.

Per run: accepted/s (2xx the generator saw), applied/s, CPU µs per event per process
(gateway ÷ accepted events, the rest ÷ applied events; the machine ÷ applied), the
whole machine's busy %, the projector's transaction size (events ÷ distinct
``processed_at``: one per batch) and accepted → applied p50/p99 from ``ingest_events``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import asyncpg
import psutil
from redis.asyncio import Redis

from shared.embedded import free_port
from tests.bench.core import Bench, Figure, cpus, single_body
from tests.bench.env import CpuMeter, MachineCpu, Proc, ServerCpu, fresh, procs, wait_port
from tests.bench.fig_pipeline import PATH, backlog_run, wait_drained, wait_leases
from tests.bench.loadgen import Load, run_load
from tests.bench.peer import create_tables

PEER_KEY = "peer-bench-key"
STAGES = ("gateway", "worker", "projector")
#: a live stage's name -> its name in figure 3's backlog run
BACKLOG_STAGES = {"worker": "worker0", "projector": "projector", "postgres": "postgres",
                  "redis": "redis"}  # fmt: skip

WINDOW_SQL = """
SELECT count(*) AS n, count(DISTINCT processed_at) AS commits
FROM {table} WHERE processed_at BETWEEN $1 AND $2
"""
LATENCY_SQL = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99
FROM (SELECT extract(epoch FROM processed_at - received_at) * 1000 AS ms
      FROM ingest_events WHERE received_at BETWEEN $1 AND $2) t
"""
SCANS_SQL = "SELECT seq_scan, seq_tup_read, idx_scan FROM pg_stat_user_tables WHERE relname = $1"


class Window:
    """The measured phase: wall-clock bounds, the named processes' CPU, the servers' and
    the whole machine's."""

    def __init__(self, **procs: psutil.Process) -> None:
        self.meter = CpuMeter(**procs)
        self.servers = ServerCpu()
        self.machine = MachineCpu()

    def __enter__(self) -> Window:
        self.t0 = time.time()
        self.mono0 = time.monotonic()
        self.meter.__enter__()
        self.servers.__enter__()
        self.machine.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.machine.__exit__(et, e, tb)
        self.servers.__exit__(et, e, tb)
        self.meter.__exit__(et, e, tb)
        self.t1 = time.time()
        self.wall = time.monotonic() - self.mono0

    def bounds(self) -> tuple[datetime, datetime]:
        return datetime.fromtimestamp(self.t0, UTC), datetime.fromtimestamp(self.t1, UTC)

    def seconds(self) -> dict[str, float]:
        return {**self.meter.seconds, **self.servers.seconds}


def _us(seconds: float, events: int) -> float:
    return round(1e6 * seconds / events, 1) if events else 0.0


def _body(workload: str) -> bytes:
    return single_body(template=workload == "distinct")


async def _scans(db: str | asyncpg.Connection, table: str) -> dict[str, int]:
    """The table's scan counters (cumulative: a run reports its delta)."""
    conn = await asyncpg.connect(db) if isinstance(db, str) else db
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(SCANS_SQL, table)
    finally:
        if isinstance(db, str):
            await conn.close()
    return {k: int(v or 0) for k, v in dict(row).items()} if row is not None else {}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def _summary(w: Window, client: dict[str, Any], applied: int, commits: int) -> dict[str, Any]:
    secs = w.seconds()
    per = {k: _us(v, applied) for k, v in secs.items()}
    if "gateway" in secs:
        per["gateway"] = _us(secs["gateway"], client["ok"])
    machine_s = w.machine.busy_pct / 100 * cpus() * w.wall
    gen_s = (client.get("cpu_pct", {}).get("generator") or 0.0) / 100 * w.wall
    # busy CPU no measured process (nor the generator) used: other work on the machine
    other_pct = 100 * (machine_s - sum(secs.values()) - gen_s) / (cpus() * w.wall)
    return {
        "accepted_per_s": round(client["rps"], 1),
        "applied_per_s": round(applied / (w.t1 - w.t0), 1),
        "applied": applied,
        "window_s": round(w.t1 - w.t0, 2),
        "cpu_us_per_event": per,
        "machine_us_per_event": _us(machine_s, applied),
        "machine_busy_pct": w.machine.busy_pct,
        "other_busy_pct": round(other_pct, 1),
        "events_per_commit": round(applied / commits, 1) if commits else None,
        "client": {k: client.get(k) for k in ("rps", "ok", "non_2xx", "errors", "late")}
        | {"latency_ms": client.get("latency_ms"), "generator": client.get("generator")}
        | {"generator_cpu_pct": client.get("cpu_pct", {}).get("generator")},
    }


async def ingestd_run(
    bench: Bench, workload: str, rate: float = 0.0, generator: str | None = None
) -> dict[str, Any]:
    """One live run of gateway + worker + projector from a fresh state."""
    seeded = await fresh(bench.settings)
    assert bench.settings.database_url
    scans0 = await _scans(bench.settings.database_url, "resources")
    headers = (f"X-Ingest-Key: {seeded.key}", "Content-Type: application/json")
    dur = bench.sizes.live_duration
    with procs(bench.settings, bench.workdir) as ps:
        gw, port = ps.stage("gateway")
        proj, _ = ps.stage("projector")
        wk, _ = ps.stage("worker")
        await wait_leases(bench)
        await asyncio.sleep(0.5)  # registry caches, pools and connections warm
        url = f"http://127.0.0.1:{port}{PATH}"
        load = Load(url, headers, _body(workload), bench.connections, dur, bench.sizes.warmup, rate)
        window = Window(gateway=gw.target(), worker=wk.target(), projector=proj.target())
        client = await run_load(load, generator or bench.generator, None, bench.workdir, window)
        await wait_drained(bench, within=300)
        redis_keys = await _redis_keys(bench)
    assert bench.settings.database_url
    conn = await asyncpg.connect(bench.settings.database_url)
    try:
        t0, t1 = window.bounds()
        row = await conn.fetchrow(WINDOW_SQL.format(table="ingest_events"), t0, t1)
        lat = await conn.fetchrow(LATENCY_SQL, t0, t1)
        scans = await _scans(conn, "resources")
    finally:
        await conn.close()
    assert row is not None and lat is not None
    out = _summary(window, client, row["n"], row["commits"])
    out["latency_ms"] = {k: round(float(lat[k] or 0), 1) for k in ("p50", "p99")}
    out["resources_scans"] = _delta(scans, scans0)
    out["rate"] = rate
    out["redis_keys_after"] = redis_keys
    return out


async def _redis_keys(bench: Bench) -> int:
    """Keys Redis holds once everything accepted is applied: what it keeps per event
    in flight (receipt markers, Idempotency-Key entries) is gone by then, so this stays
    near the partitions' own keys however many events the run sent."""
    assert bench.settings.redis_url
    r = Redis.from_url(bench.settings.redis_url)
    try:
        return int(await r.dbsize())
    finally:
        await r.aclose()


async def peer_run(bench: Bench, workload: str) -> dict[str, Any]:
    """One run of the direct synchronous peer on its emptied tables."""
    dsn = bench.settings.database_url
    assert dsn
    conn = await asyncpg.connect(dsn)
    try:
        await create_tables(conn, empty=True)
        scans0 = await _scans(conn, "peer_resources")
    finally:
        await conn.close()
    port = free_port()
    argv = [sys.executable, "-m", "tests.bench.peer", "--port", str(port), "--dsn", dsn]
    argv += ["--key", PEER_KEY]
    with procs(bench.settings, bench.workdir) as ps:
        peer = Proc("peer", argv, dict(os.environ), bench.workdir).start()
        ps.running.append(peer)
        wait_port(port, peer)
        headers = (f"X-Ingest-Key: {PEER_KEY}", "Content-Type: application/json")
        url = f"http://127.0.0.1:{port}{PATH}"
        s = bench.sizes
        load = Load(url, headers, _body(workload), bench.connections, s.live_duration, s.warmup)
        window = Window(peer=peer.target())
        client = await run_load(load, bench.generator, None, bench.workdir, window)
    conn = await asyncpg.connect(dsn)
    try:
        t0, t1 = window.bounds()
        row = await conn.fetchrow(WINDOW_SQL.format(table="peer_receipts"), t0, t1)
        scans = await _scans(conn, "peer_resources")
    finally:
        await conn.close()
    assert row is not None
    out = _summary(window, client, row["n"], row["commits"])
    out["resources_scans"] = _delta(scans, scans0)
    return out


def _brief(r: dict[str, Any]) -> str:
    per = r["cpu_us_per_event"]
    cpu = ", ".join(f"{k} {v:.0f}" for k, v in per.items())
    lat = r.get("latency_ms")
    lat_s = f"; accepted->applied p50 {lat['p50']} / p99 {lat['p99']} ms" if lat else ""
    tx = f"; {r['events_per_commit']} events/commit" if r.get("events_per_commit") else ""
    sc = r.get("resources_scans") or {}
    if sc.get("seq_scan"):
        tx += f"; {sc['seq_scan']} seq scans of resources reading {sc['seq_tup_read']:,} rows"
    if r.get("redis_keys_after") is not None:
        tx += f"; {r['redis_keys_after']} Redis keys once drained"
    return (
        f"accepted {r['accepted_per_s']:,.0f}/s, applied {r['applied_per_s']:,.0f}/s; "
        f"CPU us/event {cpu}; machine {r['machine_us_per_event']:.0f} us/event at "
        f"{r['machine_busy_pct']:.0f}% busy ({r['other_busy_pct']:.0f}% by other work){tx}{lat_s}"
    )


async def figure15(bench: Bench) -> Figure:
    fig = Figure(
        15,
        f"live applied events/s, {bench.generator} -c{bench.connections}: ingestd (202, then "
        "applied) / direct synchronous peer (200 after commit)",
        unit="events/s",
        floor_title="direct synchronous peer, same load, alternated",
        target="ratio >= 3 (distinct ids and identical payload)",
    )
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    ratios: dict[str, float] = {}
    for workload in ("distinct", "identical"):
        runs[workload] = {"ingestd": [], "peer": []}
        for i in range(bench.sizes.live_rounds):
            for side in ("ingestd", "peer"):
                run = await (ingestd_run if side == "ingestd" else peer_run)(bench, workload)
                runs[workload][side].append(run)
                print(f"[bench]   15 {workload} #{i + 1} {side}: {_brief(run)}", flush=True)
        pairs = zip(runs[workload]["ingestd"], runs[workload]["peer"], strict=True)
        ratios[workload] = statistics.median(
            a["applied_per_s"] / b["applied_per_s"] if b["applied_per_s"] else 0.0 for a, b in pairs
        )
    distinct = runs["distinct"]
    fig.value = statistics.median(r["applied_per_s"] for r in distinct["ingestd"])
    fig.floor = statistics.median(r["applied_per_s"] for r in distinct["peer"])
    fig.ratio = ratios["distinct"]
    fig.met = all(r >= 3 for r in ratios.values())
    # figure 16's maximum: what the pipeline sustained, the lower of accepted and applied
    bench.cache["live_max_rate"] = statistics.median(
        min(r["accepted_per_s"], r["applied_per_s"]) for r in distinct["ingestd"]
    )
    fig.details = {"ratios": ratios, "runs": runs, "generator": bench.generator}
    ident = runs["identical"]
    fig.note = (
        f"distinct ids: ingestd {fig.value:,.0f} vs peer {fig.floor:,.0f} applied/s, ratio "
        f"{ratios['distinct']:.2f}; identical payload: ingestd "
        f"{statistics.median(r['applied_per_s'] for r in ident['ingestd']):,.0f} vs peer "
        f"{statistics.median(r['applied_per_s'] for r in ident['peer']):,.0f}, ratio "
        f"{ratios['identical']:.2f} (median of {bench.sizes.live_rounds} pair(s) each). "
        f"ingestd distinct: {_brief(distinct['ingestd'][-1])}. peer distinct: "
        f"{_brief(distinct['peer'][-1])}"
    )
    return fig


async def _max_rate(bench: Bench) -> float:
    if "live_max_rate" not in bench.cache:
        run = await ingestd_run(bench, "distinct")
        bench.cache["live_max_rate"] = min(run["accepted_per_s"], run["applied_per_s"])
    rate: float = bench.cache["live_max_rate"]
    return rate


async def figure16(bench: Bench) -> Figure:
    fig = Figure(
        16,
        "CPU us per event by process, live at 50% / 90% of the max live rate vs backlog",
        unit="x backlog (worst stage at 90%)",
        floor_title="figure 3's backlog cost per event",
        target="live <= 2x backlog per stage (worker, projector, postgres, redis)",
    )
    top = await _max_rate(bench)
    backlog = bench.cache.get("backlog_1") or await backlog_run(
        bench, bench.sizes.backlog, workers=1
    )
    bench.cache["backlog_1"] = backlog
    base = dict(backlog["cpu_us_per_event"])
    # live, Redis also serves the gateway's appends (XADD and receipt per event); figure
    # 3's drain starts from a preloaded stream, so its Redis baseline adds the preload's
    drain_redis = base.get("redis")
    accept_redis = backlog.get("accept_us_per_event", {}).get("redis")
    if drain_redis is not None and accept_redis is not None:
        base["redis"] = round(drain_redis + accept_redis, 1)
    live: dict[str, dict[str, Any]] = {}
    table: dict[str, dict[str, Any]] = {}
    for frac in (0.5, 0.9):
        run = await ingestd_run(bench, "distinct", rate=frac * top)
        key = f"{round(frac * 100)}%"
        live[key] = run
        print(f"[bench]   16 at {key} ({frac * top:,.0f}/s): {_brief(run)}", flush=True)
        per = run["cpu_us_per_event"]
        table[key] = {
            stage: {
                "live_us": per.get(stage),
                "backlog_us": base.get(b),
                "x": round(per[stage] / base[b], 2) if base.get(b) else None,
            }
            for stage, b in BACKLOG_STAGES.items()
        }
        table[key]["gateway"] = {"live_us": per.get("gateway"), "backlog_us": None, "x": None}
    worst = {k: max(v["x"] or 0 for v in t.values()) for k, t in table.items()}
    fig.value = worst["90%"]
    fig.floor = None
    fig.met = all(w <= 2 for w in worst.values())
    fig.details = {"max_rate": top, "backlog": backlog, "live": live, "table": table}
    drain_x = {
        k: round(v["cpu_us_per_event"]["redis"] / drain_redis, 2)
        for k, v in live.items()
        if drain_redis and "redis" in v["cpu_us_per_event"]
    }
    fig.details["redis_vs_drain_only"] = drain_x
    rows = []
    for stage in (*BACKLOG_STAGES, "gateway"):
        cells = [f"{table[k][stage]['live_us'] or 0:.0f}" for k in table]
        b = base.get(BACKLOG_STAGES.get(stage, ""))
        xs = "/".join(f"{table[k][stage]['x']}x" for k in table if table[k][stage]["x"])
        rows.append(f"{stage} {'/'.join(cells)} vs {b if b is not None else '-'} ({xs or '-'})")
    p99 = {k: v["latency_ms"]["p99"] for k, v in live.items()}
    fig.note = (
        f"us/event live 50%/90% vs backlog: {'; '.join(rows)}; max live rate {top:,.0f}/s "
        f"(figure 15's ingestd, distinct ids), fixed rate by {bench.generator}; Redis's "
        f"backlog = drain {drain_redis} + accepting the events {accept_redis} us (the "
        f"gateway's appends; drain only: {'/'.join(f'{x}x' for x in drain_x.values())}); "
        f"202->applied p99 {p99['50%']} ms at 50%, {p99['90%']} ms at 90% "
        f"(offered {live['50%']['rate']:,.0f} / {live['90%']['rate']:,.0f}/s, accepted "
        f"{live['50%']['accepted_per_s']:,.0f} / {live['90%']['accepted_per_s']:,.0f}/s)"
    )
    return fig
