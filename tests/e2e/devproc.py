"""`ingestd dev` started as a user starts it (no servers configured unless a test says so),
for the process-level tests of the dev command, the walkthrough and the README's SQL."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from shared.embedded import free_port
from tests.e2e.procs import INGESTD, unconfigured_env

START_TIMEOUT = 60.0
TOKEN = re.compile(r"^INGESTD_ADMIN_TOKEN=(\S+)", re.M)
REDIS_AT = re.compile(r"embedded Redis at (redis://\S+)")
PG_AT = re.compile(r"embedded PostgreSQL at (postgresql://\S+)")
READY = re.compile(r"ingestd dev: ready in ([0-9.]+) s")


@dataclass
class Dev:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    data_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: re.Pattern[str], after: int = 0) -> str:
        """The first group of ``pattern``'s first match in the log past offset ``after``."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            m = pattern.search(self.log(), after)
            if m:
                return m.group(1)
            assert self.proc.poll() is None, f"ingestd dev exited early:\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"{pattern.pattern!r} not printed:\n{self.log()}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, token: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def healthz(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.base}/healthz", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def interrupt(self) -> None:
        """What Ctrl-C in its terminal does: SIGINT to the terminal's foreground process
        group, which is the group `ingestd dev` leads here."""
        os.killpg(self.proc.pid, signal.SIGINT)


def user_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = unconfigured_env()
    env.update(INGESTD_DATA_DIR=str(data_dir), INGESTD_HTTP_PORT=str(port), **extra)
    return env


def server_processes(dev: Dev) -> list[psutil.Process]:
    """Everything `ingestd dev` started: its children and the (daemonised) postmaster."""
    procs: list[psutil.Process] = psutil.Process(dev.proc.pid).children(recursive=True)
    for p in psutil.process_iter(["cmdline"]):
        if str(dev.data_dir) in " ".join(p.info["cmdline"] or []):
            procs.append(p)
            procs.extend(p.children(recursive=True))
    return procs


def kill_tree(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


@contextmanager
def running_dev(
    tmp_path: Path, data_dir: Path, port: int | None = None, **env: str
) -> Iterator[Dev]:
    port = port or free_port()
    log_path = tmp_path / f"dev-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [INGESTD, "dev"],
            env=user_env(data_dir, port, **env),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = Dev(proc, port, log_path, data_dir)
    try:
        yield dev
    finally:
        if proc.poll() is None:  # the test failed before its own stop
            procs = server_processes(dev)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                kill_tree(procs)


def stop_cleanly(dev: Dev, how: signal.Signals = signal.SIGTERM) -> None:
    """Stop with ``how`` (SIGINT: as Ctrl-C does, to the process group); it must exit 0
    and leave no PostgreSQL / Redis / stage process behind."""
    procs = server_processes(dev)
    names = {p.name() for p in procs}
    assert any("postgres" in n for n in names), names
    assert any("redis" in n for n in names), names
    if how == signal.SIGINT:
        dev.interrupt()
    else:
        dev.proc.send_signal(how)
    assert dev.proc.wait(30) == 0, dev.log()
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, f"left running: {alive}"
    assert "ingestd dev stopped" in dev.log()


@contextmanager
def data_folder() -> Iterator[Path]:
    """A data folder for `ingestd dev` outside pytest's temporary tree. Run as root, the
    embedded PostgreSQL runs as the user "pgserver", which must be able to enter every
    parent folder; each pytest session (a concurrent one too) takes those rights off
    /tmp/pytest-of-<user>, which would cut a running server off its own files."""
    folder = Path(tempfile.mkdtemp(prefix="ingestd-test-dev-"))
    try:
        yield folder / "data"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
