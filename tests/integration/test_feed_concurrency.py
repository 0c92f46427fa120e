"""The change feed's guarantee under concurrent projector processes: a consumer following
``next`` from the start sees every change exactly once, and each resource's versions in
order, while a consumer of the plain identity cursor (``id > last``) loses changes.

Three projector processes (:mod:`tests.feed_projector`, two partitions each) and a
worker process apply thousands of events that the in-process gateway accepts. While they
run, the test freezes one projector (SIGSTOP) at a moment its transaction is open and has
already copied its history rows (seen in ``pg_stat_activity``: idle in transaction, the
last statement a history COPY or later); those rows hold ids below ones the other
projectors go on committing. The freeze lasts until the identity-cursor consumer has read
past every id handed out before it (a positive barrier), then the projector continues
and commits. The identity consumer has then passed rows that commit later and never
sees them: the teeth. The feed consumer, polling the gateway all along, must see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from shared.config import Settings
from tests.conftest import ADMIN, Seeded, seed_directory
from tests.e2e.procs import Stage, stage_env
from tests.helpers import INGEST, emp

ROOT_DIR = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # four processes and thousands of events: ~20-40 s

PARTITIONS = 6
PROJECTORS = [[0, 3], [1, 4], [2, 5]]
GROUPS = [f"g{n}" for n in range(12)]
IDS = [f"r{n}" for n in range(10)]
MIN_EVENTS = 3000
FREEZES = 3
Key = tuple[str, str, str, int]

#: the frozen backend's transaction holds history rows: its last statement copied them
#: (or came after that copy: the receipts, the position, the notification)
MID_TRANSACTION_SQL = """
SELECT pid FROM pg_stat_activity
WHERE application_name = $1 AND state = 'idle in transaction' AND backend_xid IS NOT NULL
  AND (query LIKE 'COPY%resource_changes%' OR query LIKE 'COPY%ingest_events%'
       OR query LIKE 'COPY%sync_issues%' OR query LIKE '%pg_notify%')
