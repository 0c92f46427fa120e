"""Figures 2, 4 and 7: bulk snapshots.

Each figure runs only when its piece exists in this tree (the bulk endpoint in
``services/gateway/bulk.py``; for figure 7 the ``tests/bench/bulk_diff.py``
script); otherwise it is reported as pending, never estimated.

2. bulk-event MB/s accepted by one gateway (one-request snapshots of
   ``bulk_items`` resources, 32 keep-alive connections, no worker running) vs
   the bare handler fed the same bodies. Measured beside them: the bare handler
   that also SETs each body in Redis, the ceiling of any design that keeps a body
   before answering 202 (on 2 shared cores, Redis and the kernel's second copy of
   every byte cost about as much as the bare handler itself).
4. A snapshot session of ``snapshot`` resources is applied once (all created),
   then the identical session is uploaded again: resources/s from its first
   part to its receipt reading applied with every resource unchanged, vs
   orjson parse + validate + extract/hash of the same part bytes in this process.
7. ``bulk_diff.py``'s own JSON line (wall time, peak RSS of the worker diffing a
   1,000,000-resource scope).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from shared.gcpause import gc_paused
from shared.schema_rules import CompiledSchema, content_hash, prepare_schema
from tests.bench.core import Bench, Figure, employee
from tests.bench.env import Seeded, fresh, procs
from tests.bench.fig_gateway import _brief, alternate, paired_ratio
from tests.bench.fig_pipeline import wait_leases
from tests.conftest import EMPLOYEE_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
BULK_MODULE = ROOT / "services" / "gateway" / "bulk.py"
BULK_DIFF = Path(__file__).with_name("bulk_diff.py")
BULK_PATH = "/integration/custom-data/bulk-event/employee"
PART_ITEMS = 10_000  # resources per session part (about 1.3 MB, under the 4 MiB limit)


def bulk_built() -> bool:
    return BULK_MODULE.exists() and "bulk-event" in BULK_MODULE.read_text()


def pending(fig: Figure, what: str = "bulk not built") -> Figure:
    fig.status = "pending"
    fig.note = f"pending ({what})"
    return fig


def bulk_body(n: int, offset: int = 0) -> bytes:
    return orjson.dumps([employee(offset + i) for i in range(n)])


async def _flush_sessions(bench: Bench) -> None:
    """Drop the stored snapshots between rounds; the registry stays in PostgreSQL."""
    assert bench.settings.redis_url
    r = Redis.from_url(bench.settings.redis_url)
    try:
        await r.flushdb()
    finally:
        await r.aclose()


async def figure2(bench: Bench) -> Figure:
    fig = Figure(
        2,
        f"bulk-event MB/s, one gateway ({bench.sizes.bulk_items}-resource bodies)",
        unit="MB/s",
        floor_title="bare handler, same bodies",
        target="ratio >= 0.8",
    )
    if not bulk_built():
        return pending(fig)
    seeded = await fresh(bench.settings)
    s = bench.sizes
    body = bulk_body(s.bulk_items)
    headers = (f"X-Ingest-Key: {seeded.key}", "Content-Type: application/json")
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "store": [], "gateway": []}
    with procs(bench.settings, bench.workdir) as ps:
        gw, gport = ps.stage("gateway")
        bare, bport = ps.floor_server()
        store, sport = ps.floor_server(store=bench.settings.redis_url)
        servers = {"bare": (bare, bport), "store": (store, sport), "gateway": (gw, gport)}
        await alternate(bench, servers, BULK_PATH, headers, body, runs, _flush_sessions)
    fig.value = float(statistics.median(r["mb_per_s"] for r in runs["gateway"]))
    fig.floor = float(statistics.median(r["mb_per_s"] for r in runs["bare"]))
    fig.ratio = paired_ratio(runs, "mb_per_s")
    fig.met = fig.ratio >= 0.8
    store_mb = float(statistics.median(r["mb_per_s"] for r in runs["store"]))
    ceiling = paired_ratio({"gateway": runs["store"], "bare": runs["bare"]}, "mb_per_s")
    of_ceiling = paired_ratio(runs, "mb_per_s", floor="store")
    fig.details = {
        "body_bytes": len(body),
        "store_floor_mb_per_s": store_mb,
        "store_over_bare": ceiling,
        "gateway_over_store": of_ceiling,
        "gateway_runs": [_brief(r) for r in runs["gateway"]],
        "store_runs": [_brief(r) for r in runs["store"]],
        "bare_runs": [_brief(r) for r in runs["bare"]],
    }
    gw_rps = statistics.median(r["rps"] for r in runs["gateway"])
    fig.note = (
        f"{len(body) / 1e3:.0f} kB bodies, gateway {gw_rps:.0f} req/s. Ceiling: the bare "
        f"handler that only SETs each body in Redis does {store_mb:.0f} MB/s = {ceiling:.2f} "
        f"of bare; the gateway is {of_ceiling:.2f} of that"
    )
    return fig


async def _receipt(c: aiohttp.ClientSession, seeded: Seeded, eid: str) -> dict[str, Any]:
    r = await c.get(f"/integration/custom-data/events/{eid}", headers={"X-Ingest-Key": seeded.key})
    out: dict[str, Any] = await r.json()
    return out


async def upload_session(
    c: aiohttp.ClientSession, seeded: Seeded, parts: list[bytes], group_key: str
) -> str:
    session = uuid.uuid4().hex
    eid = ""
    for i, body in enumerate(parts, 1):
        params = {"groupKey": group_key, "session": session, "part": str(i)}
        if i == len(parts):
            params["final"] = "true"
        r = await c.post(
            BULK_PATH,
            params=params,
            data=body,
            headers={"X-Ingest-Key": seeded.key, "Content-Type": "application/json"},
        )
        if r.status != 202:
            raise RuntimeError(f"part {i}: {r.status} {await r.text()}")
        eid = (await r.json())["eventId"]
    return eid


async def wait_receipt(
    c: aiohttp.ClientSession, seeded: Seeded, eid: str, within: float
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        rec = await _receipt(c, seeded, eid)
        if rec.get("status") != "pending":
            return rec
        await asyncio.sleep(0.05)
    raise TimeoutError(f"snapshot {eid} not applied within {within:.0f}s")


def parse_validate_hash(parts: list[bytes], gc_on: bool = False) -> float:
    """The floor: orjson parse, schema validation and content hash of every resource,
    with the cyclic GC paused as the worker's scan pauses it (with it running, this
    floor is 35-40% slower and the figure would flatter the worker)."""
    schema = CompiledSchema(prepare_schema(EMPLOYEE_SCHEMA))
    with contextlib.nullcontext() if gc_on else gc_paused():
        t0 = time.perf_counter()
        for body in parts:
            for item in orjson.loads(body):
                if schema.validate(item):
                    raise RuntimeError(f"bench resource is invalid: {item}")
                content_hash(item)
        return time.perf_counter() - t0


async def figure4(bench: Bench) -> Figure:
    n = bench.sizes.snapshot
    fig = Figure(
        4,
        f"unchanged resources/s, {n:,}-resource snapshot session",
        unit="res/s",
        floor_title="orjson parse + validate + hash, one process",
        target="ratio >= 0.5",
    )
    if not bulk_built():
        return pending(fig)
    parts = [bulk_body(min(PART_ITEMS, n - o), o) for o in range(0, n, PART_ITEMS)]
    seeded = await fresh(bench.settings)
    timeout = max(300.0, n / 200)
    with procs(bench.settings, bench.workdir) as ps:
        _, port = ps.stage("gateway")
        ps.stage("projector")
        ps.stage("worker")
        await wait_leases(bench)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as c:
            t0 = time.monotonic()
            first = await wait_receipt(
                c, seeded, await upload_session(c, seeded, parts, "snap"), timeout
            )
            t_first = time.monotonic() - t0
            if first.get("status") != "applied" or first.get("created") != n:
                raise RuntimeError(f"initial snapshot: {first}")
            t1 = time.monotonic()
            eid = await upload_session(c, seeded, parts, "snap")
            t_upload = time.monotonic() - t1
            second = await wait_receipt(c, seeded, eid, timeout)
            t_second = time.monotonic() - t1
    if second.get("status") != "applied" or second.get("unchanged") != n:
        raise RuntimeError(f"unchanged snapshot: {second}")
    floor_s = statistics.median(parse_validate_hash(parts) for _ in range(3))
    floor_gc_on_s = statistics.median(parse_validate_hash(parts, gc_on=True) for _ in range(3))
    fig.value = n / t_second
    fig.floor = n / floor_s
    fig.ratio = fig.value / fig.floor
    fig.met = fig.ratio >= 0.5
    fig.details = {
        "resources": n,
        "parts": len(parts),
        "bytes": sum(len(p) for p in parts),
        "unchanged_s": t_second,
        "upload_s": t_upload,
        "initial_created_s": t_first,
        "initial_created_per_s": n / t_first,
        "floor_s": floor_s,
        "floor_gc_on_s": floor_gc_on_s,
        "ratio_to_floor_gc_on": floor_gc_on_s / t_second,
    }
    fig.note = (
        f"{t_second:.1f}s for the unchanged session ({t_upload:.1f}s of it uploading "
        f"{len(parts)} parts); the first (all created) took {t_first:.1f}s. The floor runs "
        f"with the GC paused, as the worker does; with it on, the floor takes "
        f"{floor_gc_on_s:.2f}s and the ratio would read {floor_gc_on_s / t_second:.2f}"
    )
    return fig


async def figure7(bench: Bench) -> Figure:
    fig = Figure(7, "peak RSS, worker diffing a 1M-resource scope", unit="MiB", target="< 300 MiB")
    if not BULK_DIFF.exists():
        return pending(fig, "tests/bench/bulk_diff.py not provided yet")
    n = 1_000_000 if bench.sizes.snapshot >= 100_000 else 50_000
    if n != 1_000_000:
        fig.title = f"peak RSS, worker diffing a {n:,}-resource scope (--quick)"
    # bulk_diff.py picks its own database and Redis db from DATABASE_URL / REDIS_URL
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.bulk_diff", "--resources", str(n),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT),
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        last = [ln for ln in err.decode().splitlines() if ln.strip()][-1:] or ["(no stderr)"]
        raise RuntimeError(f"bulk_diff.py exited {proc.returncode}: {last[0][:300]}")
    lines = [ln for ln in out.decode().splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"bulk_diff.py printed no JSON line: {out.decode()[-500:]}")
    data: dict[str, Any] = json.loads(lines[-1])
    fig.value = float(data["peak_rss_mib"])
    fig.met = fig.value < 300
    fig.details = data
    fig.note = (
        f"{data.get('resources')} resources, {data.get('changed_share')} changed: "
        f"wall {data.get('wall_s')}s ({data.get('resources_per_s')} resources/s), "
        f"peak RSS {fig.value:.0f} MiB (start-up {data.get('startup_rss_mib')} MiB)"
    )
    return fig
