"""Figure 12: batch-event items/s end to end, as a ratio to figure 3's single-event rate.

The same resources as figure 3's backlog (one groupKey per partition) are POSTed through
one ``ingestd gateway`` as batch events of 1,000 items (``POST …/batch-event/employee``,
4 requests in flight) while a worker and a projector run; the figure is items from the
first request sent until every item is applied in PostgreSQL (ingest and changes
streams empty, every resource stored). Its floor is figure 3's rate (a backlog of as
many single events, worker + projector only), taken from this run when figure 3 ran
in it, else measured here first. One request per 1,000 items must pay off: the target
is ratio >= 2.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from tests.bench.core import Bench, Figure
from tests.bench.env import CpuMeter, ServerCpu, fresh, group_keys, procs
from tests.bench.fig_pipeline import _bodies, backlog_run, count_applied, wait_drained, wait_leases

PATH = "/integration/custom-data/batch-event/employee"
BATCH = 1000
IN_FLIGHT = 4


def _batches(resource_type: str, partitions: int, n: int) -> list[tuple[str, bytes]]:
    """(groupKey, body) of batches of at most BATCH items, each of one scope."""
    teams = group_keys(resource_type, partitions)
    by_team: dict[str, list[dict[str, Any]]] = {}
    for team, doc in _bodies(n, teams):
        by_team.setdefault(team, []).append(doc)
    out = []
    for team, docs in by_team.items():
        for start in range(0, len(docs), BATCH):
            out.append((team, orjson.dumps(docs[start : start + BATCH])))
    return out


async def _send(port: int, key: str, batches: list[tuple[str, bytes]]) -> float:
    """POST every batch (IN_FLIGHT at a time); the seconds the uploads took."""
    queue = list(reversed(batches))
    headers = {"X-Ingest-Key": key, "Content-Type": "application/json"}
    t0 = time.monotonic()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as s:

        async def sender() -> None:
            while queue:
                team, body = queue.pop()
                async with s.post(PATH, params={"groupKey": team}, data=body,
                                  headers=headers) as r:  # fmt: skip
                    if r.status != 202:
                        raise RuntimeError(f"batch refused: {r.status} {await r.text()}")

        await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
    return time.monotonic() - t0


async def batch_run(bench: Bench, n: int) -> dict[str, Any]:
    seeded = await fresh(bench.settings)
    batches = _batches(seeded.resource_type, bench.settings.partitions, n)
    with procs(bench.settings, bench.workdir) as ps:
        gw, port = ps.stage("gateway")
        proj, _ = ps.stage("projector")
        worker, _ = ps.stage("worker")
        await wait_leases(bench)
        assert port is not None
        meters = {"gateway": gw.target(), "worker": worker.target(), "projector": proj.target()}
        with CpuMeter(**meters) as cpu, ServerCpu() as servers:
            t0 = time.monotonic()
            upload_s = await _send(port, seeded.key, batches)
            t_done = await wait_drained(bench, within=max(120, n / 50))
    counts = await count_applied(bench)
    if counts["events"] != len(batches) or counts["resources"] != n:
        raise RuntimeError(f"expected {len(batches)} batches, {n} resources; found {counts}")
    seconds = t_done - t0
    return {
        "items": n,
        "batches": len(batches),
        "items_per_s": n / seconds,
        "seconds": seconds,
        "upload_s": upload_s,
        "cpu_pct": cpu.result,
        "cpu_us_per_item": {
            k: round(1e6 * v / n, 1) for k, v in {**cpu.seconds, **servers.seconds}.items()
        },
        "counts": counts,
    }


async def figure12(bench: Bench) -> Figure:
    n = bench.sizes.backlog
    fig = Figure(
        12,
        f"{n} items as batch events of {BATCH} through one gateway, accepted -> applied",
        unit="items/s",
        floor_title="figure 3's single-event backlog rate, same run",
        target="ratio >= 2",
    )
    single = bench.cache.get("backlog_1")
    if single is None:
        single = await backlog_run(bench, n, workers=1)
        bench.cache["backlog_1"] = single
    run = await batch_run(bench, n)
    fig.value = run["items_per_s"]
    fig.floor = single["eps"]
    fig.ratio = fig.value / fig.floor
    fig.met = fig.ratio >= 2
    fig.details = {"batch": run, "single": single}
    fig.note = (
        f"{run['seconds']:.2f}s from the first POST to all applied (uploads took "
        f"{run['upload_s']:.2f}s); CPU per item: {run['cpu_us_per_item']}; figure 3 "
        f"(single events): {single['eps']:,.0f}/s, CPU per event {single['cpu_us_per_event']}"
    )
    return fig
