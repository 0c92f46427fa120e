"""Test fixtures: real PostgreSQL and Redis, clean state for every test.

``DATABASE_URL`` / ``REDIS_URL`` select the servers (CI sets them to the
machine's services); unset, embedded servers are started once per session.
With ``DATABASE_URL`` set, a run uses its own database ``ingestd_test_<pid>`` on
that server (dropped at the end), never the one the URL names. With
``REDIS_URL`` set, a run flushes exactly the Redis database the URL names, and
only after claiming it (a claim key naming this run's pid, host and start time):
a database whose claim names a live run on this host (or any run on another
host, until its TTL) is refused, so concurrent runs must each name their own
database number; a claim left by a crashed run is taken over. Every test that
uses ``settings`` starts from truncated tables and a flushed Redis database.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg
import psutil
import pytest
import redis as redis_sync
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.gateway.app import create_app
from services.projector.main import Projector
from services.worker.drain import Drainer
from shared.config import Settings
from shared.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.pg.migrate import migrate
from shared.pg.pool import create_pool
from shared.pg.registry import RegistryCache, RegistryStore
from shared.pg.resources import ResourceStore
from shared.secrets import SecretBox

ADMIN_TOKEN = "test-admin-token"
SECRET_KEY = SecretBox.generate_key()  # seals secret source params in this run
TEST_DB = f"ingestd_test_{os.getpid()}"
CLAIM_KEY = "ingestd-test-run-claim"


async def _create_database(url: str) -> str:
    parsed = urlparse(url)
    test_url = urlunparse(parsed._replace(path="/" + TEST_DB))
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{TEST_DB}"')
    finally:
        await conn.close()
    return test_url


async def _drop_database(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
    finally:
        await conn.close()


CLAIM_TTL_S = 900  # refreshed by every test; bounds how long a claim from another host holds


def _claim_value() -> str:
    me = psutil.Process()
    return json.dumps({"pid": me.pid, "host": socket.gethostname(), "started": me.create_time()})


CLAIM = _claim_value()


def live_claim_holder(raw: bytes | str) -> str | None:
    """Who holds a claim, when that run may still be going; None when it is gone. A pid on
    this host is alive if a process with that pid and start time exists (a bare pid, the
    old format, if the pid exists); a claim from another host cannot be checked, so it
    holds until its TTL runs out."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    try:
        claim = json.loads(text)
    except ValueError:
        claim = None
    if isinstance(claim, int):
        claim = {"pid": claim, "host": socket.gethostname(), "started": None}
    if not isinstance(claim, dict) or not isinstance(claim.get("pid"), int):
        return None
    pid, host, started = claim["pid"], claim.get("host"), claim.get("started")
    if host != socket.gethostname():
        return f"pid {pid} on host {host} (not checkable from here)"
    try:
        proc = psutil.Process(pid)
        if isinstance(started, (int, float)) and abs(proc.create_time() - started) > 1:
            return None  # the pid was reused by another process
        cmdline = " ".join(proc.cmdline())[:200]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return f"pid {pid} on this host: {cmdline}"


def _refuse(url: str, holder: str) -> None:
    pytest.exit(
        f"REDIS_URL={url}: that Redis database is in use by another test run ({holder}). "
        "Each concurrent run needs a database number of its own: set REDIS_URL to another "
        f"one, or wait for that run to end (its claim key {CLAIM_KEY!r} expires "
        f"{CLAIM_TTL_S} s after its last test).",
        returncode=pytest.ExitCode.USAGE_ERROR,
    )


