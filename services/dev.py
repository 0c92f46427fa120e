"""``ingestd dev``: the whole pipeline on one machine.

Takes an exclusive lock on ``INGESTD_DATA_DIR`` (a second ``ingestd dev`` on the same
folder exits 2 naming the first), starts embedded PostgreSQL and Redis when
``DATABASE_URL`` / ``REDIS_URL`` are unset (data in that folder), generates the admin
token and the secret key of pull sources into it when unset, applies migrations,
then runs the gateway, the worker(s), the projector, one sources stage and one notifier as child
processes, exactly as ``ingestd gateway|worker|projector|sources|notifier`` run them, and says it
is ready once the gateway's ``/healthz`` answers 200.

Children run in process groups of their own, so a Ctrl-C in the terminal reaches only
this process, which stops everything in order: SIGTERM to the stages, wait for them,
then stop the embedded servers (Redis last writes its AOF out). SIGINT, SIGTERM and
SIGHUP all stop it that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType

from shared.config import Settings
from shared.embedded import EmbeddedPostgres, EmbeddedRedis, pid_alive, psql_binary
from shared.errors import ConfigError, TransientError
from shared.pg.migrate import migrate
from shared.secrets import SecretBox

log = logging.getLogger("ingestd.dev")

LOCK_FILE = "dev.lock"
STAGE_STOP_S = 20.0
NOT_READY_NOTE_S = 15.0


class DataDirLock:
    """``flock`` on ``<data dir>/dev.lock``, held for the life of ``ingestd dev`` and
    inherited by every process it starts (an orphan left by a killed ``ingestd dev`` keeps
    the folder locked while it runs). The file lists the holders, one ``pid role`` a line,
    so a refused start can name them."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self.fd = -1

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"INGESTD_DATA_DIR {self.path.parent} cannot be used: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise TransientError(self._busy_message()) from None
        os.ftruncate(fd, 0)
        self.fd = fd
        self.note(os.getpid(), "ingestd dev")

    def note(self, pid: int | None, role: str) -> None:
        if pid is not None and self.fd >= 0:
            os.write(self.fd, f"{pid} {role}\n".encode())

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _busy_message(self) -> str:
        holders: list[tuple[int, str]] = []
        with contextlib.suppress(OSError):
            for line in self.path.read_text().splitlines():
                number, _, role = line.partition(" ")
                if number.isdigit():
                    holders.append((int(number), role))
        folder = self.path.parent.resolve()
        hint = "or set INGESTD_DATA_DIR to another folder to run a second one"
        alive = [(pid, role) for pid, role in holders if pid_alive(pid)]
        if alive and alive[0][1] == "ingestd dev":
            (pid, _), *_ = alive
            return (
                f"{folder} is in use by another `ingestd dev` (pid {pid}{_cmdline(pid)}): "
                f"stop it first (Ctrl-C in its terminal, or kill {pid}), {hint}"
            )
        if alive:
            left = ", ".join(f"{pid} ({role})" for pid, role in alive)
            return (
                f"{folder} is in use by processes a stopped `ingestd dev` left running: "
                f"{left}; kill them (kill {' '.join(str(p) for p, _ in alive)}), {hint}"
            )
        return f"{folder} is locked by another process ({self.path}); {hint}"


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return ": " + raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200]


def _check_port_free(host: str, port: int) -> None:
    """The gateway's port is taken (by any program): say so now, not in a stage's traceback."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ConfigError(f"INGESTD_HTTP_HOST {host!r} cannot be resolved: {e}") from e
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the gateway binds
        try:
            s.bind(address)
        except OSError as e:
            raise TransientError(
                f"{host}:{port} is in use by another program ({e.strerror}): stop it, or set "
                "INGESTD_HTTP_PORT to a free port"
            ) from None


def _kept_secret(settings: Settings, name: str, make: Callable[[], str]) -> tuple[str, Path]:
    """``<data dir>/<name>``'s value, made by ``make`` and written (mode 0600, never
    overwritten) the first time: what a restart of ``ingestd dev`` reuses."""
    path = settings.data_dir / name
    if path.exists():
        return path.read_text().strip(), path
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value, path


def _admin_token(settings: Settings) -> Settings:
    if settings.admin_token:
        return settings
    token, path = _kept_secret(settings, "admin-token", lambda: secrets.token_urlsafe(24))
    print(f"INGESTD_ADMIN_TOKEN={token}  (saved in {path})", flush=True)
    return replace(settings, admin_token=token)


def _secret_key(settings: Settings) -> Settings:
    """The key sealing secret source params: generated once into the data dir (never
    printed: it guards stored credentials, and the file is what a restart reuses)."""
    if settings.secret_key:
        return settings
    key, path = _kept_secret(settings, "secret-key", SecretBox.generate_key)
    log.info("INGESTD_SECRET_KEY from %s", path)
    return replace(settings, secret_key=key)


def health_url(settings: Settings) -> str:
    return f"{settings.gateway_url()}/healthz"


def _healthz(url: str) -> str | None:
    """None when /healthz answers 200, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return None if r.status == 200 else f"status {r.status}"
    except urllib.error.HTTPError as e:
        return f"status {e.code}: {e.read()[:300].decode(errors='replace')}"
    except (OSError, ValueError) as e:
        return str(getattr(e, "reason", e))


