"""Start ingestd stages as real processes, the way a user does (`ingestd <stage>`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.config import Settings
from shared.embedded import free_port

INGESTD = str(Path(sys.executable).parent / "ingestd")


def unconfigured_env() -> dict[str, str]:
    """This process's environment without any ingestd configuration (``INGESTD_*``,
    ``DATABASE_URL``, ``REDIS_URL``): what a user's shell holds before configuring it."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("INGESTD_") and k not in ("DATABASE_URL", "REDIS_URL")
    }


def stage_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update(settings.server_env())
    env["INGESTD_LOG_LEVEL"] = os.environ.get("INGESTD_STAGE_LOG_LEVEL", "WARNING")
    env.update(extra)
    return env


class Stage:
    def __init__(
        self, name: str, env: dict[str, str], log_dir: Path, argv: list[str] | None = None
    ) -> None:
        self.name = name
        self.env = env
        self.argv = argv or [INGESTD, name]
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Stage:
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_healthy(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"gateway on {port} not healthy after {timeout}s: {last}")


@contextmanager
def stages(
    settings: Settings, log_dir: Path, *names: str, **extra_env: str
) -> Iterator[dict[str, list[Stage]]]:
    """Start the named stages (e.g. "gateway", "worker", "worker", "projector").

    Each gateway gets its own free port (``stage.env["INGESTD_HTTP_PORT"]``); the
    context waits until every gateway answers /healthz and stops everything on exit.
    """
    started: dict[str, list[Stage]] = {}
    try:
        for name in names:
            env = stage_env(settings, **extra_env)
            if name == "gateway":
                env["INGESTD_HTTP_PORT"] = str(free_port())
            started.setdefault(name, []).append(Stage(name, env, log_dir).start())
        for g in started.get("gateway", []):
            wait_healthy(int(g.env["INGESTD_HTTP_PORT"]))
        yield started
    finally:
        for group in started.values():
            for s in group:
                s.stop()


def port(stage: Stage) -> int:
    return int(stage.env["INGESTD_HTTP_PORT"])
