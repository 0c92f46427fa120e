"""A simulated power loss of the Redis host, in strict and in default durability mode.

What a power loss keeps of the AOF is what had been fsynced; everything the kernel held
only in its page cache is gone. A kill -9 alone loses nothing (the page cache
survives the process), so the loss is simulated by cutting the AOF back:

* **strict** (``INGESTD_DURABILITY=strict``, Redis 7.0 with ``appendfsync always``):
  Redis fsyncs every write before it replies, so every 202 was preceded by the fsync
  of its event. Redis is frozen (SIGSTOP), the AOF's size at that instant recorded,
  Redis killed (SIGKILL) and the AOF truncated to that size: no fsynced byte is lost
  (the model keeps at most the bytes of a write whose fsync had not finished, which
  no 202 depended on). Every event answered 202 must be applied exactly once.
* **default** (``appendfsync everysec``): only what the once-a-second fsync had
  written survives; that is approximated, as in test_faults' AOF-tail test, by
  truncating to the AOF's size about 1 s before the kill. This run must LOSE events
  answered 202 — it shows the test can tell the two modes apart.

In both, the worker is frozen (SIGSTOP) about 1.5 s before the power loss, so the
events accepted in the last second exist only in Redis (none reached PostgreSQL
ahead of the loss); at the power loss the worker and projector are killed with Redis
and started again once Redis is back (the gateway, a host of its own in this model,
rides the outage out). Then the same check as every fault scenario (``Run.check``):
no accepted event applied twice, versions contiguous, each resource at its last
accepted payload — with no loss allowed at all in strict mode.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable

import pytest

from tests.e2e.helpers import restart
from tests.faults.harness import FaultEnv, Run
from tests.faults.servers import PrivateRedis

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def _freeze(run: Run, name: str) -> None:
    for st in run.s[name]:
        if st.proc and st.proc.poll() is None:
            os.killpg(st.pid, signal.SIGSTOP)


def _kill_and_restart(run: Run, name: str) -> None:
    for st in list(run.s[name]):
        if st.proc and st.proc.poll() is None:
            os.killpg(st.pid, signal.SIGKILL)
            st.proc.wait(10)
            restart(st, run.s[name])


async def _sizes(
    redis: PrivateRedis, out: list[tuple[float, str, int]], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        f = redis.incr_aof()
        if f is not None:
            out.append((time.monotonic(), f.name, f.stat().st_size))
        await asyncio.sleep(0.05)


async def _power_loss(
    run: Run,
    redis: PrivateRedis,
    keep: Callable[[list[tuple[float, str, int]], float], tuple[float, int]],
) -> float:
    """Traffic, the worker frozen, then at a random moment the power loss: Redis frozen
    and killed, its AOF cut to ``keep(samples, kill time)`` -> (cut time, size); Redis,
    worker and projector started again. Returns the cut time."""
    samples: list[tuple[float, str, int]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sizes(redis, samples, stop))
    await run.traffic(warmup=600)
    await asyncio.sleep(random.uniform(0.0, 1.0))
    run.fault_began()
    _freeze(run, "worker")
    await asyncio.sleep(1.5)
    redis.pause()  # nothing more reaches the file: its size now is its size at the kill
    killed = time.monotonic()
    stop.set()
    await sampler
    newest = redis.incr_aof()
    assert newest is not None
    at_kill = newest.stat().st_size
    redis.kill9()
    samples.append((killed, newest.name, at_kill))
    cut_at, size = keep([s for s in samples if s[1] == newest.name], killed)
    os.truncate(newest, size)
    window = [a for a in run.producer.order if a.mono > cut_at]
    run.notes.append(
        f"AOF {newest.name} cut to {size} of {at_kill} bytes (its size {killed - cut_at:.1f}s "
        f"before the kill); {len(window)} events were answered 202 after that point"
    )
    _kill_and_restart(run, "worker")
    _kill_and_restart(run, "projector")
    await asyncio.to_thread(redis.start)
    run.fault_ended()
    await run.flowing()
    return cut_at


async def test_power_loss_strict_loses_nothing(fault_env_with: Callable[..., FaultEnv]) -> None:
    env = fault_env_with(appendfsync="always", durability="strict")
    async with Run(env, "power loss, strict (fsync always)", senders=32, pause=0.01) as run:
        await _power_loss(run, env.redis, lambda samples, killed: (killed, samples[-1][2]))
        await run.finish()  # no event may be lost: allowed_lost is not set
        assert run.result["lost"] == 0 and run.result["doubled"] == 0
        assert run.producer.counts["202"] > 600


async def test_power_loss_default_loses_the_last_second(
    fault_env_with: Callable[..., FaultEnv],
) -> None:
    env = fault_env_with(appendfsync="everysec", durability="default")
    async with Run(env, "power loss, default (fsync everysec)", senders=32, pause=0.01) as run:

        def second_before(
            samples: list[tuple[float, str, int]], killed: float
        ) -> tuple[float, int]:
            earlier = [s for s in samples if s[0] <= killed - 1.0]
            return (earlier[-1][0], earlier[-1][2]) if earlier else (0.0, 0)

        cut_at = await _power_loss(run, env.redis, second_before)
        run.allowed_lost = lambda a: a.mono > cut_at
        await run.finish()
        run.notes.append(f"lost: {run.result['lost']}")
        assert run.result["doubled"] == 0
        # the teeth: default mode lost events it had answered 202 for
        assert run.result["lost"] > 0, "default mode lost nothing: the simulation shows nothing"
