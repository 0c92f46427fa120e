"""Process-level fault scenarios: one fault each, injected mid-stream and lifted, then the
same exactly-once check (``Run.check`` in tests/faults/harness.py).

Each test has its own Redis (AOF on) and PostgreSQL on free loopback ports, runs
``ingestd gateway|worker|projector`` as processes and a retrying producer against
them. Nothing is restarted by hand except what a fault itself stops (a killed stage
comes back as a supervisor would bring it back); the stages must recover by
themselves. Each run adds a row to the results table (``pytest -s`` prints it, the
terminal summary repeats it, ``<basetemp>/fault-results.jsonl`` keeps it).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import string
import time
from typing import Any

import orjson
import pytest

from shared.redis import keyspace as ks
from tests.conftest import EMPLOYEE_SCHEMA
from tests.e2e.helpers import (
    RT,
    change_event_ids,
    consumer_of,
    ingest_event_ids,
    kill_mid_batch,
    pending_by_consumer,
    restart,
)
from tests.faults.harness import FaultEnv, Run, scope_in
from tests.faults.producer import Accepted

pytestmark = [pytest.mark.slow, pytest.mark.faults]

TWO_WORKERS = ("gateway", "worker", "worker", "projector")


async def off_loop(fn: Any, *args: Any) -> Any:
    """A blocking server operation, off the event loop (the producers keep running)."""
    return await asyncio.to_thread(fn, *args)


# ---- Redis -----------------------------------------------------------------------------


async def test_redis_shutdown_and_restart(fault_env: FaultEnv) -> None:
    async with Run(fault_env, "redis SHUTDOWN + restart") as run:
        await run.traffic()
        run.fault_began()
        await off_loop(fault_env.redis.shutdown)
        await asyncio.sleep(2)
        await off_loop(fault_env.redis.start)
        run.fault_ended()
        await run.flowing()
        await run.finish()


async def test_redis_kill9_and_restart(fault_env: FaultEnv) -> None:
    async with Run(fault_env, "redis kill -9 + restart") as run:
        await run.traffic()
        run.fault_began()
        await off_loop(fault_env.redis.kill9)
        await asyncio.sleep(2)
        await off_loop(fault_env.redis.start)
        run.fault_ended()
        await run.flowing()
        await run.finish()


async def test_redis_aof_tail_lost(fault_env: FaultEnv) -> None:
    """What an OS crash does with ``appendfsync everysec``: Redis comes back without its
    last second of writes (XADDs the gateway answered 202 for, XACK/XDELs and change
    entries of batches the projector may already hold in PostgreSQL, write-model
    updates). Only Redis is restarted. Accepted events may be missing only if their 202
    arrived after the point the AOF was cut back to."""
    redis = fault_env.redis
    async with Run(fault_env, "redis AOF tail lost (~1 s)") as run:
        samples: list[tuple[float, str, int]] = []
        sampling = True

        async def sample() -> None:
            while sampling:
                f = redis.incr_aof()
                if f is not None:
                    samples.append((time.monotonic(), f.name, f.stat().st_size))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        await run.traffic(warmup=600)
        run.fault_began()
        await off_loop(redis.kill9)
        killed = time.monotonic()
        sampling = False
        await sampler
        newest = redis.incr_aof()
        assert newest is not None
        size = newest.stat().st_size
        earlier = [s for s in samples if s[1] == newest.name and s[0] <= killed - 1.0]
        cut_at, keep = (earlier[-1][0], earlier[-1][2]) if earlier else (0.0, 0)
        os.truncate(newest, keep)
        window = [a for a in run.producer.order if a.mono > cut_at]
        run.allowed_lost = lambda a: a.mono > cut_at
        run.notes.append(
            f"cut {size - keep} of {size} bytes of {newest.name} (to its size "
            f"{killed - cut_at:.1f}s before the kill); {len(window)} events were accepted in "
            "the lost window"
        )
        await off_loop(redis.start)
        run.fault_ended()
        await run.flowing()
        await run.finish()
        run.notes.append(f"lost of those: {run.result['lost']}")


async def test_redis_sigstop_15s(fault_env: FaultEnv) -> None:
    async with Run(fault_env, "redis SIGSTOP 15 s") as run:
        await run.traffic()
        run.fault_began()
        fault_env.redis.pause()
        await asyncio.sleep(15)
        fault_env.redis.resume()
        run.fault_ended()
        await run.flowing()
        await run.finish()


# ---- PostgreSQL ------------------------------------------------------------------------


async def test_postgres_immediate_restart(fault_env: FaultEnv) -> None:
    async with Run(fault_env, "postgres immediate restart") as run:
        await run.traffic()
        run.fault_began()
        await off_loop(fault_env.pg.stop, "immediate")
        await asyncio.sleep(1)
        await off_loop(fault_env.pg.start)
        run.fault_ended()
        await run.flowing()
        await run.finish()


async def test_postgres_down_15s(fault_env: FaultEnv) -> None:
    async with Run(fault_env, "postgres down 15 s") as run:
        await run.traffic()
        run.fault_began()
        await off_loop(fault_env.pg.stop, "fast")
        await asyncio.sleep(15)
        await off_loop(fault_env.pg.start)
        run.fault_ended()
        await run.flowing()
        await run.finish()


# ---- stage processes -------------------------------------------------------------------


async def test_worker_kill9(fault_env: FaultEnv) -> None:
    """One of two workers SIGKILLed inside a batch (proven: its delivered, unacknowledged
    entries are read back after the kill); a supervisor starts it again at once."""
    async with Run(fault_env, "worker kill -9 (of 2)", TWO_WORKERS) as run:
        await run.traffic()
        r = run.redis()
        keys = [ks.ingest_stream(p) for p in range(run.settings.partitions)]
        run.fault_began()
        out = await kill_mid_batch(r, run.s["worker"], keys, ks.INGEST_GROUP, ingest_event_ids)
        await r.aclose()
        restart(out.killed, run.s["worker"])
        run.fault_ended()
        run.notes.append(f"killed holding {out.count} entries (kill {out.attempts})")
        await run.flowing()
        await run.finish()


async def test_projector_kill9(fault_env: FaultEnv) -> None:
    async with Run(fault_env, "projector kill -9") as run:
        await run.traffic()
        r = run.redis()
        keys = [ks.changes_stream(p) for p in range(run.settings.partitions)]
        run.fault_began()
        out = await kill_mid_batch(
            r, run.s["projector"], keys, ks.PROJECTOR_GROUP, change_event_ids
        )
        await r.aclose()
        restart(out.killed, run.s["projector"])
        run.fault_ended()
        run.notes.append(f"killed holding {out.count} entries (kill {out.attempts})")
        await run.flowing()
        await run.finish()


async def test_worker_sigstop_20s_second_worker_takes_over(fault_env: FaultEnv) -> None:
    """A worker frozen inside a batch for 20 s: the other worker must take its partitions
    over (including the entries delivered to the frozen one) while it is frozen; once
    resumed, the frozen worker's stale batch must not commit."""
    async with Run(fault_env, "worker SIGSTOP 20 s (of 2)", TWO_WORKERS) as run:
        await run.traffic()
        frozen, held = await run.stop_mid_batch(run.s["worker"])
        run.fault_began()
        name = consumer_of(frozen)
        keys = [ks.ingest_stream(p) for p in range(run.settings.partitions)]
        r = run.redis()

        async def taken_over() -> bool:
            return (await pending_by_consumer(r, keys, ks.INGEST_GROUP)).get(name, 0) == 0

        try:
            await run.wait(
                f"the other worker to take over the {held} entries the frozen worker held",
                taken_over,
                25,
            )
            took = time.monotonic() - (run.fault_start or 0)
            run.notes.append(f"frozen holding {held} entries, taken over after {took:.1f}s")
            await asyncio.sleep(max(0.0, 20 - took))
        finally:
            await r.aclose()
            os.killpg(frozen.pid, signal.SIGCONT)
        run.fault_ended()
        await run.flowing()
        await run.finish()


