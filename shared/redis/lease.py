"""Partition leases: SET NX PX with a random token, refreshed and released only by its holder.

A lease makes one consumer at a time the drainer (worker) or applier (projector)
of a partition. Every write a holder makes under it goes through
:class:`shared.redis.txn.GuardedTransaction` or :meth:`Lease.hset_if_held`, so a
holder that lost its lease can never overwrite newer state.
"""

from __future__ import annotations

import threading
import time
import uuid

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from shared.redis.scripts import Script

REFRESH = Script(
    "lease-refresh",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""",
)
RELEASE = Script(
    "lease-release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""",
)
GUARDED_HSET = Script(
    "lease-guarded-hset",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
""",
)

DEFAULT_TTL_MS = 10_000
#: :meth:`Lease.keep_due` refreshes at most this often (a tenth of the default TTL): a
#: refresh per batch is a round trip per batch, which small live batches pay in full
KEEP_EVERY_S = DEFAULT_TTL_MS / 10_000


class LostLease(Exception):
    """This holder's lease expired or was taken over: stop, write nothing more."""


class Lease:
    def __init__(self, redis: Redis, key: str, ttl_ms: int = DEFAULT_TTL_MS) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = uuid.uuid4().hex
        self._kept_at = 0.0  # monotonic time of the last successful acquire or refresh

    async def acquire(self) -> bool:
        got = bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        if got:
            self._kept_at = time.monotonic()
        return got

    async def refresh(self, ttl_ms: int | None = None) -> bool:
        """Extend the lease (by ``ttl_ms``, default its own TTL) while it is held."""
        ttl = self.ttl_ms if ttl_ms is None else ttl_ms
        return bool(await REFRESH.run(self.redis, [self.key], self.token, ttl))

    async def keep(self, ttl_ms: int | None = None) -> None:
        """:meth:`refresh`, raising :class:`LostLease` when the lease is gone."""
        if not await self.refresh(ttl_ms):
            raise LostLease(self.key)
        self._kept_at = time.monotonic()

    async def keep_due(self) -> None:
        """:meth:`keep`, unless this holder kept the lease less than :data:`KEEP_EVERY_S`
        ago. Between batches that is enough: every write a holder makes is fenced on its
        own (a guarded transaction checks the token; the projector's position row), so a
        lost lease is noticed at the next refresh, at most that much later."""
        if time.monotonic() - self._kept_at >= KEEP_EVERY_S:
            await self.keep()

    async def release(self) -> None:
        await RELEASE.run(self.redis, [self.key], self.token)

    async def hset_if_held(self, key: str, mapping: dict[str, str]) -> bool:
        """HSET ``mapping`` into ``key`` and refresh the lease, atomically, only while this
        lease is held."""
        args: list[str | int] = [self.token, self.ttl_ms]
        for field, value in mapping.items():
            args += [field, value]
        return bool(await GUARDED_HSET.run(self.redis, [self.key, key], *args))


class LeaseKeeper:
    """Renews a process's leases from a thread of its own, so that a long stretch of work
    on one partition (a big snapshot's validation holds the event loop) never costs the
    process its leases on the others. A lease is renewed until its holder releases it or
    its ``hold_s`` runs out (a holder stuck for good loses its partition after that)."""

    def __init__(self, redis_url: str, every_s: float = DEFAULT_TTL_MS / 4000) -> None:
        import redis as sync_redis

        self._client = sync_redis.Redis.from_url(redis_url, socket_timeout=2.0)
        self._every = every_s
        self._held: dict[str, tuple[str, int, float]] = {}  # key -> token, ttl, until
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()

    def hold(self, lease: Lease, hold_s: float) -> None:
        with self._lock:
            self._held[lease.key] = (lease.token, lease.ttl_ms, time.monotonic() + hold_s)

    def drop(self, lease: Lease) -> None:
        with self._lock:
            held = self._held.get(lease.key)
            if held is not None and held[0] == lease.token:
                del self._held[lease.key]

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            with self._lock:
                held = list(self._held.items())
            now = time.monotonic()
            for key, (token, ttl, until) in held:
                if now > until or not self._renew(key, token, ttl):
                    with self._lock:
                        if self._held.get(key, (None,))[0] == token:
                            del self._held[key]

    def _renew(self, key: str, token: str, ttl: int) -> bool:
        try:
            try:
                return bool(self._client.evalsha(REFRESH.sha, 1, key, token, str(ttl)))
            except NoScriptError:
                self._client.script_load(REFRESH.source)
                return bool(self._client.evalsha(REFRESH.sha, 1, key, token, str(ttl)))
        except RedisError:
            return True  # unreachable: keep trying; the lease's own TTL decides meanwhile
