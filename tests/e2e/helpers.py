"""Helpers for the process-level tests: a table to write to, senders, polls and checks."""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from shared.config import Settings
from shared.events import Change, RawMeta
from shared.redis import keyspace as ks
from tests.conftest import seed_directory
from tests.e2e.procs import Stage, port
from tests.helpers import poll

TABLE = "item"
PREFIX = "_e2e"
RT = f"{PREFIX}_{TABLE}"
COUNT_EVENTS = "SELECT count(*) FROM ingest_events WHERE resource_type = $1"
SEQ_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "seq": {"type": "integer"},
        "writer": {"type": "string"},
        "pad": {"type": "string"},
    },
    "required": ["id", "seq"],
    "resmo": {"id": "id", "importantFields": ["seq"]},
}


#: how long a test client keeps an idle connection for reuse: well inside the gateway's
#: INGESTD_HTTP_IDLE_TIMEOUT_MS (15 s). aiohttp's client default is 15 s too, so a
#: connection idle that long could be reused just as the gateway closed it, and the
#: request failed with ServerDisconnectedError (a flake of the kill tests' long polls)
CLIENT_KEEPALIVE_S = 5.0


def connector(limit: int = 200) -> aiohttp.TCPConnector:
    """A client connection pool that drops idle connections before the gateway does."""
    return aiohttp.TCPConnector(limit=limit, keepalive_timeout=CLIENT_KEEPALIVE_S)


@asynccontextmanager
async def gateway_client(stage: Stage) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for a gateway process (base URL and a connection pool of 200)."""
    conn = connector(200)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port(stage)}", connector=conn) as c:
        yield c


async def create_table(c: aiohttp.ClientSession) -> str:
    """Create schema group + table + integration through the admin API; return the key."""
    return (await seed_directory(c, PREFIX, TABLE, SEQ_SCHEMA)).key


@dataclass
class Sent:
    """What the test sent and what the gateways accepted."""

    accepted: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # eid -> (g, id, seq)
    refused: list[tuple[int, str]] = field(default_factory=list)
    per_resource: dict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def record(self, eid: str, g: str, rid: str, seq: int) -> None:
        self.accepted[eid] = (g, rid, seq)
        self.per_resource[(g, rid)].append(seq)


async def send(
    c: aiohttp.ClientSession, key: str, sent: Sent, g: str, rid: str, seq: int, **extra: Any
) -> bool:
    doc = {"id": rid, "seq": seq, **extra}
    r = await c.post(
        f"/integration/custom-data/event/{TABLE}",
        params={"groupKey": g},
        json=doc,
        headers={"X-Ingest-Key": key},
    )
    if r.status != 202:
        sent.refused.append((r.status, await r.text()))
        return False
    sent.record((await r.json())["eventId"], g, rid, seq)
    return True


async def send_series(
    c: aiohttp.ClientSession,
    key: str,
    sent: Sent,
    g: str,
    rid: str,
    seqs: range,
    pace: asyncio.Event | None = None,
    **extra: Any,
) -> None:
    """Sequential: each event is sent only after the previous one was answered."""
    for seq in seqs:
        if pace is not None:
            await pace.wait()
        try:
            await send(c, key, sent, g, rid, seq, **extra)
        except aiohttp.ClientError as e:  # not accepted; the invariant concerns 202s only
            sent.refused.append((0, repr(e)))


async def wait_processed(pool: asyncpg.Pool, n: int, within: float) -> None:
    async def done() -> bool:
        return bool(await pool.fetchval(COUNT_EVENTS, RT) >= n)

    try:
        await poll(f"{n} processed events", done, within, every=0.25)
    except AssertionError:
        got = await pool.fetchval(COUNT_EVENTS, RT)
        raise AssertionError(f"only {got} of {n} accepted events were processed") from None


async def streams_drained(redis: Redis, settings: Settings, within: float = 15) -> None:
    """Every entry has left both streams and nothing is pending: effects are committed."""

    async def empty() -> bool:
        pipe = redis.pipeline(transaction=False)
        for p in range(settings.partitions):
            pipe.xlen(ks.ingest_stream(p))
            pipe.xlen(ks.changes_stream(p))
        return not any(await pipe.execute())

    await poll("both streams to be empty", empty, within, every=0.2)


async def check_exactly_once(pool: asyncpg.Pool, sent: Sent, ordered: bool = True) -> None:
    """Every accepted event took effect once: one receipt (applied), one history row, versions
    contiguous from 1 per resource and, when ``ordered``, in the order each series was sent."""
    events = await pool.fetch(
        "SELECT event_id, status, created, updated FROM ingest_events WHERE resource_type = $1",
        RT,
    )
    ids = [r["event_id"] for r in events]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(sent.accepted), (
        f"{len(set(sent.accepted) - set(ids))} accepted events missing, "
        f"{len(set(ids) - set(sent.accepted))} unexpected"
    )
    not_applied = [r for r in events if r["status"] != "applied"]
    assert not not_applied, not_applied[:5]
    assert all(r["created"] + r["updated"] == 1 for r in events)

    rows = await pool.fetch(
        "SELECT group_key, resource_id, version, op, event_id, (after->>'seq')::int AS seq"
        " FROM resource_changes WHERE resource_type = $1 ORDER BY group_key, resource_id,"
        " version",
        RT,
    )
    assert len(rows) == len(sent.accepted), (len(rows), len(sent.accepted))
    assert len({r["event_id"] for r in rows}) == len(rows), "an event has two history rows"
    history: dict[tuple[str, str], list[asyncpg.Record]] = defaultdict(list)
    for r in rows:
        history[(r["group_key"], r["resource_id"])].append(r)
    assert set(history) == set(sent.per_resource)
    for key, h in history.items():
        versions = [r["version"] for r in h]
        assert versions == list(range(1, len(h) + 1)), (key, versions)
        assert h[0]["op"] == "created" and all(r["op"] == "updated" for r in h[1:]), key
        for r in h:
            assert sent.accepted[r["event_id"]] == (key[0], key[1], r["seq"]), (key, r)
        if ordered:
            assert [r["seq"] for r in h] == sent.per_resource[key], key
    current = await pool.fetch(
        "SELECT group_key, resource_id, version, (data->>'seq')::int AS seq FROM resources"
        " WHERE resource_type = $1",
        RT,
    )
    assert len(current) == len(history)
    for r in current:
        h = history[(r["group_key"], r["resource_id"])]
        assert (r["version"], r["seq"]) == (h[-1]["version"], h[-1]["seq"])


def consumer_of(stage: Stage) -> str:
    """The stream consumer name a stage process uses (shared.redis.consumer.consumer_name)."""
    assert stage.proc is not None
    return f"{os.uname().nodename}-{stage.proc.pid}"


async def pending_by_consumer(redis: Redis, keys: list[str], group: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for k in keys:
        try:
            info = await redis.xpending(k, group)
        except Exception:  # stream or group not created yet
            continue
        for c in info.get("consumers") or []:
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            out[name] += int(c["pending"])
    return out


async def pending_entries(
    redis: Redis, keys: list[str], group: str, consumer: str
) -> dict[str, list[tuple[bytes, dict[bytes, bytes]]]]:
    """Per stream, the entries delivered to ``consumer`` and not acknowledged (its part of the
    group's PEL, XPENDING with a consumer), each with its fields (empty if deleted since)."""
    out: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = {}
    for k in keys:
        try:
            rows = await redis.xpending_range(k, group, "-", "+", 100_000, consumername=consumer)
        except Exception:  # stream or group not created yet
            continue
        entries = []
        for row in rows:
            sid = row["message_id"]
            found = await redis.xrange(k, sid, sid)
            entries.append((sid, found[0][1] if found else {}))
        if entries:
            out[k] = entries
    return out


def ingest_event_ids(fields: dict[bytes, bytes]) -> list[str]:
    """The event a raw-event entry (``ingest:{p}``) carries."""
    return [RawMeta.decode(fields[ks.F_META]).id] if fields else []


def change_event_ids(fields: dict[bytes, bytes]) -> list[str]:
    """The events a change entry (``changes:{p}``: one change per raw event) carries."""
    return [c.meta.id for c in Change.decode_many(fields[ks.F_CHANGE])] if fields else []


@dataclass
class Outstanding:
    """What a stage killed inside a batch left behind: entries delivered to it and never
    acknowledged, and the events they carry."""

    killed: Stage
    consumer: str
    entries: dict[str, list[tuple[bytes, dict[bytes, bytes]]]]
    event_ids: set[str]
    attempts: int

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.entries.values())


