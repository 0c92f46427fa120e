"""A producer that behaves like real ones: concurrent senders that retry until accepted.

Each sender owns a few resources (groupKey, id) and sends them one after the other,
each resource's events strictly in turn (the next only after the previous one got
its 202), with an increasing ``seq``: mostly upserts ``{"id", "seq"}``, every
``delete_every``-th a delete (at a different seq per resource). A 429, a 5xx, a
timeout or a connection error is retried with a small jittered backoff, the same
payload again, until it is accepted; every 202 is recorded with its event id and
when it arrived.

A request that timed out or lost its connection may still have been appended: such
an attempt can take effect without a 202 (an "extra"), always with a payload that
was attempted, and before the retry that got the 202 (one gateway appends in order).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.e2e.helpers import TABLE, connector

INGEST = "/integration/custom-data"
RETRIED_STATUS = {429, 500, 502, 503, 504}


def doc(rid: str, seq: int) -> dict[str, Any]:
    """The payload of upsert ``seq`` of resource ``rid`` (the check compares with it)."""
    return {"id": rid, "seq": seq}


@dataclass(frozen=True, slots=True)
class Accepted:
    eid: str
    group_key: str
    rid: str
    seq: int
    op: str  # "upsert" | "delete"
    mono: float  # time.monotonic() when the 202 arrived
    wall: float  # time.time() when the 202 arrived


@dataclass
class Producer:
    base_url: str
    key: str
    scopes: list[str]
    ids_per_scope: int = 2
    senders: int = 16
    pause: float = 0.05  # between two events of one sender
    delete_every: int = 10
    timeout: float = 5.0
    give_up_after: float = 120.0  # per event: then the sender stops (and the test fails)

    accepted: dict[str, Accepted] = field(default_factory=dict)
    order: list[Accepted] = field(default_factory=list)  # in order of arrival
    attempted: set[tuple[str, str, int]] = field(default_factory=set)
    last: dict[tuple[str, str], Accepted] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    gave_up: list[str] = field(default_factory=list)
    last_refusal: dict[str, str] = field(default_factory=dict)  # kind -> last text

    def __post_init__(self) -> None:
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.resources = [(g, f"r{j}") for g in self.scopes for j in range(self.ids_per_scope)]

    # ---- running ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="producer")

    def stop(self) -> None:
        self._stop.set()

    async def finish(self, within: float) -> None:
        """Stop and wait for every sender to get its last event accepted (or give up)."""
        self.stop()
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), within)
        except TimeoutError:
            self._task.cancel()
            raise AssertionError(
                f"producers still retrying {within}s after being told to stop "
                f"(counts: {dict(self.counts)}, last refusals: {self.last_refusal})"
            ) from None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        conn = connector(self.senders * 2)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(self.base_url, connector=conn, timeout=timeout) as c:
            mine: list[list[tuple[str, str]]] = [[] for _ in range(self.senders)]
            for i, r in enumerate(self.resources):
                mine[i % self.senders].append(r)
            await asyncio.gather(*(self._sender(c, m) for m in mine if m))

    async def _sender(self, c: aiohttp.ClientSession, mine: list[tuple[str, str]]) -> None:
        seqs = dict.fromkeys(mine, 0)
        # deletes at a different seq per resource, so runs end with a mix of live and
        # deleted resources; jittered pauses keep the senders out of lock-step
        offset = {r: self.resources.index(r) for r in mine}
        await asyncio.sleep(random.uniform(0, self.pause))
        while not self._stop.is_set():
            for g, rid in mine:
                seqs[(g, rid)] += 1
                seq = seqs[(g, rid)]
                due = (seq + offset[(g, rid)]) % self.delete_every == 0
                op = "delete" if due and seq > 1 else "upsert"
                if not await self._deliver(c, g, rid, seq, op):
                    return
                if self._stop.is_set():
                    return
                await asyncio.sleep(self.pause * random.uniform(0.5, 1.5))

    async def _deliver(self, c: aiohttp.ClientSession, g: str, rid: str, seq: int, op: str) -> bool:
        """Send until accepted; False when it gave up."""
        deadline = time.monotonic() + self.give_up_after
        attempt = 0
        self.attempted.add((g, rid, seq))
        while True:
            eid = await self._attempt(c, g, rid, seq, op)
            if eid is not None:
                a = Accepted(eid, g, rid, seq, op, time.monotonic(), time.time())
                self.accepted[eid] = a
                self.order.append(a)
                self.last[(g, rid)] = a
                return True
            if time.monotonic() > deadline:
                self.gave_up.append(f"{g}/{rid} seq {seq}")
                return False
            attempt += 1
            await asyncio.sleep(min(0.05 * 2**attempt, 0.5) * random.uniform(0.5, 1.0))

    async def _attempt(
        self, c: aiohttp.ClientSession, g: str, rid: str, seq: int, op: str
    ) -> str | None:
        key = {"X-Ingest-Key": self.key}
        try:
            if op == "upsert":
                resp = c.post(
                    f"{INGEST}/event/{TABLE}",
                    params={"groupKey": g},
                    json=doc(rid, seq),
                    headers=key,
                )
            else:
                resp = c.delete(
                    f"{INGEST}/{TABLE}", params={"groupKey": g, "resourceIds": rid}, headers=key
                )
            async with resp as r:
                text = await r.text()
                if r.status == 202:
                    self.counts["202"] += 1
                    return str((await r.json())["eventId"])
                kind = str(r.status) if r.status in (429, 503) else "other"
                self.counts[kind] += 1
                self.last_refusal[kind] = f"{r.status} {text[:200]}"
                if r.status not in RETRIED_STATUS:
                    raise AssertionError(f"the gateway refused {op} {g}/{rid}: {r.status} {text}")
                return None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self.counts["error"] += 1
            self.last_refusal["error"] = repr(e)[:200]
            return None

    # ---- reading the record -------------------------------------------------------------

    def accepted_after(self, mono: float) -> int:
        n = 0
        for a in reversed(self.order):  # in order of arrival
            if a.mono <= mono:
                break
            n += 1
        return n

    def first_after(self, mono: float) -> Accepted | None:
        return next((a for a in self.order if a.mono > mono), None)