"""
LAST_ID_SQL = "SELECT last_value FROM resource_changes_id_seq"
NAIVE_SQL = (
    "SELECT id, resource_type, group_key, resource_id, version FROM resource_changes"
    " WHERE id > $1 ORDER BY id LIMIT 1000"
)


@dataclass
class Consumers:
    naive: list[Key] = field(default_factory=list)
    naive_at: int = 0
    feed: list[Key] = field(default_factory=list)
    stop: bool = False


def with_app_name(dsn: str, name: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={name}"


@contextlib.contextmanager
def processes(settings: Settings, tmp: Path) -> Iterator[list[Stage]]:
    started: list[Stage] = []
    try:
        env = {**stage_env(settings), "PYTHONPATH": str(ROOT_DIR)}
        started.append(Stage("worker", env, tmp).start())
        for n, parts in enumerate(PROJECTORS):
            assert settings.database_url
            penv = {**env, "DATABASE_URL": with_app_name(settings.database_url, f"feedproj{n}")}
            argv = [sys.executable, "-m", "tests.feed_projector", ",".join(map(str, parts))]
            started.append(Stage(f"feedproj{n}", penv, tmp, argv).start())
        yield started
    finally:
        for s in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(s.pid, signal.SIGCONT)
            s.stop()


async def produce(c: TestClient[Any, Any], who: Seeded, done: asyncio.Event) -> int:
    """Events (each one changes its resource) until ``done`` and MIN_EVENTS; how many."""
    sent = 0

    async def one(n: int) -> None:
        gk, rid = GROUPS[n % len(GROUPS)], IDS[(n // len(GROUPS)) % len(IDS)]
        while True:
            r = await c.post(
                f"{INGEST}/event/employee",
                params={"groupKey": gk},
                json=emp(rid, employee={"username": f"u{n}"}),
                headers=who.headers,
            )
            if r.status == 202:
                return
            assert r.status in (429, 503), await r.text()
            await asyncio.sleep(0.05)

    while sent < MIN_EVENTS or not done.is_set():
        assert sent < 30_000, "the freezes never happened"
        await asyncio.gather(*(one(sent + i) for i in range(30)))
        sent += 30
        await asyncio.sleep(0.01)
    return sent


async def follow_naive(pool: asyncpg.Pool, seen: Consumers) -> None:
    while not seen.stop:
        for r in await pool.fetch(NAIVE_SQL, seen.naive_at):
            seen.naive.append((r[1], r[2], r[3], r[4]))
            seen.naive_at = r[0]
        await asyncio.sleep(0.01)


async def follow_feed(c: TestClient[Any, Any], seen: Consumers) -> None:
    params = {"limit": "1000", "wait": "1"}
    while not seen.stop:
        r = await c.get("/api/v1/changes", params=params, headers=ADMIN)
        assert r.status == 200, await r.text()
        body = await r.json()
        seen.feed += [
            (i["resourceType"], i["groupKey"], i["id"], i["version"]) for i in body["items"]
        ]
        params["after"] = body["next"]


async def freeze_once(pool: asyncpg.Pool, projector: Stage, name: str, seen: Consumers) -> None:
    """SIGSTOP ``projector`` inside a transaction holding history rows, keep it stopped
    until the identity consumer passed every id handed out so far, then SIGCONT."""
    for _ in range(5000):
        os.killpg(projector.pid, signal.SIGSTOP)
        if await pool.fetchval(MID_TRANSACTION_SQL, name):
            break
        os.killpg(projector.pid, signal.SIGCONT)
        await asyncio.sleep(random.uniform(0.001, 0.01))
    else:
        raise AssertionError(f"{name} was never caught inside a transaction")
    try:
        handed_out = await pool.fetchval(LAST_ID_SQL)
        deadline = time.monotonic() + 30
        while seen.naive_at <= handed_out:  # the other projectors commit later ids
            assert time.monotonic() < deadline, "the identity consumer never passed the freeze"
            await asyncio.sleep(0.01)
    finally:
        os.killpg(projector.pid, signal.SIGCONT)


async def test_feed_sees_every_change_once_in_order_where_an_identity_cursor_loses_some(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    settings = replace(settings, partitions=PARTITIONS)
    seen = Consumers()
    async with TestClient(TestServer(create_app(settings))) as c:
        who = await seed_directory(c)
        with processes(settings, tmp_path) as procs:
            done = asyncio.Event()
            producing = asyncio.create_task(produce(c, who, done))
            readers = [
                asyncio.create_task(follow_naive(pool, seen)),
                asyncio.create_task(follow_feed(c, seen)),
            ]
            try:
                for n in range(FREEZES):
                    await asyncio.sleep(0.3)
                    k = n % len(PROJECTORS)
                    await freeze_once(pool, procs[1 + k], f"feedproj{k}", seen)
                done.set()
                sent = await producing
                deadline = time.monotonic() + 90
                while len(seen.feed) < sent:
                    assert time.monotonic() < deadline, (len(seen.feed), sent, procs[0].log())
                    await asyncio.sleep(0.1)
                last = await pool.fetchval("SELECT max(id) FROM resource_changes")
                while seen.naive_at < last:
                    assert time.monotonic() < deadline, "the identity consumer did not catch up"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # after the positive barriers: nothing more comes
            finally:
                seen.stop = True
                for t in [producing, *readers]:
                    t.cancel()
                await asyncio.gather(producing, *readers, return_exceptions=True)
    stored = {
        (r[0], r[1], r[2], r[3])
        for r in await pool.fetch(
            "SELECT resource_type, group_key, resource_id, version FROM resource_changes"
        )
    }
    assert len(stored) == sent
    # the feed: every change exactly once, each resource's versions in order
    assert len(seen.feed) == len(set(seen.feed)) == sent
    assert set(seen.feed) == stored
    versions: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for rt, gk, rid, v in seen.feed:
        versions[(rt, gk, rid)].append(v)
    assert all(vs == list(range(1, len(vs) + 1)) for vs in versions.values())
    # the identity cursor, over the same run, lost the rows the frozen projectors held
    lost = stored - set(seen.naive)
    assert lost, "the identity cursor saw everything: the freezes did not bite"
    assert len(seen.naive) == len(set(seen.naive))