def claim_redis_db(url: str) -> None:
    """Claim exactly the database ``url`` names for this run, or stop the run with a clear
    message when another live run holds it. A stale claim (its run is gone) is taken over."""
    with redis_sync.Redis.from_url(url) as r:
        for _ in range(10):
            if r.set(CLAIM_KEY, CLAIM, nx=True, ex=CLAIM_TTL_S):
                return
            with r.pipeline() as pipe:
                try:
                    pipe.watch(CLAIM_KEY)
                    raw = pipe.get(CLAIM_KEY)
                    if raw is not None and raw.decode(errors="replace") != CLAIM:
                        holder = live_claim_holder(raw)
                        if holder:
                            _refuse(url, holder)
                    pipe.multi()
                    pipe.set(CLAIM_KEY, CLAIM, ex=CLAIM_TTL_S)
                    pipe.execute()
                    return
                except WatchError:  # changed meanwhile: look again
                    continue
    raise RuntimeError(f"could not claim {url}: its claim key keeps changing")


async def flush_claimed(url: str) -> None:
    """FLUSHDB and renew this run's claim in one transaction, unless another live run
    holds the database by now (then stop: flushing would destroy its data)."""
    r = Redis.from_url(url)
    try:
        for _ in range(10):
            async with r.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(CLAIM_KEY)
                    raw = await pipe.get(CLAIM_KEY)
                    if raw is not None and raw.decode(errors="replace") != CLAIM:
                        holder = live_claim_holder(raw)
                        if holder:
                            _refuse(url, holder)
                    pipe.multi()
                    pipe.flushdb()
                    pipe.set(CLAIM_KEY, CLAIM, ex=CLAIM_TTL_S)
                    await pipe.execute()
                    return
                except WatchError:
                    continue
        raise RuntimeError(f"could not flush {url}: its claim key keeps changing")
    finally:
        await r.aclose()


async def _release_redis_db(url: str) -> None:
    r = Redis.from_url(url)
    try:
        async with r.pipeline(transaction=True) as pipe:
            await pipe.watch(CLAIM_KEY)
            raw = await pipe.get(CLAIM_KEY)
            if raw is None or raw.decode(errors="replace") == CLAIM:
                pipe.multi()
                pipe.flushdb()
                await pipe.execute()
    except WatchError:
        pass  # someone else's by now: leave it
    finally:
        await r.aclose()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    started: list[Any] = []
    dsn = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    base = Path(tmp_path_factory.mktemp("servers"))
    admin_dsn = dsn
    claimed = bool(redis_url)
    if redis_url:  # first: a refused run leaves no database behind
        claim_redis_db(redis_url)
    else:
        rd = EmbeddedRedis(base / "redis")
        redis_url = rd.start()
        started.append(rd)
    if dsn:
        dsn = asyncio.run(_create_database(dsn))
    else:
        pg = EmbeddedPostgres(base / "pg")
        dsn = pg.start()
        started.append(pg)
    asyncio.run(migrate(dsn))
    yield dsn, redis_url
    if admin_dsn:
        asyncio.run(_drop_database(admin_dsn))
    if claimed:
        asyncio.run(_release_redis_db(redis_url))
    for s in reversed(started):
        s.stop()


TABLES = [
    "webhook_deliveries",
    "webhooks",
    "pull_transfers",
    "integration_data_changes",
    "integration_data",
    "source_run_events",
    "source_runs",
    "sources",
    "source_spec_revisions",
    "source_specs",
    "rejected_bodies",
    "resources_rebuild",
    "resource_changes",
    "resources",
    "ingest_events",
    "sync_issues",
    "projector_positions",
    "ingest_keys",
    "integrations",
    "schema_versions",
    "schemas",
    "schema_groups",
]


