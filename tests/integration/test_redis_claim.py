"""A test run flushes exactly the Redis database REDIS_URL names, and never one in use.

Each test gets a private Redis server (its databases 1 and 2 play "the one named" and "the
one below it"), so the run's own database is never touched.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from shared.embedded import EmbeddedRedis
from tests.conftest import CLAIM, CLAIM_KEY, claim_redis_db, flush_claimed, live_claim_holder
from tests.e2e.procs import unconfigured_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """The base URL of a Redis server of this test's own."""
    rd = EmbeddedRedis(tmp_path / "redis")
    url = rd.start()
    try:
        yield url.rsplit("/", 1)[0]
    finally:
        rd.stop()


def claim_of(proc: psutil.Process) -> str:
    return json.dumps(
        {"pid": proc.pid, "host": socket.gethostname(), "started": proc.create_time()}
    )


@pytest.fixture
def live_process() -> Iterator[psutil.Process]:
    """A process that is alive for the whole test (another test run, as far as a claim goes)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait(10)


def dead_claim() -> str:
    """The claim of a run that crashed: a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    ps = psutil.Process(proc.pid)
    value = claim_of(ps)
    proc.wait(10)
    return value


def test_live_and_stale_holders() -> None:
    me = psutil.Process()
    assert live_claim_holder(CLAIM) is not None  # this run is alive
    assert live_claim_holder(dead_claim()) is None
    assert live_claim_holder(str(me.pid)) is not None  # the old format: a bare pid
    reused = json.dumps({"pid": me.pid, "host": socket.gethostname(), "started": 1.0})
    assert live_claim_holder(reused) is None  # same pid, another process
    other = json.dumps({"pid": 1, "host": "elsewhere", "started": 1.0})
    assert "elsewhere" in (live_claim_holder(other) or "")
    assert live_claim_holder(b"garbage") is None


async def test_a_stale_claim_is_taken_over_and_only_that_database_flushed(
    private_redis: str,
) -> None:
    named, below = f"{private_redis}/2", f"{private_redis}/1"
    with redis.Redis.from_url(named) as r2, redis.Redis.from_url(below) as r1:
        r2.set(CLAIM_KEY, dead_claim())
        r2.set("left-by-the-crashed-run", "x")
        r1.set(CLAIM_KEY, str(psutil.Process().pid))  # a live claim below: irrelevant now
        r1.set("someone-elses", "data")
        claim_redis_db(named)
        assert r2.get(CLAIM_KEY) == CLAIM.encode()
        await flush_claimed(named)
        assert r2.keys("*") == [CLAIM_KEY.encode()]
        assert r1.get("someone-elses") == b"data"  # the database below is never touched


def test_a_database_held_by_a_live_run_is_refused_untouched(
    private_redis: str, live_process: psutil.Process
) -> None:
    named = f"{private_redis}/2"
    with redis.Redis.from_url(named) as r:
        r.set(CLAIM_KEY, claim_of(live_process))
        r.set("its-data", "x")
        with pytest.raises(pytest.exit.Exception, match=f"pid {live_process.pid}"):
            claim_redis_db(named)
        assert r.get("its-data") == b"x"
        assert r.get(CLAIM_KEY) == claim_of(live_process).encode()


async def test_flushing_stops_when_another_live_run_took_the_database(
    private_redis: str, live_process: psutil.Process
) -> None:
    named = f"{private_redis}/2"
    with redis.Redis.from_url(named) as r:
        claim_redis_db(named)
        r.set(CLAIM_KEY, claim_of(live_process))  # e.g. a test flushed it, another run came
        r.set("its-data", "x")
        with pytest.raises(pytest.exit.Exception, match="in use by another test run"):
            await flush_claimed(named)
        assert r.get("its-data") == b"x"


def test_a_run_on_a_database_in_use_exits_with_a_clear_message(
    private_redis: str, live_process: psutil.Process
) -> None:
    """As a user meets it: `pytest` with REDIS_URL naming a database another live run holds
    stops before any test, says why and what to do, and leaves both databases alone."""
    named, below = f"{private_redis}/2", f"{private_redis}/1"
    with redis.Redis.from_url(named) as r2, redis.Redis.from_url(below) as r1:
        r2.set(CLAIM_KEY, claim_of(live_process))
        r2.set("its-data", "x")
        r1.set("below", "y")
        env = {**unconfigured_env(), "REDIS_URL": named}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/integration/test_push_smoke.py"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
        assert f"REDIS_URL={named}: that Redis database is in use" in done.stdout
        assert f"pid {live_process.pid} on this host" in done.stdout
        assert r2.get("its-data") == b"x" and r1.get("below") == b"y"
        assert r1.get(CLAIM_KEY) is None  # no fallback to the database below
