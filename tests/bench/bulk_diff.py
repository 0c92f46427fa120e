"""Benchmark: the worker diffing a 1,000,000-resource scope against a snapshot with 1% changed.

    python -m tests.bench.bulk_diff [--resources 1000000] [--changed 0.01]

Setup (not measured): a scope whose write model holds N resources; the new
snapshot (N items: 80% of the changed share updated, 10% new, 10% of the old
ones left out, so deleted) uploaded as a multi-part session of <= 4 MiB parts
through the gateway's own session scripts. Measured: a separate worker process
(so its peak RSS is the diff's alone) draining that partition: the streamed
diff, the staging of change entries and the one MULTI/EXEC commit. Prints a
human summary, then ONE JSON line with the figures (last line of stdout).

Servers: with ``DATABASE_URL`` / ``REDIS_URL`` set, database
``ingestd_bench_bulk`` on that PostgreSQL (created, migrated, emptied) and Redis
database 12 on that server (flushed); unset, embedded servers in a temp folder.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg
import orjson
from redis.asyncio import Redis

from services.gateway.bulk import BULK_LIMIT
from services.worker.drain import Drainer
from shared.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.events import RawMeta, new_event_id
from shared.pg.migrate import migrate
from shared.pg.pool import create_pool
from shared.pg.registry import RegistryCache, RegistryStore
from shared.pg.resources import ResourceStore
from shared.redis import keyspace as ks
from shared.redis.sessions import Scope, SessionStore
from shared.schema_rules import content_hash, prepare_schema
from tests.conftest import EMPLOYEE_SCHEMA, TABLES

DB_NAME = "ingestd_bench_bulk"
REDIS_DB = 12
PARTITIONS = 16
GROUP_KEY = "bench"


def doc(i: int, rev: int = 0) -> dict[str, Any]:
    return {
        "employeeId": f"emp-{i:08d}",
        "active": i % 7 != 0,
        "employee": {
            "username": f"user{i}",
            "email": f"user{i}{'.v' + str(rev) if rev else ''}@example.com",
            "age": 20 + i % 45,
        },
    }


# ---- servers ----------------------------------------------------------------------------


class Servers:
    def __init__(self) -> None:
        self.started: list[Any] = []
        self.tmp: str | None = None

    async def start(self) -> tuple[str, str]:
        dsn, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
        if not dsn or not redis_url:
            self.tmp = tempfile.mkdtemp(prefix="ingestd-bulk-bench-")
            os.chmod(self.tmp, 0o755)  # pgserver drops root to its own user
        if dsn:
            conn = await asyncpg.connect(dsn)
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", DB_NAME):
                    await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
            finally:
                await conn.close()
            dsn = urlunparse(urlparse(dsn)._replace(path="/" + DB_NAME))
        else:
            assert self.tmp is not None
            pg = EmbeddedPostgres(Path(self.tmp) / "pg")
            dsn = pg.start()
            self.started.append(pg)
        if redis_url:
            redis_url = urlunparse(urlparse(redis_url)._replace(path=f"/{REDIS_DB}"))
        else:
            assert self.tmp is not None
            rd = EmbeddedRedis(Path(self.tmp) / "redis")
            redis_url = rd.start()
            self.started.append(rd)
        await migrate(dsn)
        return dsn, redis_url

    def stop(self) -> None:
        for s in reversed(self.started):
            s.stop()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---- setup --------------------------------------------------------------------------------


async def setup(dsn: str, redis_url: str, n: int, changed: float) -> dict[str, Any]:
    pool = await create_pool(dsn)
    redis = Redis.from_url(redis_url)
    try:
        await pool.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        await redis.flushdb()
        store = RegistryStore(pool)
        group = await store.create_group("bench", "_bench")
        table = await store.create_schema(
            group.id, "employee", prepare_schema(EMPLOYEE_SCHEMA), None
        )
        integ, _ = await store.create_integration("bench", group.id)
        rt = table.resource_type
        p = ks.partition_of(rt, GROUP_KEY, PARTITIONS)
        n_changed = int(n * changed)
        n_deleted = n_created = n_changed // 10
        n_updated = n_changed - n_deleted - n_created
        t0 = time.perf_counter()
        await _write_model(redis, ks.state_key(p, rt, GROUP_KEY), n)
        t_state = time.perf_counter() - t0
        # the snapshot: drop the first n_deleted, change the next n_updated, add n_created
        items = (
            doc(i, rev=1) if i < n_deleted + n_updated else doc(i)
            for i in range(n_deleted, n + n_created)
        )
        t0 = time.perf_counter()
        eid, parts, size = await _upload(redis, p, rt, integ.id, items)
        t_upload = time.perf_counter() - t0
        return {
            "partition": p,
            "event_id": eid,
            "parts": parts,
            "snapshot_mib": round(size / (1 << 20), 1),
            "expected": {
                "created": n_created,
                "updated": n_updated,
                "deleted": n_deleted,
                "unchanged": n - n_deleted - n_updated,
            },
            "setup_s": {"write_model": round(t_state, 1), "upload": round(t_upload, 1)},
        }
    finally:
        await pool.close()
        await redis.aclose()


async def _write_model(redis: Redis, key: str, n: int) -> None:
    """The scope as the worker left it after earlier syncs: id -> content hash|version 1."""
    batch: dict[str, str] = {}
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        d = doc(i)
        batch[d["employeeId"]] = f"{content_hash(d)}|1"
        if len(batch) == 10_000:
            pipe.hset(key, mapping=batch)  # type: ignore[arg-type]
            batch = {}
            if len(pipe) >= 10:
                await pipe.execute()
    batch[ks.STATE_LIVE_FIELD] = str(n)
    batch[ks.STATE_DEAD_FIELD] = "0"
    batch[ks.STATE_LOADED_FIELD] = ks.STATE_FORMAT.decode()
    pipe.hset(key, mapping=batch)  # type: ignore[arg-type]
    await pipe.execute()


async def _upload(
    redis: Redis, p: int, rt: str, integration: str, items: Any
) -> tuple[str, int, int]:
    """Send the snapshot as session parts of at most 4 MiB, as a gateway stores them."""
    scope = Scope(p, rt, GROUP_KEY, "bench-session")
    store = SessionStore(redis)
    received_ms = int(time.time() * 1000)

    def commit_meta(eid: str) -> bytes:
        return RawMeta(
            eid, "bulk", integration, "employee", rt, GROUP_KEY, "bench", None, received_ms,
            None, {"session": scope.session, "partial": False},
        ).encode()  # fmt: skip

    parts, size, buf, buf_len = 0, 0, [], 2
    eid = ""

    async def send(final: bool) -> None:
        nonlocal parts, size, eid
        body = b"[" + b",".join(buf) + b"]"
        parts += 1
        size += len(body)
        got = await store.add_part(
            scope, integration, new_event_id(), parts, body, hashlib.sha256(body).hexdigest(),
            final, commit_meta, 86_400,
        )  # fmt: skip
        assert got is not None and got.outcome in ("stored", "queued"), got
        eid = got.event_id

    for item in items:
        raw = orjson.dumps(item)
        if buf_len + len(raw) + 1 > BULK_LIMIT:
            await send(False)
            buf, buf_len = [], 2
        buf.append(raw)
        buf_len += len(raw) + 1
    await send(True)
    return eid, parts, size


# ---- the measured worker (a child process) --------------------------------------------------


def peak_rss_mib() -> float:
    """VmHWM: this process's peak RSS (ru_maxrss would include the parent's, kept across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def child(dsn: str, redis_url: str, p: int) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    redis = Redis.from_url(redis_url)
    pool = await create_pool(dsn, max_size=2)
    reg = RegistryCache(RegistryStore(pool), 500)
    await reg.refresh(force=True)
    base_rss = peak_rss_mib()
    d = Drainer(redis, ResourceStore(pool), reg, p, 500, "bench-worker")
    t0 = time.perf_counter()
    assert await d.run(3600, idle_exit=True)
    wall = time.perf_counter() - t0
    last = await redis.xrevrange(ks.changes_stream(p), count=1)
    entries = await redis.xlen(ks.changes_stream(p))
    receipt = orjson.loads(last[0][1][ks.F_CHANGE]) if last else {}
    await pool.close()
    await redis.aclose()
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "startup_rss_mib": round(base_rss, 1),
        "change_entries": entries,
        "totals": receipt.get("t"),
        "unchanged": receipt.get("u"),
        "status": receipt.get("s"),
    }


