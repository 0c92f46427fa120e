"""HTTP load generator, run as its own process: ``python -m tests.bench.load --url …``.

The fallback when ``wrk`` is not installed, and the only generator for fixed-rate
(open-loop) runs. It speaks just enough HTTP/1.1 over raw asyncio protocols
(keep-alive, Content-Length bodies) to stay cheap per request, so that on a
small machine it costs less CPU than the servers it measures. Prints one JSON
line: counts per status, 2xx/s, latency percentiles and its own CPU time.

``--body-file`` may contain ``@N@``: each request replaces it with a number
unique across the run (distinct resource ids). With ``--rate`` requests start
on a fixed schedule and latency is measured from the scheduled start, so a
stalled server cannot hide its queueing (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import multiprocessing
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PLACEHOLDER = b"@N@"


@dataclass
class Options:
    host: str
    port: int
    target: str
    method: str
    headers: list[str]
    body: bytes
    connections: int
    duration: float
    warmup: float
    rate: float
    offset: int = 0
    step: int = 1


@dataclass
class Stats:
    status: collections.Counter[int] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    body_bytes: int = 0
    late: int = 0


class Conn(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._try_complete()

    def _try_complete(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).lower()
        status = int(head[9:12])
        length = 0
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + 17 : j if j > 0 else None])
        total = end + 4 + length
        if len(self.buf) < total:
            return
        del self.buf[:total]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result(status)

    async def request(self, raw: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


class Generator:
    def __init__(self, o: Options) -> None:
        self.o = o
        self.stats = Stats()
        self.counter = itertools.count(o.offset, o.step)
        head = f"{o.method} {o.target} HTTP/1.1\r\nHost: {o.host}:{o.port}\r\n"
        head += "".join(h + "\r\n" for h in o.headers)
        self.head = head.encode()
        self.vary = PLACEHOLDER in o.body
        self.static = self._build(o.body)
        self.measuring = False

    def _build(self, body: bytes) -> bytes:
        return self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def next_request(self) -> tuple[bytes, int]:
        if not self.vary:
            return self.static, len(self.o.body)
        body = self.o.body.replace(PLACEHOLDER, b"%d" % next(self.counter))
        return self._build(body), len(body)

    def record(self, status: int, started: float, size: int) -> None:
        if not self.measuring:
            return
        self.stats.status[status] += 1
        if 200 <= status < 300:
            self.stats.latencies.append(time.perf_counter() - started)
            self.stats.body_bytes += size

    async def connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(Conn, self.o.host, self.o.port)
        return proto

    async def closed_loop(self, conn: Conn, stop: float) -> None:
        while time.perf_counter() < stop:
            raw, size = self.next_request()
            started = time.perf_counter()
            try:
                status = await conn.request(raw)
            except ConnectionError:
                if self.measuring:
                    self.stats.errors += 1
                conn = await self.connect()
                continue
            self.record(status, started, size)

    async def open_loop(self, conns: list[Conn], stop: float) -> None:
        idle: asyncio.Queue[Conn] = asyncio.Queue()
        for c in conns:
            idle.put_nowait(c)
        interval = 1.0 / self.o.rate
        start = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        for n in itertools.count():
            due = start + n * interval
            if due >= stop:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05 and self.measuring:
                self.stats.late += 1
            conn = await idle.get()
            t = asyncio.create_task(self._one(conn, idle, due))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def _one(self, conn: Conn, idle: asyncio.Queue[Conn], due: float) -> None:
        raw, size = self.next_request()
        try:
            status = await conn.request(raw)
        except ConnectionError:
            if self.measuring:
                self.stats.errors += 1
            idle.put_nowait(await self.connect())
            return
        self.record(status, due, size)
        idle.put_nowait(conn)

    async def run(self) -> dict[str, Any]:
        conns = [await self.connect() for _ in range(self.o.connections)]
        t0 = time.perf_counter()
        measure_from = t0 + self.o.warmup
        stop = measure_from + self.o.duration
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + self.o.warmup, self._start_measuring)
        cpu0 = _cpu()
        if self.o.rate > 0:
            await self.open_loop(conns, stop)
        else:
            await asyncio.gather(*(self.closed_loop(c, stop) for c in conns))
        elapsed = time.perf_counter() - measure_from
        cpu = _cpu() - cpu0
        for c in conns:
            if c.transport is not None:
                c.transport.close()
        return self._result(elapsed, cpu)

    def _start_measuring(self) -> None:
        self.measuring = True
        self.stats = Stats()

    def _result(self, elapsed: float, cpu: float) -> dict[str, Any]:
        s = self.stats
        return {
            "status": {str(k): v for k, v in s.status.items()},
            "errors": s.errors,
            "late": s.late,
            "elapsed": elapsed,
            "body_bytes": s.body_bytes,
            "latencies": s.latencies,
            "cpu_s": cpu,
        }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def summarise(parts: list[dict[str, Any]]) -> dict[str, Any]:
    status: collections.Counter[str] = collections.Counter()
    lat: list[float] = []
    for p in parts:
        status.update(p["status"])
        lat.extend(p["latencies"])
    lat.sort()
    elapsed = max(p["elapsed"] for p in parts)
    ok = sum(v for k, v in status.items() if k.startswith("2"))
    return {
        "generator": "python",
        "processes": len(parts),
        "requests": sum(status.values()),
        "ok": ok,
        "non_2xx": sum(status.values()) - ok,
        "status": dict(status),
        "errors": sum(p["errors"] for p in parts),
        "late": sum(p["late"] for p in parts),
        "elapsed_s": elapsed,
        "rps": ok / elapsed if elapsed else 0.0,
        "mb_per_s": sum(p["body_bytes"] for p in parts) / elapsed / 1e6 if elapsed else 0.0,
        "latency_ms": {
            "p50": _ms(percentile(lat, 0.5)),
            "p99": _ms(percentile(lat, 0.99)),
            "max": _ms(lat[-1] if lat else None),
        },
        "cpu_s": sum(p["cpu_s"] for p in parts),
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


def _child(o: Options, out: Any) -> None:
    out.send(asyncio.run(Generator(o).run()))


def options(args: argparse.Namespace) -> Options:
    u = urlsplit(args.url)
    target = u.path or "/"
    if u.query:
        target += "?" + u.query
    body = b""
    if args.body_file:
        with open(args.body_file, "rb") as f:
            body = f.read()
    return Options(
        host=u.hostname or "127.0.0.1",
        port=u.port or 80,
        target=target,
        method=args.method,
        headers=args.header,
        body=body,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
        rate=args.rate,
    )


def run(o: Options, processes: int) -> dict[str, Any]:
    if processes <= 1:
        return summarise([asyncio.run(Generator(o).run())])
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for i in range(processes):
        share = o.connections // processes + (1 if i < o.connections % processes else 0)
        sub = Options(**{**o.__dict__, "connections": share, "rate": o.rate / processes})
        sub.offset, sub.step = i, processes
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(sub, send))
        p.start()
        pipes.append(recv)
        procs.append(p)
    parts = [r.recv() for r in pipes]
    for p in procs:
        p.join()
    return summarise(parts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.load")
    ap.add_argument("--url", required=True)
    ap.add_argument("--method", default="POST")
    ap.add_argument("--header", action="append", default=[], help="'Name: value'")
    ap.add_argument("--body-file")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=0.0, help="requests/s (open loop); 0 = max")
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args(argv)
    result = run(options(args), args.processes)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