async def kill_mid_batch(
    redis: Redis,
    group: list[Stage],
    keys: list[str],
    consumer_group: str,
    events_of: Callable[[dict[bytes, bytes]], list[str]],
    within: float = 20,
) -> Outstanding:
    """SIGKILL a process of ``group`` (one stage's processes) inside a batch, and prove it.

    Wait until a live process holds delivered, unacknowledged entries of ``keys``
    (XPENDING per consumer) and kill it at once. Seeing them before the kill proves
    nothing (the batch may commit in between), so once the process is dead its own
    pending entries are read again: there must be some, or the kill fell between two
    batches; then the process is restarted (``group`` keeps its size) and another kill
    point is tried, until ``within`` seconds have passed, when the test fails. Returns
    the dead process's outstanding entries and events; the caller restarts it."""
    deadline = time.monotonic() + within
    attempts = 0
    while time.monotonic() < deadline:
        alive = {consumer_of(st): st for st in group if st.proc and st.proc.poll() is None}
        pending = await pending_by_consumer(redis, keys, consumer_group)
        victim = next((alive[n] for n, k in pending.items() if k and n in alive), None)
        if victim is None:
            await asyncio.sleep(0.002)
            continue
        victim.kill9()
        attempts += 1
        name = consumer_of(victim)
        left = await pending_entries(redis, keys, consumer_group, name)
        if left:
            ids = {eid for entries in left.values() for _, f in entries for eid in events_of(f)}
            return Outstanding(victim, name, left, ids, attempts)
        restart(victim, group)  # between batches: not the case under test; try again
    raise AssertionError(
        f"no SIGKILL landed inside a batch in {within}s ({attempts} kills between batches)"
    )


def restart(stage: Stage, group: list[Stage]) -> Stage:
    """Start a new process of the same stage with the same environment (stopped on exit)."""
    new = Stage(stage.name, stage.env, stage.log_path.parent).start()
    group.append(new)
    return new


def logs(stages: dict[str, list[Stage]]) -> str:
    out = []
    for group in stages.values():
        for s in group:
            tail = s.log()[-3000:]
            if tail.strip():
                out.append(f"--- {s.name} {s.log_path.name}\n{tail}")
    return "\n".join(out)
