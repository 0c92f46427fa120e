"""Floor servers for figures 1 and 2, each run as its own process.

``python -m tests.bench.bare --port N`` is the bare aiohttp handler the gateway
is divided by: it reads the whole body and answers 202 with a small JSON body,
on the same aiohttp and (default asyncio) event loop as ``ingestd gateway``.
``--store REDIS_URL`` also stores each body in Redis (one SET, no check at all) before
answering: the least any design that keeps a body before its 202 must do, so the
ceiling of figure 2 on this machine. ``--append REDIS_URL`` instead appends each body
to an ingest stream through the gateway's own group-commit appender (no parsing,
authentication or metadata): the ceiling of figure 1. ``--canned`` is a raw asyncio protocol that
answers every request with a fixed 202 without any framework; the load generator's
rate against it is the generator's own ceiling on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis

from services.gateway.appender import Appender
from shared.events import new_event_id
from shared.redis import keyspace as ks

REPLY = b'{"eventId":"ev_000000000000000000000000000"}'


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=REPLY, status=202, content_type="application/json")


def bare_app() -> web.Application:
    app = web.Application(client_max_size=5 << 20)
    app.router.add_post("/{tail:.*}", accept)
    return app


def append_app(redis_url: str) -> web.Application:
    redis = Redis.from_url(redis_url)
    appender = Appender(redis, partitions=1, receipt_ttl=600)
    fields_meta = b'{"k":"single"}'

    async def append(request: web.Request) -> web.Response:
        body = await request.read()
        eid = new_event_id()
        fields = {ks.F_META: fields_meta, ks.F_BODY: body}
        await appender.append(0, fields, ks.receipt_key(eid), b'{"i":"bench"}')
        return web.Response(body=REPLY, status=202, content_type="application/json")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await appender.start()
        yield
        await appender.stop()
        await redis.aclose()

    app = web.Application(client_max_size=5 << 20)
    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/{tail:.*}", append)
    return app


def store_app(redis_url: str) -> web.Application:
    redis = Redis.from_url(redis_url)
    counter = itertools.count()
    prefix = f"bench:floor:{os.getpid()}:"

    async def store(request: web.Request) -> web.Response:
        body = await request.read()
        await redis.set(f"{prefix}{next(counter)}", body, ex=600)
        return web.Response(body=REPLY, status=202, content_type="application/json")

    app = web.Application(client_max_size=5 << 20)
    app.router.add_post("/{tail:.*}", store)
    return app


CANNED = (
    b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(REPLY), REPLY)
)


def content_length(head: bytes) -> int:
    i = head.find(b"\r\ncontent-length:")
    if i < 0:
        return 0
    j = head.find(b"\r\n", i + 2)
    return int(head[i + 17 : j if j >= 0 else len(head)])


class Canned(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            length = content_length(head)
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            assert self.transport is not None
            self.transport.write(CANNED)


async def serve_canned(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Canned, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bare")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--canned", action="store_true")
    ap.add_argument("--store", metavar="REDIS_URL")
    ap.add_argument("--append", metavar="REDIS_URL")
    args = ap.parse_args()
    if args.canned:
        asyncio.run(serve_canned(args.port))
    elif args.append:
        web.run_app(append_app(args.append), host="127.0.0.1", port=args.port, print=None)
    elif args.store:
        web.run_app(store_app(args.store), host="127.0.0.1", port=args.port, print=None)
    else:
        web.run_app(bare_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
