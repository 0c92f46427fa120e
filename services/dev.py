"""``ingestd dev``: the whole pipeline on one machine.

Starts embedded PostgreSQL and Redis when ``DATABASE_URL`` / ``REDIS_URL`` are
unset (data under ``INGESTD_DATA_DIR``), applies migrations, then runs the
gateway, the worker(s) and the projector as child processes, exactly as
``ingestd gateway|worker|projector`` run them. SIGINT/SIGTERM stop all of it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import replace
from types import FrameType

from shared.config import Settings
from shared.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.pg.migrate import migrate

log = logging.getLogger("ingestd.dev")


def _admin_token(settings: Settings) -> Settings:
    if settings.admin_token:
        return settings
    path = settings.data_dir / "admin-token"
    if path.exists():
        token = path.read_text().strip()
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        path.write_text(token + "\n")
        path.chmod(0o600)
    print(f"INGESTD_ADMIN_TOKEN={token}  (saved in {path})", flush=True)
    return replace(settings, admin_token=token)


def run_dev(settings: Settings, workers: int = 1) -> int:
    started = time.monotonic()
    embedded: list[EmbeddedPostgres | EmbeddedRedis] = []
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        dsn, redis_url = settings.database_url, settings.redis_url
        if not dsn:
            pg = EmbeddedPostgres(settings.data_dir / "postgres")
            embedded.append(pg)
            dsn = pg.start()
            log.info("embedded PostgreSQL at %s", dsn)
        if not redis_url:
            rd = EmbeddedRedis(settings.data_dir / "redis")
            embedded.append(rd)
            redis_url = rd.start()
            log.info("embedded Redis at %s (AOF on)", redis_url)
        settings = _admin_token(settings.with_servers(dsn, redis_url))
        asyncio.run(migrate(dsn))
        env = {**Settings.process_env(), **settings.server_env()}
        stages = ["gateway", "projector"] + ["worker"] * workers
        for stage in stages:
            children.append(
                subprocess.Popen([sys.executable, "-m", "services.cli", stage], env=env)
            )
        log.info(
            "ingestd dev: %s up in %.1f s; http://%s:%s",
            ", ".join(stages),
            time.monotonic() - started,
            settings.http_host,
            settings.http_port,
        )
        while not stopping:
            for c in children:
                if c.poll() is not None:
                    log.error("a stage exited with code %s; stopping", c.returncode)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        for c in children:
            if c.poll() is None:
                c.terminate()
        for c in children:
            try:
                c.wait(15)
            except subprocess.TimeoutExpired:
                c.kill()
        for e in reversed(embedded):
            e.stop()
        log.info("ingestd dev stopped")
