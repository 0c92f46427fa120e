"""``make bench`` / ``python -m tests.bench``: every figure beside its floor, same run.

Figures 1 and 2 alternate floor and system runs and take the median of the per-round
ratios. Prints a table and writes every figure (absolute numbers, floor, ratio and the
raw runs) to ``bench-results.json``. ``--quick`` is a smoke run with small
sizes; ``--only 1,3`` picks figures; ``--profile DIR`` adds a pass of the
figure-3 workload with worker and projector under ``py-spy record`` and prints
their hotspots.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench import (
    fig_batch,
    fig_bulk,
    fig_durability,
    fig_feed,
    fig_gateway,
    fig_integration_data,
    fig_live,
    fig_pipeline,
    fig_shaping,
    fig_sources,
    fig_webhooks,
)
from tests.bench.core import FULL, QUICK, Bench, Figure, cpus
from tests.bench.env import bench_settings, start_servers
from tests.bench.loadgen import pick_generator
from tests.bench.profile import format_hotspots, hotspots

FigureFn = Callable[[Bench], Awaitable[Figure]]
FIGURES: dict[int, tuple[str, FigureFn]] = {
    1: ("gateway single-event req/s", fig_gateway.figure1),
    2: ("gateway bulk MB/s", fig_bulk.figure2),
    3: ("backlog events/s", fig_pipeline.figure3),
    4: ("unchanged snapshot resources/s", fig_bulk.figure4),
    5: ("202 -> applied latency", fig_pipeline.figure5),
    6: ("1 vs 2 workers", fig_pipeline.figure6),
    7: ("bulk diff peak RSS", fig_bulk.figure7),
    8: ("pull full run records/s", fig_sources.figure8),
    9: ("shaped unchanged snapshot resources/s", fig_shaping.figure9),
    10: ("integration data GET / ingest req/s", fig_integration_data.figure10),
    11: ("change feed read changes/s", fig_feed.figure11),
    12: ("batch-event items/s / single-event rate", fig_batch.figure12),
    13: ("strict durability / default 202 req/s", fig_durability.figure13),
    14: ("commit -> webhook received latency", fig_webhooks.figure14),
    15: ("live applied events/s, ingestd / direct synchronous peer", fig_live.figure15),
    16: ("live CPU per event at 50% / 90% of max vs backlog", fig_live.figure16),
}
# 5 uses the maximum rates 1, 3 measured; 16 the maximum live rate 15 measured (and 3's costs)
ORDER = [1, 2, 3, 6, 5, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--only", default="", help="comma-separated figure numbers, e.g. 1,3")
    ap.add_argument("--out", default="bench-results.json", type=Path)
    ap.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=float, help="seconds per load run (figures 1, 2)")
    ap.add_argument("--rounds", type=int, help="alternating floor/system rounds (1, 2)")
    ap.add_argument("--events", type=int, help="backlog size for figures 3 and 6")
    ap.add_argument("--profile", type=Path, help="also profile worker+projector into DIR")
    ap.add_argument("--data-dir", type=Path, default=Path(".ingestd/bench"))
    ap.add_argument(
        "--redis-url",
        help="an external Redis (its db 14) instead of the private redis-server as deployed "
        "(appendonly yes, appendfsync everysec) the bench starts when redis-server is on PATH",
    )
    ap.add_argument("--logs", type=Path, help="keep the stages' logs in DIR (default: dropped)")
    return ap.parse_args(argv)


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return f"{s} {unit}".strip()


def table(figs: list[Figure]) -> str:
    rows = [("#", "figure", "value", "floor", "ratio", "target", "verdict")]
    for f in figs:
        verdict = {True: "met", False: "NOT met", None: "-"}[f.met]
        if f.status != "measured":
            verdict = f.status
        rows.append(
            (
                str(f.id),
                f.title,
                fmt(f.value, f.unit) if f.status == "measured" else f.note,
                fmt(f.floor),
                fmt(f.ratio),
                f.target,
                verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def run_figure(bench: Bench, n: int) -> Figure:
    name, fn = FIGURES[n]
    t0 = time.monotonic()
    print(f"[bench] figure {n}: {name} ...", flush=True)
    try:
        fig = await fn(bench)
    except Exception as e:
        traceback.print_exc()
        fig = Figure(n, name, status="error", note=f"error: {e}".splitlines()[0][:200])
    fig.details["elapsed_s"] = round(time.monotonic() - t0, 1)
    print(
        f"[bench] figure {n}: {fig.status} in {fig.details['elapsed_s']}s; {fig.note}", flush=True
    )
    return fig


async def profile_pass(bench: Bench) -> dict[str, Any]:
    assert bench.profile_dir is not None
    bench.profile_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"[bench] profile pass: worker + projector under py-spy -> {bench.profile_dir}", flush=True
    )
    run = await fig_pipeline.backlog_run(
        bench, bench.sizes.backlog, workers=1, profile=bench.profile_dir
    )
    out: dict[str, Any] = {"run_under_profiler": run}
    for name in ("worker0", "projector"):
        raw = bench.profile_dir / f"{name}.raw"
        if raw.exists():
            out[name] = hotspots(raw)
            print(format_hotspots(name, out[name]))
    return out


async def main_async(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    wanted = [int(x) for x in args.only.split(",") if x.strip()] or ORDER
    order = [n for n in ORDER if n in wanted]
    for n in order:
        bench.figures[n] = await run_figure(bench, n)
    result: dict[str, Any] = {"figures": [bench.figures[n].as_json() for n in sorted(order)]}
    if bench.profile_dir is not None:
        try:
            result["profile"] = await profile_pass(bench)
        except Exception as e:
            traceback.print_exc()
            result["profile"] = {"error": str(e)}
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sizes = QUICK if args.quick else FULL
    if args.duration:
        sizes = replace(sizes, duration=args.duration)
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    if args.events:
        sizes = replace(sizes, backlog=args.events)
    generator = pick_generator(args.generator)
    started = time.monotonic()
    servers = start_servers(args.data_dir, args.redis_url)
    try:
        with tempfile.TemporaryDirectory(prefix="ingestd-bench-") as tmp:
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
            bench = Bench(
                settings=bench_settings(servers),
                servers=servers,
                sizes=sizes,
                generator=generator,
                workdir=args.logs or Path(tmp),
                profile_dir=args.profile,
                connections=args.connections,
            )
            print(f"[bench] servers: {servers.description}", flush=True)
            print(
                f"[bench] load generator: {generator}; {cpus()} CPUs shared by the load "
                "generator, the servers under test, PostgreSQL and Redis",
                flush=True,
            )
            result = asyncio.run(main_async(args, bench))
    finally:
        servers.stop()
    figs = [Figure(**f) for f in result["figures"]]
    result.update(
        {
            "started_at": datetime.now(UTC).isoformat(),
            "elapsed_s": round(time.monotonic() - started, 1),
            "quick": args.quick,
            "machine": {
                "cpus": cpus(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "servers": servers.description,
            "generator": generator,
            "sizes": sizes.__dict__,
        }
    )
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(table(figs))
    print()
    for f in figs:
        if f.status == "measured" and f.note:
            print(f"({f.id}) {f.note}")
    print(
        f"\n{cpus()} CPUs: the load generator, the measured processes, PostgreSQL and Redis "
        "all share them, so every figure is a ratio to a floor measured in this run."
    )
    print(f"figures written to {args.out} ({result['elapsed_s']}s)")
    return 1 if any(f.status == "error" for f in figs) else 0


if __name__ == "__main__":
    sys.exit(main())