class Dev:
    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self.lock = DataDirLock(settings.data_dir)
        self.embedded: list[EmbeddedPostgres | EmbeddedRedis] = []
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        started = time.monotonic()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.stop)
        self.lock.acquire()
        try:
            return self._run(started)
        finally:
            self._shutdown()

    def _run(self, started: float) -> int:
        settings = self.settings
        _check_port_free(settings.http_host, settings.http_port)
        dsn, redis_url = settings.database_url, settings.redis_url
        if not dsn:
            pg = EmbeddedPostgres(settings.data_dir / "postgres")
            self.embedded.append(pg)
            try:
                dsn = pg.start()
            except (subprocess.SubprocessError, OSError, AssertionError) as e:
                raise TransientError(
                    f"the embedded PostgreSQL did not start ({e}); its log: {pg.folder / 'log'}"
                ) from e
            log.info("embedded PostgreSQL at %s", dsn)
        if not redis_url and not self.stopping:
            rd = EmbeddedRedis(settings.data_dir / "redis", fsync_always=settings.strict)
            self.embedded.append(rd)
            try:
                redis_url = rd.start(pass_fds=(self.lock.fd,))
            except (RuntimeError, OSError) as e:
                raise TransientError(f"the embedded Redis did not start: {e}") from e
            self.lock.note(rd.pid, "redis-server")
            fsync = "appendfsync always" if settings.strict else "appendfsync everysec"
            log.info("embedded Redis at %s (AOF on, %s)", redis_url, fsync)
        if self.stopping or not dsn or not redis_url:
            return 0
        settings = _secret_key(_admin_token(settings.with_servers(dsn, redis_url)))
        asyncio.run(migrate(dsn))
        env = {**Settings.process_env(), **settings.server_env()}
        stages = ["gateway", "projector", *["worker"] * self.workers, "sources", "notifier"]
        for stage in stages:
            if self.stopping:
                return 0
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", stage],
                env=env,
                process_group=0,  # a Ctrl-C reaches only `ingestd dev`, which stops in order
                pass_fds=(self.lock.fd,),
            )
            self.children.append((stage, proc))
            self.lock.note(proc.pid, stage)
        if not self._until_ready(settings, started, stages):
            return self._exit_code()
        while not self.stopping:
            if self._exited():
                return 1
            time.sleep(0.2)
        return 0

    def _until_ready(self, settings: Settings, started: float, stages: list[str]) -> bool:
        """Poll /healthz until it answers 200, then log that the pipeline is ready."""
        base = f"http://{settings.http_host}:{settings.http_port}"
        if settings.http_port == 0:
            log.info("ingestd dev: %s started (INGESTD_HTTP_PORT=0: not polled)", ", ".join(stages))
            return True
        url = health_url(settings)
        noted = False
        while not self.stopping:
            if self._exited():
                return False
            why = _healthz(url)
            if why is None:
                log.info(
                    "ingestd dev: ready in %.1f s (%s): %s",
                    time.monotonic() - started,
                    ", ".join(stages),
                    base,
                )
                return True
            if not noted and time.monotonic() - started > NOT_READY_NOTE_S:
                log.warning(
                    "ingestd dev: not ready after %.0f s: /healthz %s", NOT_READY_NOTE_S, why
                )
                noted = True
            time.sleep(0.05)
        return False

    def _exited(self) -> bool:
        for stage, c in self.children:
            if c.poll() is not None:
                log.error("the %s stage exited with code %s; stopping", stage, c.returncode)
                return True
        return False

    def _exit_code(self) -> int:
        return 0 if self.stopping else 1

    def _shutdown(self) -> None:
        """Stages first (SIGTERM, wait), then the servers they use, then the lock."""
        try:
            for _, c in self.children:
                if c.poll() is None:
                    c.terminate()
            deadline = time.monotonic() + STAGE_STOP_S
            for stage, c in self.children:
                try:
                    c.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("the %s stage did not stop in %.0f s; killed", stage, STAGE_STOP_S)
                    c.kill()
                    c.wait()
            for e in reversed(self.embedded):
                e.stop()
        finally:
            self.lock.release()
        if self.children or self.embedded:
            log.info("ingestd dev stopped")


def run_dev(settings: Settings, workers: int = 1) -> int:
    return Dev(settings, workers).run()


def run_psql(settings: Settings, args: list[str]) -> int:
    """psql (pgserver's own binary) on DATABASE_URL, or on the embedded PostgreSQL of the
    data folder: a running ``ingestd dev``'s server is shared, a stopped one is started for
    the session and stopped after it (pgserver stops it when its last user leaves)."""
    binary = psql_binary()
    pg: EmbeddedPostgres | None = None
    dsn = settings.database_url
    if not dsn:
        folder = settings.data_dir / "postgres"
        if not (folder / "PG_VERSION").exists():
            raise ConfigError(
                f"no embedded database in {folder.resolve()} yet: start `ingestd dev` "
                "(make run) once, or set DATABASE_URL"
            )
        pg = EmbeddedPostgres(folder)
        dsn = pg.start()
    try:
        proc = subprocess.Popen([str(binary), dsn, *args])
        # psql owns the terminal: a Ctrl-C cancels its query, and must not stop us
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return proc.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
    finally:
        if pg is not None:
            pg.stop()
