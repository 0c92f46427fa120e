"""Strict durability (``INGESTD_DURABILITY=strict``): a write accepted on a producer's
behalf is on disk before the producer hears that it was accepted.

``appendfsync everysec`` (Redis as deployed) fsyncs the AOF once a second, so a power
loss can take the last second of writes with it, 202s included. Strict mode closes
that window in one of two ways, chosen per connection from the server it reaches:

* Redis 7.2+ (``WAITAOF``): the writer sends ``WAITAOF 1 0 <ms>`` right after its
  writes, on the same connection and in the same round trip, and counts the write as
  accepted only when the reply says the local AOF holds it (``numlocal`` = 1). The
  gateway's group commit sends ONE per round trip, however many events it carries.
* older servers: the server must fsync every write before it replies
  (``appendonly yes`` and ``appendfsync always``); nothing is added to the writes.

Every new connection of a strict client is checked before its first command (redis-py's
``redis_connect_func``), so a Redis restarted with another configuration or version
is checked again on reconnect: one that no longer qualifies fails the connection with
:class:`NotDurable` (a Redis connection error: the request gets 503, nothing is
acknowledged). :func:`require` makes the same check at a stage's start, where a
server that does not qualify is a :class:`~shared.errors.ConfigError`.

The settings are read with ``CONFIG GET``; where CONFIG is disabled (renamed away, as
some managed Redis services do) ``INFO persistence`` still tells whether the AOF is
on, but not the fsync policy, so such a server below 7.2 cannot be shown to qualify.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import ConfigError
from shared.redis import wire

log = logging.getLogger("ingestd.redis.durable")

WAITAOF_SINCE = (7, 2)
SETTING = "INGESTD_DURABILITY"
_PROBE = wire.commands(
    (
        ("INFO", "server"),
        ("INFO", "persistence"),
        ("CONFIG", "GET", "appendonly"),
        ("CONFIG", "GET", "appendfsync"),
    )
)


class NotDurable(RedisConnectionError):
    """The Redis server cannot confirm that a write is on disk (strict mode)."""


@dataclass(frozen=True, slots=True)
class Server:
    """What a server says about its durability."""

    version: tuple[int, ...]
    appendonly: bool | None  # None: neither CONFIG nor INFO said
    appendfsync: str | None  # None: CONFIG is disabled
    name: str = "redis"

    @property
    def waitaof(self) -> bool:
        return self.version[:2] >= WAITAOF_SINCE

    def shown(self) -> str:
        return f"{self.name} {'.'.join(map(str, self.version))}"


def _info(raw: Any) -> dict[str, str]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep and not k.startswith("#"):
            out[k.strip()] = v.strip()
    return out


def _config(raw: Any) -> str | None:
    """The value of a ``CONFIG GET <name>`` reply; None when CONFIG is refused."""
    if isinstance(raw, Exception) or not isinstance(raw, list) or len(raw) < 2:
        return None
    v = raw[1]
    return (v.decode() if isinstance(v, bytes) else str(v)).lower()


def parse(server_info: Any, persistence: Any, appendonly: Any, appendfsync: Any) -> Server:
    """The replies of :data:`_PROBE` as a :class:`Server` (an INFO refused raises)."""
    for r in (server_info, persistence):
        if isinstance(r, Exception):
            raise NotDurable(f"{SETTING}=strict cannot read the server's INFO: {r}")
    info, pers = _info(server_info), _info(persistence)
    version = tuple(int(x) for x in info.get("redis_version", "0").split(".") if x.isdigit())
    aof = _config(appendonly)
    if aof is None and "aof_enabled" in pers:
        aof = "yes" if pers["aof_enabled"] == "1" else "no"
    return Server(
        version or (0,),
        None if aof is None else aof == "yes",
        _config(appendfsync),
        info.get("server_name", "redis"),
    )


def problem(s: Server) -> str | None:
    """Why ``s`` cannot back strict mode, or None when it can."""
    need = (
        f"{SETTING}=strict needs a Redis server that confirms every write is on disk: "
        f"Redis >= {'.'.join(map(str, WAITAOF_SINCE))} (WAITAOF) with appendonly yes, or "
        "appendonly yes and appendfsync always"
    )
    if s.appendonly is False:
        return f"{need}; {s.shown()} runs with appendonly no"
    if s.waitaof:
        return None
    if s.appendonly is None or s.appendfsync is None:
        return (
            f"{need}; {s.shown()} has no WAITAOF and refuses CONFIG GET, so its appendfsync "
            "cannot be read (INFO persistence does not show it)"
        )
    if s.appendfsync != "always":
        return f"{need}; {s.shown()} has no WAITAOF and runs with appendfsync {s.appendfsync}"
    return None


async def probe(conn: AbstractConnection) -> Server:
    """One round trip on ``conn``: what its server says about durability."""
    await conn.send_packed_command(_PROBE, check_health=False)
    replies: list[Any] = []
    for _ in range(4):
        try:
            replies.append(await conn.read_response())
        except ResponseError as e:  # CONFIG renamed away or refused: a value, in step
            replies.append(e)
    return parse(*replies)


class Guard:
    """Checks each new connection of the clients built with :meth:`client_kwargs` and
    remembers, per connection, whether its server takes WAITAOF."""

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self._waitaof: weakref.WeakKeyDictionary[AbstractConnection, bool] = (
            weakref.WeakKeyDictionary()
        )

    def client_kwargs(self) -> dict[str, Any]:
        return {"redis_connect_func": self.on_connect}

    async def on_connect(self, conn: AbstractConnection) -> None:
        await conn.on_connect()  # the handshake redis-py would do (AUTH, SELECT, ...)
        server = await probe(conn)
        why = problem(server)
        if why:
            log.error("%s", why)
            raise NotDurable(why)
        self._waitaof[conn] = server.waitaof

    def waitaof(self, conn: AbstractConnection | None) -> bool:
        return conn is not None and self._waitaof.get(conn, False)

    def command(self, timeout_ms: float | None = None) -> bytes:
        """``WAITAOF 1 0 <ms>``, packed (never 0 ms: that would wait for ever)."""
        ms = max(1, int(self.timeout_ms if timeout_ms is None else timeout_ms))
        return wire.command("WAITAOF", 1, 0, ms)

    def check(self, reply: Any) -> None:
        """Raise :class:`NotDurable` unless a WAITAOF reply says the local AOF has it."""
        if isinstance(reply, Exception):
            raise NotDurable(f"WAITAOF failed: {reply}")
        if not isinstance(reply, list) or not reply or int(reply[0]) < 1:
            raise NotDurable(
                f"the write was not confirmed on disk within {self.timeout_ms} ms (WAITAOF); "
                "it may or may not have been stored"
            )

    async def confirm(self, client: Redis) -> None:
        """WAITAOF on a single-connection ``client`` (``Redis.client()``) after its writes,
        when its server takes it (otherwise its server fsynced before replying)."""
        conn = client.connection
        if self.waitaof(conn):
            reply = await client.execute_command("WAITAOF", 1, 0, max(1, self.timeout_ms))  # type: ignore[no-untyped-call]
            self.check(reply)


def guard_for(strict: bool, timeout_ms: int) -> Guard | None:
    return Guard(timeout_ms) if strict else None


async def require(redis: Redis, stage: str) -> None:
    """At a stage's start, with a client built with the guard: a server that does not
    qualify is a :class:`ConfigError`; one not reachable yet is checked on connect."""
    try:
        await redis.ping()
    except NotDurable as e:
        raise ConfigError(f"the {stage} refuses to start: {e}") from e
    except (RedisConnectionError, RedisTimeoutError, OSError) as e:
        log.warning(
            "%s=strict: Redis is not reachable yet (%s); each connection is checked when it opens",
            SETTING,
            e,
        )