def _time_v_rss(report: str) -> float | None:
    """'Maximum resident set size (kbytes)' from /usr/bin/time -v, in MiB."""
    for line in report.splitlines():
        if "Maximum resident set size" in line:
            return round(int(line.rsplit(":", 1)[1]) / 1024, 1)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--resources", type=int, default=1_000_000)
    ap.add_argument("--changed", type=float, default=0.01, help="share changed (default 0.01)")
    ap.add_argument("--child", nargs=3, metavar=("DSN", "REDIS", "P"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        dsn, redis_url, p = args.child
        print(json.dumps(asyncio.run(child(dsn, redis_url, int(p)))))
        return
    servers = Servers()
    try:
        dsn, redis_url = asyncio.run(servers.start())
        info = asyncio.run(setup(dsn, redis_url, args.resources, args.changed))
        cmd = [sys.executable, "-m", "tests.bench.bulk_diff", "--child", dsn, redis_url]
        timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
        out = subprocess.run(
            [*timer, *cmd, str(info["partition"])], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"worker process failed ({out.returncode})")
        worker = json.loads(out.stdout.strip().splitlines()[-1])
        worker["time_v_max_rss_mib"] = _time_v_rss(out.stderr)
        log_lines = [ln for ln in out.stderr.splitlines() if not ln.startswith("\t")]
        sys.stderr.write("\n".join(log_lines) + "\n")  # the worker's log: phase timings
    finally:
        servers.stop()
    totals = worker.get("totals") or {}
    got = {**totals, "unchanged": worker.get("unchanged")}
    result = {
        "bench": "bulk_diff",
        "resources": args.resources,
        "changed_share": args.changed,
        "parts": info["parts"],
        "snapshot_mib": info["snapshot_mib"],
        "wall_s": worker["wall_s"],
        "resources_per_s": round(args.resources / worker["wall_s"]) if worker["wall_s"] else None,
        "peak_rss_mib": worker["peak_rss_mib"],
        "peak_rss_mib_time_v": worker.get("time_v_max_rss_mib"),
        "startup_rss_mib": worker["startup_rss_mib"],
        "change_entries": worker["change_entries"],
        "counts": got,
        "counts_ok": got == info["expected"] and worker.get("status") == "applied",
        "setup_s": info["setup_s"],
    }
    print(
        f"worker diff of {args.resources:,} resources ({args.changed:.1%} changed, "
        f"{info['parts']} parts, {info['snapshot_mib']} MiB): {worker['wall_s']} s, "
        f"peak RSS {worker['peak_rss_mib']} MiB (after startup {worker['startup_rss_mib']} MiB); "
        f"counts {'as expected' if result['counts_ok'] else 'WRONG: ' + str(got)}"
    )
    print(json.dumps(result))
    if not result["counts_ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