# ---- backpressure ----------------------------------------------------------------------


async def test_backlog_past_max_backlog(fault_env: FaultEnv) -> None:
    """INGESTD_MAX_BACKLOG=20: the worker paused (SIGSTOP, shorter than its lease) until
    producers are refused with 429, then resumed: the 429s must stop and every event
    retried after one must be accepted and applied once."""
    async with Run(fault_env, "backlog past INGESTD_MAX_BACKLOG=20", max_backlog=20) as run:
        await run.traffic()
        worker = run.s["worker"][0]
        os.killpg(worker.pid, signal.SIGSTOP)
        run.fault_began()
        try:
            await run.wait(
                "producers to get 429 (backlog over the limit)",
                lambda: run.producer.counts["429"] >= 50,
                8,
            )
        finally:
            os.killpg(worker.pid, signal.SIGCONT)
        run.fault_ended()
        await run.flowing()
        await run.finish()
        assert run.producer.counts["429"] >= 50


# ---- poison input ----------------------------------------------------------------------


async def test_long_id_is_rejected_and_partition_flows(fault_env: FaultEnv) -> None:
    """``{"employeeId": <3,000 random alphanumerics>}``: must end ``rejected`` with a
    receipt (and a sync issue), and later events of the same partition must apply."""
    async with Run(fault_env, "3,000-character id") as run:
        status, body = await run.add_table("employee", EMPLOYEE_SCHEMA)
        assert status == 201, body
        rt = body["resourceType"]
        p = 0
        g = scope_in(p, rt)  # the producers have scopes in this partition too
        await run.traffic()
        long_id = "".join(random.choices(string.ascii_letters + string.digits, k=3000))
        path = "/integration/custom-data/event/employee"
        run.fault_began()
        eid = await run.post_new_table(path, orjson.dumps({"employeeId": long_id}), g)
        run.fault_ended()
        run.expect(eid, "rejected", p, f"the 3,000-character id (partition {p})")
        after = await run.post_new_table(path, orjson.dumps({"employeeId": "after-long"}), g)
        run.expect(after, "applied", p, "an event of the same scope sent after it")
        await run.flowing()
        await run.finish()
        issues = await run.q("SELECT code FROM sync_issues WHERE event_id = $1", eid)
        assert issues, "the rejected long id left no sync issue"
        run.notes.append(f"rejected with {[r['code'] for r in issues]}")


