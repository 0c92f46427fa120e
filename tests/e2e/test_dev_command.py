"""`ingestd dev` as a user runs it: no servers configured, so it starts embedded ones.

Start, wait for /healthz, use the printed admin token, find every stage running as its
child (the sources stage too), SIGTERM, check that it exits 0 and leaves no PostgreSQL /
Redis / stage process behind; start again on the same data
folder and find the data (PostgreSQL rows and Redis keys) still there.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
import redis

from shared.redis import keyspace as ks
from tests.e2e.devproc import REDIS_AT, START_TIMEOUT, TOKEN, Dev, running_dev, stop_cleanly
from tests.e2e.procs import wait_healthy

pytestmark = pytest.mark.slow  # stages as processes, seconds each


def stages_running(dev: Dev) -> list[str]:
    """The `ingestd <stage>` children of `ingestd dev`, by stage, sorted."""
    out = []
    for child in psutil.Process(dev.proc.pid).children():
        argv = child.cmdline()
        if argv[1:3] == ["-m", "services.cli"]:
            out.append(argv[3])
    return sorted(out)


def test_dev_starts_embedded_servers_stops_cleanly_and_keeps_data(
    tmp_path: Path, data_dir: Path
) -> None:
    with running_dev(tmp_path, data_dir) as dev:
        token = dev.wait_for(TOKEN)
        started = time.monotonic()
        wait_healthy(dev.port, START_TIMEOUT)
        print(f"\nfirst start healthy {time.monotonic() - started:.1f} s after the token")
        group = dev.call(
            "POST", "/admin/v1/schema-groups", token, {"name": "directory", "prefix": "_directory"}
        )
        assert group["prefix"] == "_directory"
        assert stages_running(dev) == ["gateway", "notifier", "projector", "sources", "worker"]
        assert dev.call("GET", "/admin/v1/source-specs", token) == {"items": []}  # key given
        probe = f"{ks.PREFIX}:test:probe"
        with redis.Redis.from_url(dev.wait_for(REDIS_AT)) as r:
            r.set(probe, token)
        stop_cleanly(dev)
    assert (data_dir / "admin-token").stat().st_mode & 0o077 == 0
    key_file = data_dir / "secret-key"
    assert key_file.stat().st_mode & 0o077 == 0
    key = key_file.read_text()

    with running_dev(tmp_path, data_dir) as dev:
        assert dev.wait_for(TOKEN) == token  # the generated token is kept
        assert key_file.read_text() == key  # and the secret key
        wait_healthy(dev.port, START_TIMEOUT)
        items = dev.call("GET", "/admin/v1/schema-groups", token)["items"]
        assert [(g["id"], g["name"]) for g in items] == [(group["id"], "directory")]
        with redis.Redis.from_url(dev.wait_for(REDIS_AT)) as r:
            assert r.get(probe) == token.encode()  # Redis data survived too (AOF)
        stop_cleanly(dev)