async def reset_state(dsn: str, redis_url: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    await flush_claimed(redis_url)


@pytest.fixture
async def settings(servers: tuple[str, str]) -> Settings:
    dsn, redis_url = servers
    await reset_state(dsn, redis_url)
    return replace(
        Settings.from_env({}),
        database_url=dsn,
        redis_url=redis_url,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        partitions=4,
        registry_poll_ms=100,
    )


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url
    p = await create_pool(settings.database_url)
    yield p
    await p.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    assert settings.redis_url
    r = Redis.from_url(settings.redis_url)
    yield r
    await r.aclose()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """An in-process gateway (the app factory `ingestd gateway` runs)."""
    server = TestServer(create_app(settings))
    async with TestClient(server) as c:
        yield c


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

EMPLOYEE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "employeeId": {"type": "string"},
        "active": {"type": "boolean"},
        "employee": {
            "type": "object",
            "properties": {
                "username": {"type": "string"},
                "email": {"type": "string"},
                "age": {"type": "integer"},
            },
        },
    },
    "required": ["employeeId"],
    "resmo": {
        "id": "employeeId",
        "name": "$.employee.username",
        "importantFields": ["employeeId", "$.employee.email", "active"],
    },
}


@dataclass
class Seeded:
    group_id: str
    integration_id: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Ingest-Key": self.key, "Content-Type": "application/json"}


async def seed_directory(
    c: Any,
    prefix: str = "_directory",
    table: str = "employee",
    schema: dict[str, Any] | None = None,
) -> Seeded:
    """Schema group + table + integration through the admin API. ``c`` is an in-process
    TestClient or an aiohttp ClientSession with a base URL (a gateway process)."""
    r = await c.post(
        "/admin/v1/schema-groups", json={"name": prefix, "prefix": prefix}, headers=ADMIN
    )
    assert r.status == 201, await r.text()
    gid = (await r.json())["id"]
    r = await c.post(
        f"/admin/v1/schema-groups/{gid}/schemas",
        json={"table": table, "schema": schema or EMPLOYEE_SCHEMA},
        headers=ADMIN,
    )
    assert r.status == 201, await r.text()
    r = await c.post(
        "/admin/v1/integrations", json={"name": "HR", "schemaGroup": gid}, headers=ADMIN
    )
    assert r.status == 201, await r.text()
    body = await r.json()
    return Seeded(gid, body["id"], body["ingestKey"], body["keyId"])


@pytest.fixture
async def seeded(client: TestClient[Any, Any]) -> Seeded:
    return await seed_directory(client)


class InlinePipeline:
    """Runs the worker's Drainer and the Projector in-process until both streams are idle."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, redis: Redis) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.resources = ResourceStore(pool)
        self.registry = RegistryCache(RegistryStore(pool), 100)
        self.projector = Projector(redis, self.resources, settings.partitions)

    async def run(self) -> None:
        await self.registry.refresh(force=True)
        for p in range(self.settings.partitions):
            d = Drainer(
                self.redis,
                self.resources,
                self.registry,
                p,
                self.settings.drain_batch,
                "test-worker",
                tombstone_ttl_s=self.settings.tombstone_ttl_s,
            )
            # project alongside: a worker rebuilding a scope waits for the projector
            done = asyncio.Event()
            projecting = asyncio.create_task(self._project_until(p, done))
            try:
                assert await d.run(60, idle_exit=True)
            finally:
                done.set()
                await projecting
            assert await self.projector.drain_idle(p)

    async def _project_until(self, p: int, done: asyncio.Event) -> None:
        while not done.is_set():
            await self.projector.drain_idle(p)
            await asyncio.sleep(0.005)


@pytest.fixture
async def pipeline(settings: Settings, pool: asyncpg.Pool, redis: Redis) -> InlinePipeline:
    return InlinePipeline(settings, pool, redis)


@pytest.fixture
def registry_store(pool: asyncpg.Pool) -> RegistryStore:
    return RegistryStore(pool)


@pytest.fixture
def resource_store(pool: asyncpg.Pool) -> ResourceStore:
    return ResourceStore(pool)


@pytest.fixture
async def scratch_dsn(settings: Settings) -> AsyncIterator[str]:
    """An empty database of its own on the test server (no migration applied), dropped
    afterwards: for tests of the migration runner itself."""
    assert settings.database_url
    name = f"{TEST_DB}_scratch"
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield urlunparse(urlparse(settings.database_url)._replace(path="/" + name))
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
