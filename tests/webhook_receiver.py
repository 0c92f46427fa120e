"""A real HTTP server receiving webhooks in tests: it verifies every request with the
``standardwebhooks`` verifier and records what came, per path. A path can be told to
fail its first N requests (500), to fail the requests ``fail_when`` picks, to answer
after a random delay (so answers come out of order), or never to answer (a dead
endpoint). It counts requests open at once, and notes a resource with two open at once."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.time() of receipt
    verified: bool
    raw: bytes


@dataclass
class Path:
    secret: str | None = None
    fail_first: int = 0
    dead: bool = False
    delay_s: float = 0.0  # before answering a request
    jitter_s: float = 0.0  # and a random delay up to this
    #: (body, the how-manieth request of its webhook-id) -> answer 500
    fail_when: Callable[[dict[str, Any], int], bool] | None = None
    requests: int = 0
    per_message: dict[str, int] = field(default_factory=dict)
    open_now: int = 0
    most_open: int = 0
    open_resources: set[str] = field(default_factory=set)
    overlaps: list[str] = field(default_factory=list)  # a resource with two requests open
    received: list[Received] = field(default_factory=list)  # 2xx answered only
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.received]


class Receiver:
    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}
        self.closing = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def __aenter__(self) -> Receiver:
        await self.server.start_server()
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.closing.set()
        await self.server.close()

    def url(self, name: str) -> str:
        self.paths.setdefault(name, Path())
        return str(self.server.make_url(f"/{name}"))

    def path(self, name: str) -> Path:
        return self.paths.setdefault(name, Path())

    async def _handle(self, request: web.Request) -> web.Response:
        p = self.path(request.match_info["name"])
        p.requests += 1
        data = await request.read()
        if p.dead:  # answers nothing until the receiver closes
            await self.closing.wait()
            return web.Response(status=503)
        body = orjson.loads(data)
        rid = f"{body.get('resourceType')}/{body.get('id')}"
        if rid in p.open_resources:
            p.overlaps.append(rid)
        p.open_resources.add(rid)
        p.open_now += 1
        p.most_open = max(p.most_open, p.open_now)
        try:
            delay = p.delay_s + (random.uniform(0, p.jitter_s) if p.jitter_s else 0.0)
            if delay:
                await asyncio.sleep(delay)
        finally:
            p.open_now -= 1
            p.open_resources.discard(rid)
        msg = request.headers.get("webhook-id", "")
        p.per_message[msg] = nth = p.per_message.get(msg, 0) + 1
        if p.requests <= p.fail_first or (p.fail_when is not None and p.fail_when(body, nth)):
            return web.Response(status=500)
        verified = False
        if p.secret is not None:
            try:
                Webhook(p.secret).verify(data, dict(request.headers))
                verified = True
            except WebhookVerificationError:
                return web.Response(status=401, text="bad signature")
        got = Received(body, dict(request.headers), time.time(), verified, data)
        p.received.append(got)
        p.arrived.set()
        return web.Response(status=204)
