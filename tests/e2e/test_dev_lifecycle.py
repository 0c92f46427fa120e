"""What a new user meets running `make run` (`ingestd dev`) more than once.

- It says it is ready only once the gateway's /healthz answers 200.
- Ctrl-C (SIGINT to the terminal's process group) stops the stages first, then the
  servers: exit 0, no traceback, no warning; a restart on the same data is as quiet.
- A second `ingestd dev` on the same data folder exits 2 at once, naming the first, and
  starts nothing (no second Redis on the same AOF); one on another folder and port runs
  beside it; after a `kill -9` of `ingestd dev` it names the stages left running instead.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from shared.embedded import free_port
from tests.conftest import EMPLOYEE_SCHEMA
from tests.e2e.devproc import (
    READY,
    TOKEN,
    Dev,
    data_folder,
    kill_tree,
    running_dev,
    server_processes,
    stop_cleanly,
    user_env,
)
from tests.e2e.procs import INGESTD

pytestmark = pytest.mark.slow  # `ingestd dev` as a process, seconds each

QUIET = re.compile(r"Traceback|WARNING|ERROR|CRITICAL|Warning:")
# Not dev's doing, left to the worker's owners: a redis-py pipeline that a stopping worker
# cancels mid-execute (e.g. the kick's, services/worker/main.py) is garbage-collected
# still holding its connection, and asyncio logs this (two lines) at ERROR
KNOWN = re.compile(r".* ERROR asyncio\[\d+\] Unclosed Pipeline client\nclient: <redis[^\n]*\n")


def noise(log: str) -> re.Match[str] | None:
    return QUIET.search(KNOWN.sub("", log))


INGEST = "/integration/custom-data"


def ready(dev: Dev, after: int = 0) -> float:
    """Wait for the ready line; /healthz must answer 200 the moment it is printed."""
    seconds = float(dev.wait_for(READY, after))
    assert dev.healthz() == 200, dev.log()
    return seconds


def seed(dev: Dev, token: str) -> str:
    """A table and an integration; the ingest key."""
    g = dev.call("POST", "/admin/v1/schema-groups", token, {"name": "d", "prefix": "_d"})
    body = {"table": "employee", "schema": EMPLOYEE_SCHEMA}
    dev.call("POST", f"/admin/v1/schema-groups/{g['id']}/schemas", token, body)
    integration = {"name": "HR", "schemaGroup": g["id"]}
    return str(dev.call("POST", "/admin/v1/integrations", token, integration)["ingestKey"])


def applied(dev: Dev, key: str, doc: dict[str, object]) -> None:
    """Send one event and wait until its receipt says applied: the worker and the projector
    are at work (their drains are running)."""
    eid = dev.call("POST", f"{INGEST}/event/employee?groupKey=g", key, doc)["eventId"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rc = dev.call("GET", f"{INGEST}/events/{eid}", key)
        if rc["status"] != "pending":
            assert rc["status"] == "applied", rc
            return
        time.sleep(0.1)
    raise AssertionError(f"{eid} still pending:\n{dev.log()}")


def test_ctrl_c_stops_in_order_and_a_restart_is_quiet(tmp_path: Path, data_dir: Path) -> None:
    with running_dev(tmp_path, data_dir) as dev:
        token = dev.wait_for(TOKEN)
        print(f"\nfirst start: ready in {ready(dev):.1f} s")
        key = seed(dev, token)
        applied(dev, key, {"employeeId": "e1"})
        stop_cleanly(dev, signal.SIGINT)
        assert not noise(dev.log()), dev.log()

    with running_dev(tmp_path, data_dir) as dev:
        print(f"later start: ready in {ready(dev):.1f} s")
        # every partition's drain of the first run is left in arq's queue and is picked up
        # (and dropped) before any new drain: once a new event is applied, they are gone
        applied(dev, key, {"employeeId": "e2"})
        stop_cleanly(dev, signal.SIGINT)
        log = dev.log()
        assert "max retries" not in log, log
        assert not noise(log), log


def test_a_second_dev_on_the_same_data_exits_2_naming_the_first(
    tmp_path: Path, data_dir: Path
) -> None:
    with running_dev(tmp_path, data_dir) as first:
        ready(first)
        aof_users = [p for p in server_processes(first) if "redis" in p.name()]
        second = subprocess.run(
            [INGESTD, "dev"],
            env=user_env(data_dir, free_port()),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.startswith(
            f"cannot start: {data_dir.resolve()} is in use by another `ingestd dev` "
            f"(pid {first.proc.pid}: "
        ), second.stderr
        assert "INGESTD_DATA_DIR" in second.stderr
        assert "embedded" not in second.stdout  # it started no server
        assert [p for p in server_processes(first) if "redis" in p.name()] == aof_users
        assert first.healthz() == 200
        # another data folder and port: a second, separate one runs beside it
        with data_folder() as elsewhere, running_dev(tmp_path, elsewhere) as other:
            ready(other)
            stop_cleanly(other)
        assert first.healthz() == 200
        stop_cleanly(first)


def test_stages_left_by_a_killed_dev_are_named_and_a_restart_recovers(
    tmp_path: Path, data_dir: Path
) -> None:
    with running_dev(tmp_path, data_dir) as first:
        ready(first)
        left = [p for p in server_processes(first) if "postgres" not in p.name()]
        first.proc.kill()  # kill -9 of `ingestd dev` alone: its stages and Redis live on
        first.proc.wait(10)
        try:
            second = subprocess.run(
                [INGESTD, "dev"],
                env=user_env(data_dir, free_port()),
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert second.returncode == 2, second.stdout + second.stderr
            assert "left running" in second.stderr, second.stderr
            for p in left:
                assert str(p.pid) in second.stderr, (p, second.stderr)
        finally:
            kill_tree(left)
    # pgserver still lists the killed process as a user of its PostgreSQL; the next start
    # forgets it, so its stop stops PostgreSQL again
    handles = json.loads((data_dir / "postgres" / ".handle_pids.json").read_text())
    assert first.proc.pid in handles
    with running_dev(tmp_path, data_dir) as dev:
        ready(dev)
        stop_cleanly(dev)
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(data_dir) in " ".join(p.info["cmdline"] or [])
    ]