BACKTRACKING_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"id": {"type": "string"}, "v": {"type": "string", "pattern": "^(a+)+\\1$"}},
    "required": ["id"],
    "resmo": {"id": "id"},
}
MAX_LATENCY_S = 5.0  # an unrelated event's 202 -> applied, while the bad bulk is processed


async def test_backtracking_pattern(fault_env: FaultEnv) -> None:
    """A table whose ``v`` must match ``^(a+)+\\1$`` and a bulk of 4 items whose ``v`` is a
    million ``a`` and a ``!``: either the schema is refused (400 invalid_schema) or the
    items are rejected; meanwhile events of other partitions keep being applied within
    5 s, no other partition's drain lease is lost, and the bulk's partition flows on."""
    async with Run(fault_env, "backtracking pattern bulk") as run:
        status, body = await run.add_table("blob", BACKTRACKING_SCHEMA)
        await run.traffic()
        if status == 400:
            assert body["code"] == "invalid_schema", body
            run.notes.append("the schema was refused at creation (400 invalid_schema)")
            run.fault_began()
            run.fault_ended()
            await run.flowing()
            await run.finish()
            return
        assert status == 201, body
        p = 1
        g = scope_in(p, body["resourceType"])
        items = [{"id": f"big{i}", "v": "a" * 1_000_000 + "!"} for i in range(4)]
        run.fault_began()
        eid = await run.post_new_table(
            "/integration/custom-data/bulk-event/blob", orjson.dumps(items), g
        )
        sent = time.time()
        run.fault_ended()
        run.expect(eid, "rejected", p, f"the bulk of 4 x 1M-'a' values (partition {p})")
        try:
            await run.flowing()
            await run.finish()
        finally:
            worst = await _worst_latency(run, sent, exclude=p)
            losses = run.lease_losses()
            said = "unknown" if worst is None else f"{worst[0]}s (partition {worst[1]})"
            if worst is not None and worst[1] < 0:
                said = f"some never applied ({worst[0]}s and counting)"
            run.notes.append(
                f"other partitions' worst 202->applied while the bulk ran: {said}; "
                f"drain leases lost per partition: {dict(losses)}"
            )
        assert worst is not None and worst[0] <= MAX_LATENCY_S, (
            f"events of other partitions waited up to {worst}s (> {MAX_LATENCY_S}s) while "
            "the worker validated the bulk: the validation stalls the worker"
        )
        others = {q: n for q, n in losses.items() if q != p}
        assert not others, f"drain leases lost on other partitions: {others}"


