"""`ingestd dev` as a user runs it: no servers configured, so it starts embedded ones.

Start, wait for /healthz, use the printed admin token, SIGTERM, check that it exits 0
and leaves no PostgreSQL / Redis / stage process behind; start again on the same data
folder and find the data (PostgreSQL rows and Redis keys) still there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from shared.embedded import free_port
from shared.redis import keyspace as ks
from tests.e2e.procs import INGESTD, unconfigured_env, wait_healthy

pytestmark = pytest.mark.slow  # stages as processes, seconds each

START_TIMEOUT = 60.0
TOKEN = re.compile(r"^INGESTD_ADMIN_TOKEN=(\S+)", re.M)
REDIS_AT = re.compile(r"embedded Redis at (redis://\S+)")


@dataclass
class Dev:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: re.Pattern[str]) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            m = pattern.search(self.log())
            if m:
                return m.group(1)
            assert self.proc.poll() is None, f"ingestd dev exited early:\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"{pattern.pattern!r} not printed:\n{self.log()}")

    def call(self, method: str, path: str, token: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())


def user_env(data_dir: Path, port: int) -> dict[str, str]:
    env = unconfigured_env()
    env.update(INGESTD_DATA_DIR=str(data_dir), INGESTD_HTTP_PORT=str(port))
    return env


def server_processes(dev: Dev, data_dir: Path) -> list[psutil.Process]:
    """Everything `ingestd dev` started: its children and the (daemonised) postmaster."""
    procs: list[psutil.Process] = psutil.Process(dev.proc.pid).children(recursive=True)
    for p in psutil.process_iter(["cmdline"]):
        if str(data_dir) in " ".join(p.info["cmdline"] or []):
            procs.append(p)
            procs.extend(p.children(recursive=True))
    return procs


@contextmanager
def running_dev(tmp_path: Path, data_dir: Path) -> Iterator[Dev]:
    port = free_port()
    log_path = tmp_path / f"dev-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [INGESTD, "dev"],
            env=user_env(data_dir, port),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = Dev(proc, port, log_path)
    try:
        yield dev
    finally:
        if proc.poll() is None:  # the test failed before its own SIGTERM
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def stop_cleanly(dev: Dev, data_dir: Path) -> None:
    procs = server_processes(dev, data_dir)
    names = {p.name() for p in procs}
    assert any("postgres" in n for n in names), names
    assert any("redis" in n for n in names), names
    dev.proc.send_signal(signal.SIGTERM)
    assert dev.proc.wait(30) == 0, dev.log()
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, f"left running: {alive}"
    assert "ingestd dev stopped" in dev.log()


def test_dev_starts_embedded_servers_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_dev(tmp_path, data_dir) as dev:
        token = dev.wait_for(TOKEN)
        started = time.monotonic()
        wait_healthy(dev.port, START_TIMEOUT)
        print(f"\nfirst start healthy {time.monotonic() - started:.1f} s after the token")
        group = dev.call(
            "POST", "/admin/v1/schema-groups", token, {"name": "directory", "prefix": "_directory"}
        )
        assert group["prefix"] == "_directory"
        probe = f"{ks.PREFIX}:test:probe"
        with redis.Redis.from_url(dev.wait_for(REDIS_AT)) as r:
            r.set(probe, token)
        stop_cleanly(dev, data_dir)
    assert (data_dir / "admin-token").stat().st_mode & 0o077 == 0

    with running_dev(tmp_path, data_dir) as dev:
        assert dev.wait_for(TOKEN) == token  # the generated token is kept
        wait_healthy(dev.port, START_TIMEOUT)
        items = dev.call("GET", "/admin/v1/schema-groups", token)["items"]
        assert [(g["id"], g["name"]) for g in items] == [(group["id"], "directory")]
        with redis.Redis.from_url(dev.wait_for(REDIS_AT)) as r:
            assert r.get(probe) == token.encode()  # Redis data survived too (AOF)
        stop_cleanly(dev, data_dir)
