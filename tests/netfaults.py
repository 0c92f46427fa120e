"""Fault injection for tests, never on the shared servers.

:class:`PrivateRedis` is a redis-server of the test's own (the embedded binary on a
free loopback port) that the test may stop, freeze (SIGSTOP) or restart.
:class:`CutProxy` is a TCP proxy in front of the test's PostgreSQL: cutting it
refuses new connections and resets the open ones, which is what a client sees
when the server goes down, while the server itself and everyone else's
connections to it stay up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse, urlunparse

from shared.embedded import EmbeddedRedis, free_port


class PrivateRedis(EmbeddedRedis):
    """An embedded redis-server that keeps its port across restarts."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, port=free_port())
        self.url = ""

    def start(self) -> str:
        self.url = super().start()
        return self.url

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP for the duration: the kernel still accepts connections, nobody answers."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self._proc.pid, signal.SIGCONT)


class CutProxy:
    """Forwards a loopback port to the server of ``dsn`` (TCP or a Unix socket)."""

    def __init__(self, dsn: str) -> None:
        u = urlparse(dsn)
        socket_dir = parse_qs(u.query).get("host", [None])[0]
        self._unix = f"{socket_dir}/.s.PGSQL.{u.port or 5432}" if socket_dir else None
        self._target = (u.hostname or "127.0.0.1", u.port or 5432)
        self.port = free_port()
        netloc = f"{u.username or 'postgres'}" + (f":{u.password}" if u.password else "")
        self.dsn = urlunparse(u._replace(netloc=f"{netloc}@127.0.0.1:{self.port}", query=""))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Refuse new connections, reset the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._unix:
                up_r, up_w = await asyncio.open_unix_connection(self._unix)
            else:
                up_r, up_w = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_w))
        await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer), return_exceptions=True)
        self._writers.difference_update((writer, up_w))


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    finally:
        dst.transport.abort()