async def _worst_latency(run: Run, since: float, exclude: int) -> tuple[float, int] | None:
    """The longest 202 -> applied among producer events accepted after ``since`` (wall
    time) until the bulk's receipt (or now) on partitions other than ``exclude``, with
    its partition."""
    try:
        rows = await run.q(
            "SELECT extract(epoch FROM max(processed_at))::float8 AS t FROM ingest_events"
            " WHERE event_id = ANY($1)",
            list(run.expects),
        )
        until = rows[0]["t"] if rows and rows[0]["t"] is not None else time.time()
        parts = run.settings.partitions
        picked: dict[str, Accepted] = {
            a.eid: a
            for a in run.producer.order
            if since <= a.wall <= until and ks.partition_of(RT, a.group_key, parts) != exclude
        }
        done = await run.q(
            "SELECT event_id, extract(epoch FROM processed_at)::float8 AS t FROM ingest_events"
            " WHERE event_id = ANY($1)",
            list(picked),
        )
    except Exception:
        return None
    worst: tuple[float, int] | None = None
    for r in done:
        a = picked[r["event_id"]]
        lat = round(r["t"] - a.wall, 1)
        if worst is None or lat > worst[0]:
            worst = (lat, ks.partition_of(RT, a.group_key, run.settings.partitions))
    pending = len(picked) - len(done)
    if pending:  # never applied: as late as it gets
        return (round(time.time() - since, 1), -1)
    return worst


# ---- the check itself ------------------------------------------------------------------


async def test_the_check_catches_what_it_must(fault_env: FaultEnv) -> None:
    """No fault; then PostgreSQL is tampered with, one way at a time: the check must fail
    naming it (it is not vacuous), and pass again once the tampering is undone."""
    async with Run(fault_env, "the check itself (tampering)") as run:
        await run.traffic(warmup=200)
        run.fault_began()
        run.fault_ended()
        await run.flowing(n=100)
        await run.finish()
        where = "resource_type = $1 AND group_key = $2 AND resource_id = $3"

        async def must_fail(expected: str, undo: str, *args: Any) -> None:
            with pytest.raises(AssertionError, match=expected):
                await run.check(within=3, stall=3)
            await run.q(undo, *args)
            await run.check(within=10, stall=10)

        # a second history row for an event (as a replay would write it)
        some = (await run.q("SELECT * FROM resource_changes ORDER BY id DESC LIMIT 1"))[0]
        key = (some["resource_type"], some["group_key"], some["resource_id"])
        await run.q(
            "INSERT INTO resource_changes (resource_type, group_key, resource_id, version, op,"
            " patch, after, event_id, received_at) SELECT resource_type, group_key,"
            " resource_id, version + 1, op, patch, after, event_id, received_at"
            " FROM resource_changes WHERE id = $1",
            some["id"],
        )
        await must_fail(
            "more than one history row",
            f"DELETE FROM resource_changes WHERE {where} AND version = $4",
            *key,
            some["version"] + 1,
        )
        # a version skipped
        bump = "UPDATE resource_changes SET version = version + $2 WHERE id = $1"
        await run.q(bump, some["id"], 100)
        await must_fail("versions not contiguous", bump, some["id"], -100)
        # a resource that does not hold its last accepted payload
        live = (await run.q("SELECT * FROM resources LIMIT 1"))[0]
        lkey = (live["resource_type"], live["group_key"], live["resource_id"])
        await run.q(f"UPDATE resources SET data = '{{\"seq\": -1}}' WHERE {where}", *lkey)
        await must_fail(
            "do not hold their last accepted payload",
            f"UPDATE resources SET data = $4::jsonb WHERE {where}",
            *lkey,
            live["data"],
        )
        # an accepted event without its receipt
        rename = "UPDATE ingest_events SET event_id = $2 WHERE event_id = $1"
        await run.q(rename, some["event_id"], "hidden")
        with pytest.raises(AssertionError, match="still have no receipt"):
            await run.check(within=3, stall=3)
        await run.q(rename, "hidden", some["event_id"])
        await run.check(within=10, stall=10)
        run.result.pop("unapplied", None)  # left by the tampered checks
        live_now = (await run.q("SELECT count(*) AS n FROM resources"))[0]["n"]
        run.notes.append(f"{live_now} of {len(run.producer.resources)} resources live at the end")
