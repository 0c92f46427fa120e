"""Figure 8: records/s of a full pull-source run, and the sources stage's peak RSS.

The stack runs as processes, as a user runs it: ``ingestd gateway``, ``worker``,
``projector`` and ONE ``ingestd sources``, plus the demo REST API
(``python -m tests.demo_api --bulk N``) serving N generated records at
``/bulk/items`` in OFFSET pages of 1,000. A source in full mode over that route is
created through the admin API; a warm-up run of a second source (``/all/items``, 25
records) first proves every stage up and warm.

Per size (N, then N/4 to show memory does not grow with the run), on a fresh state:

1. floor: a plain aiohttp client fetching every page of ``/bulk/items`` with the same
   page size and parsing each with orjson (the API's own serving cost, with the
   client's parse), records/s; measured before and after the run, the mean is used;
2. the run: its fetch time is the run's own ``startedAt`` -> ``finishedAt`` (claimed,
   every page fetched and handed to the pipeline, ``succeeded``: one clock, no poll
   granularity); its applied time runs from ``POST .../runs`` (the claim wait
   included, at most ``INGESTD_SOURCE_POLL_MS`` = 100 ms) to its snapshot applied (the
   run's ``created`` reaching N, counted by the pipeline as it applies), polled every
   20 ms; the sources process's RSS sampled every 10 ms (psutil) and its VmHWM read at
   the end;
3. ceiling beside it: on a fresh state again (an empty table, as the run had it) and
   fresh stages, the same N records pushed through the gateway as one snapshot session
   of 1,000-record parts, to its receipt applied: the pipeline's own rate for an
   all-created snapshot of that size, which bounds the run's applied rate whatever the
   sources stage does.

Ratio: run records/s to applied ÷ floor records/s. The fetch ratio (to ``succeeded``)
is the sources stage's own cost and is the one held to the target, with the RSS growth
between the two sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil

from shared.config import Settings
from shared.embedded import free_port
from shared.pg.pool import create_pool
from shared.pg.registry import RegistryStore
from shared.schema_rules import prepare_schema
from shared.secrets import SecretBox
from tests.bench.core import Bench, Figure
from tests.bench.env import (
    ADMIN_TOKEN,
    CpuMeter,
    Proc,
    Procs,
    Spy,
    procs,
    reset_state,
    wait_port,
)
from tests.bench.fig_pipeline import wait_leases
from tests.bench.profile import format_hotspots, hotspots
from tests.demo_api import bulk_records

PAGE = 1000
TABLE = "item"
PREFIX = "_pull"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FETCH_TARGET = 0.3  # the fetch ratio
RSS_GROWTH_MIB = 20.0  # peak RSS at N minus at N/4
ITEM_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["id", "name", "n"],
    "resmo": {"id": "$.id", "name": "$.name", "importantFields": ["$.n"]},
}


def item_spec(host: str, path: str, paging: dict[str, Any]) -> dict[str, Any]:
    return {
        "attributes": {
            "urlParams": {"host": host, "path": path, "method": "GET"},
            "contentPath": {"path": "$.items"},
            "paginationParams": paging,
        },
        "spec": {"type": "object", "properties": {}},
    }


def bulk_spec(host: str) -> dict[str, Any]:
    paging = {
        "type": "OFFSET",
        "limitName": "limit",
        "limitValue": str(PAGE),
        "offSetName": "offset",
    }
    return item_spec(host, "/bulk/items", paging)


async def seed(settings: Settings) -> tuple[str, str, str]:
    """One schema group with the ``item`` table, one integration: (its id, its key,
    the table's resource type)."""
    assert settings.database_url
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        store = RegistryStore(pool)
        group = await store.create_group("pull-bench", PREFIX)
        schema = await store.create_schema(group.id, TABLE, prepare_schema(ITEM_SCHEMA), None)
        integ, key = await store.create_integration("pull-bench", group.id)
    finally:
        await pool.close()
    return integ.id, key.plaintext, schema.resource_type


async def _call(c: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
    async with c.request(method, path, json=body, headers=ADMIN) as r:
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {await r.text()}")
        return await r.json()


async def create_source(
    c: aiohttp.ClientSession, name: str, spec: dict[str, Any], integration: str, group_key: str
) -> None:
    await _call(c, "POST", "/admin/v1/source-specs", {"name": f"{name}-spec", "sourceSpec": spec})
    body = {
        "name": name,
        "sourceSpec": f"{name}-spec",
        "params": {},
        "integration": integration,
        "table": TABLE,
        "groupKey": group_key,
        "mode": "full",
    }
    await _call(c, "POST", "/admin/v1/sources", body)


async def wait_run(
    c: aiohttp.ClientSession,
    source: str,
    run_id: str,
    records: int,
    within: float,
    on_status: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Poll the run until its snapshot is applied (``created`` = ``records``); the times
    each status was first seen go into ``on_status``."""
    seen = on_status if on_status is not None else {}
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        run: dict[str, Any] = await _call(c, "GET", f"/admin/v1/sources/{source}/runs/{run_id}")
        seen.setdefault(run["status"], time.monotonic())
        if run["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"run {source}: {run['status']} {run.get('error')}")
        if run["status"] == "succeeded" and run["created"] >= records:
            seen.setdefault("applied", time.monotonic())
            return run
        await asyncio.sleep(0.02)
    raise TimeoutError(f"run {run_id} of {source} not applied within {within:.0f}s")


async def floor_fetch(url: str) -> dict[str, Any]:
    """Every page of ``/bulk/items`` as the pager asks for them, parsed: records/s."""
    records = requests = 0
    async with aiohttp.ClientSession(url) as c:
        t0 = time.perf_counter()
        while True:
            async with c.get("/bulk/items", params={"limit": PAGE, "offset": records}) as r:
                body = await r.read()
            requests += 1
            got = len(orjson.loads(body)["items"])
            records += got
            if got < PAGE:
                break
        secs = time.perf_counter() - t0
    return {"records": records, "requests": requests, "seconds": secs, "rps": records / secs}


class RssSampler:
    """The RSS of one process every ``every_s`` seconds, in a task; its peak in MiB."""

    def __init__(self, p: psutil.Process, every_s: float = 0.01) -> None:
        self.p = p
        self.every_s = every_s
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.samples.append(self.p.memory_info().rss / (1 << 20))
            await asyncio.sleep(self.every_s)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def peak(self) -> float:
        return max(self.samples, default=0.0)


def vm_hwm_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def demo_api(ps: Procs, records: int) -> tuple[Proc, str]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.demo_api", "--port", str(port), "--bulk", str(records)]
    p = Proc("demo_api", argv, dict(os.environ), ps.log_dir).start()
    ps.running.append(p)
    wait_port(port, p)
    return p, f"http://127.0.0.1:{port}"


async def push_snapshot(
    c: aiohttp.ClientSession, key: str, records: int, group_key: str, within: float
) -> dict[str, Any]:
    """The ceiling: the same records as one pushed snapshot session of PAGE-record parts."""
    bodies = [
        orjson.dumps(list(bulk_records(o, min(records, o + PAGE)))) for o in range(0, records, PAGE)
    ]
    session, eid, hdr = uuid.uuid4().hex, "", {"X-Ingest-Key": key}
    t0 = time.monotonic()
    for i, body in enumerate(bodies, 1):
        params = {"groupKey": group_key, "session": session, "part": str(i)}
        if i == len(bodies):
            params["final"] = "true"
        async with c.post(
            f"/integration/custom-data/bulk-event/{TABLE}",
            params=params,
            data=body,
            headers={**hdr, "Content-Type": "application/json"},
        ) as r:
            if r.status != 202:
                raise RuntimeError(f"part {i}: {r.status} {await r.text()}")
            eid = (await r.json())["eventId"]
    t_upload = time.monotonic() - t0
    deadline = t0 + within
    while time.monotonic() < deadline:
        async with c.get(f"/integration/custom-data/events/{eid}", headers=hdr) as r:
            rec = await r.json()
        if rec.get("status") != "pending":
            break
        await asyncio.sleep(0.02)
    secs = time.monotonic() - t0
    if rec.get("status") != "applied" or rec.get("created") != records:
        raise RuntimeError(f"pushed snapshot: {rec}")
    return {"seconds": secs, "upload_s": t_upload, "rps": records / secs}


async def push_ceiling(bench: Bench, settings: Settings, n: int, within: float) -> dict[str, Any]:
    """The pushed snapshot on a fresh state and fresh stages, as the run had them."""
    await reset_state(settings)
    _, key, _ = await seed(settings)
    with procs(settings, bench.workdir) as ps:
        _, port = ps.stage("gateway")
        ps.stage("projector")
        ps.stage("worker")
        await wait_leases(bench)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as c:
            return await push_snapshot(c, key, n, "push", within)


async def count_resources(settings: Settings, resource_type: str, group_key: str) -> int:
    assert settings.database_url
    conn = await asyncpg.connect(settings.database_url)
    try:
        n = await conn.fetchval(
            "SELECT count(*) FROM resources WHERE resource_type = $1 AND group_key = $2",
            resource_type,
            group_key,
        )
    finally:
        await conn.close()
    return int(n)


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def one_size(
    bench: Bench, settings: Settings, n: int, profile: Path | None = None
) -> dict[str, Any]:
    """Fresh state and processes; floor, the run, floor again, then the pushed ceiling.
    ``profile``: the run with the sources process under ``py-spy record`` into it."""
    await reset_state(settings)
    integration, _, resource_type = await seed(settings)
    timeout = max(300.0, n / 200)
    with procs(settings, bench.workdir) as ps:
        demo, demo_url = demo_api(ps, n)
        gw, port = ps.stage("gateway")
        ps.stage("projector")
        ps.stage("worker")
        sources, _ = ps.stage("sources")
        await wait_leases(bench)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as c:
            none = {"type": "NONE"}
            await create_source(
                c, "warm", item_spec(demo_url, "/all/items", none), integration, "warm"
            )
            await create_source(c, "bulk", bulk_spec(demo_url), integration, "pull")
            warm = (await _call(c, "POST", "/admin/v1/sources/warm/runs"))["runId"]
            await wait_run(c, "warm", warm, 25, 60)
            with CpuMeter(demo=demo.target()) as floor_cpu:
                before = await floor_fetch(demo_url)
            sp = sources.target()
            rss_start = sp.memory_info().rss / (1 << 20)
            seen: dict[str, float] = {}
            meters = {"sources": sp, "demo": demo.target(), "gateway": gw.target()}
            meters.update(
                {p.name: p.target() for p in ps.running if p.name in ("worker", "projector")}
            )
            spy = Spy(sources.pid, profile / "sources.raw", rate=1000) if profile else None
            with RssSampler(sp) as rss, CpuMeter(**meters) as cpu:
                t0 = time.monotonic()
                run_id = (await _call(c, "POST", "/admin/v1/sources/bulk/runs"))["runId"]
                run = await wait_run(c, "bulk", run_id, n, timeout, seen)
            if spy is not None:
                spy.stop()
            hwm = vm_hwm_mib(sources.pid)
            after = await floor_fetch(demo_url)
    got = await count_resources(settings, resource_type, "pull")
    push = await push_ceiling(bench, settings, n, timeout)
    if got != n or run["records"] != n or run["pages"] != n // PAGE + 1:
        raise RuntimeError(f"expected {n} records and resources, found {got}: {run}")
    if before["records"] != n:
        raise RuntimeError(f"the floor fetched {before['records']} records, not {n}")
    applied_s = seen["applied"] - t0
    fetch_s = _at(run["finishedAt"]) - _at(run["startedAt"])  # the stage's own clock
    floor_rps = statistics.mean([before["rps"], after["rps"]])
    return {
        "records": n,
        "requests": run["requests"],
        "fetch_s": fetch_s,
        "fetch_polled_s": seen["succeeded"] - t0,
        "claim_s": _at(run["startedAt"]) - _at(run["createdAt"]),
        "applied_s": applied_s,
        "fetch_rps": n / fetch_s,
        "applied_rps": n / applied_s,
        "floor_rps": floor_rps,
        "floor_runs": [before, after],
        "floor_demo_cpu_s": floor_cpu.seconds["demo"],
        "push_ceiling": push,
        "rss_start_mib": round(rss_start, 1),
        "rss_peak_mib": round(rss.peak, 1),
        "rss_samples": len(rss.samples),
        "vm_hwm_mib": hwm,
        "cpu_pct": cpu.result,
        "cpu_us_per_record": {k: round(1e6 * v / n, 1) for k, v in cpu.seconds.items()},
        "run": {
            k: run.get(k)
            for k in (
                "status",
                "requests",
                "pages",
                "records",
                "created",
                "createdAt",
                "startedAt",
                "finishedAt",
            )
        },
    }


async def figure8(bench: Bench) -> Figure:
    n = bench.sizes.pull_records
    fig = Figure(
        8,
        f"pull full run records/s, {n:,} records in pages of {PAGE:,}",
        unit="rec/s",
        floor_title="aiohttp client fetching + orjson-parsing the same pages",
        target=f"fetch ratio >= {FETCH_TARGET}; RSS growth N/4 -> N < {RSS_GROWTH_MIB:.0f} MiB",
    )
    settings = replace(bench.settings, secret_key=SecretBox.generate_key(), source_poll_ms=100)
    small = await one_size(bench, settings, n // 4)
    big = await one_size(bench, settings, n)
    fig.value = big["applied_rps"]
    fig.floor = big["floor_rps"]
    fig.ratio = fig.value / fig.floor
    fetch_ratio = big["fetch_rps"] / big["floor_rps"]
    growth = big["rss_peak_mib"] - small["rss_peak_mib"]
    push = big["push_ceiling"]
    of_ceiling = big["applied_rps"] / push["rps"]
    fig.met = fetch_ratio >= FETCH_TARGET and growth < RSS_GROWTH_MIB
    fig.details = {
        "fetch_ratio": fetch_ratio,
        "applied_over_push_ceiling": of_ceiling,
        "rss_growth_mib": growth,
        "sizes": {str(small["records"]): small, str(big["records"]): big},
    }
    fig.note = (
        f"to succeeded (all fetched) {big['fetch_s']:.1f}s = {big['fetch_rps']:,.0f} rec/s, "
        f"fetch ratio {fetch_ratio:.2f}; to applied {big['applied_s']:.1f}s. Ceiling: the same "
        f"records pushed as one snapshot session of {PAGE}-record parts apply at "
        f"{push['rps']:,.0f} rec/s; the run is {of_ceiling:.2f} of that. Sources stage peak "
        f"RSS {small['rss_peak_mib']:.0f} MiB at {small['records']:,} records, "
        f"{big['rss_peak_mib']:.0f} MiB at {n:,} (growth {growth:+.1f} MiB; start "
        f"{big['rss_start_mib']:.0f} MiB); CPU us/record {big['cpu_us_per_record']}"
    )
    if bench.profile_dir is not None:  # a pass more, so py-spy slows no measured run
        bench.profile_dir.mkdir(parents=True, exist_ok=True)
        print(f"[bench] figure 8: a run under py-spy -> {bench.profile_dir}", flush=True)
        await one_size(bench, settings, n, profile=bench.profile_dir)
        fig.details["profile"] = hotspots(bench.profile_dir / "sources.raw")
        print(format_hotspots("sources", fig.details["profile"]), flush=True)
    return fig
