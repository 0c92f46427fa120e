"""Group commit of the partitions' batches: one PostgreSQL transaction for all ready.

Each partition's task reads its own stream under its own lease and hands its batch to
the process's :class:`GroupCommit`. One task applies what is queued as ONE transaction
(:func:`services.projector.apply.apply_group`); batches that arrive while it runs wait
for the next one. Under live traffic that turns sixteen small transactions (each with
its round trips, locks and commit) into one; with a single batch waiting it is applied
at once (no timer, no added latency).

While a transaction runs, a second one may start beside it (never more: ``inflight``),
over other partitions only, once the parts waiting for it weigh at least
``overlap_bytes``: a backlog then keeps the projector's own work (decoding, rows, COPY
encoding) on one core while PostgreSQL writes the previous group on the other, where
one transaction at a time left each idle half the time (the projector + PostgreSQL
chain capped a batch-event drain at ~21,500 items/s with 1.3 of 2 cores busy). Live
traffic queues far less than that between two commits, so it keeps one transaction at
a time and its groups stay as large (figure 16). A partition is never in two
transactions at once, so its batches still commit in stream order.

A group of several partitions that fails in any way is applied again part by part
(:func:`services.projector.apply.apply_batch`, with its own fence against data
PostgreSQL refuses), so each partition gets its own outcome: one partition's input or
defect never holds up another's. A transaction holds at most ~``max_bytes`` of change
entries (at least one part).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from services.projector.apply import Part, apply_batch, apply_group
from shared import tasks
from shared.gcpause import gc_paused
from shared.pg.resources import ResourceStore

log = logging.getLogger("ingestd.projector")


@dataclass
class _Waiting:
    part: Part
    size: int
    settled: list[str] | None
    done: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


#: the weight of waiting parts that starts a second transaction beside a running one
OVERLAP_BYTES = 256 << 10


class GroupCommit:
    def __init__(
        self,
        store: ResourceStore,
        max_bytes: int,
        overlap_bytes: int = OVERLAP_BYTES,
        inflight: int = 2,
    ) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.overlap_bytes = overlap_bytes
        self.inflight = inflight
        self._queue: list[_Waiting] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._busy: set[int] = set()  # partitions in a running transaction
        self.transactions = 0  # groups applied (for tests and figures)
        self.overlapped = 0  # transactions started while another ran (for tests, figures)

    async def apply(
        self, p: int, entries: list[tuple[bytes, bytes]], settled: list[str] | None = None
    ) -> int:
        """Apply partition ``p``'s entries in the next transaction; how many were applied
        (those past its recorded position). ``settled``: gets the Redis keys their commit made
        obsolete (:func:`services.projector.apply.settled_keys`)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="group-commit")
        w = _Waiting((p, entries), sum(len(raw) for _, raw in entries), settled)
        self._queue.append(w)
        self._wake.set()
        return await w.done

    async def stop(self) -> None:
        if self._task is not None:
            await tasks.stop(self._task, log)
            self._task = None
        for t in list(self._running):
            await tasks.stop(t, log)

    def _take(self) -> list[_Waiting]:
        """The next group: queued parts in arrival order up to ``max_bytes`` (at least one),
        one per partition (a later batch of the same partition waits its turn)."""
        group: list[_Waiting] = []
        rest: list[_Waiting] = []
        size = 0
        seen: set[int] = set(self._busy)
        for w in self._queue:
            p = w.part[0]
            fits = not group or size + w.size <= self.max_bytes
            if p in seen or not fits or w.done.done():
                if not w.done.done():
                    rest.append(w)
                continue
            group.append(w)
            seen.add(p)
            size += w.size
        self._queue = rest
        return group

    def _waiting_bytes(self) -> int:
        """What the parts a new transaction could take weigh (partitions not busy)."""
        return sum(w.size for w in self._queue if w.part[0] not in self._busy)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and len(self._running) < self.inflight:
                if self._running and self._waiting_bytes() < self.overlap_bytes:
                    break
                group = self._take()
                if not group:
                    break
                if self._running:
                    self.overlapped += 1
                self._start(group)

    def _start(self, group: list[_Waiting]) -> None:
        ps = {w.part[0] for w in group}
        self._busy |= ps
        task = asyncio.create_task(self._apply(group), name="group-transaction")
        self._running.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._running.discard(t)
            self._busy -= ps
            self._wake.set()  # parts of these partitions, or the next group, may go now

        task.add_done_callback(done)

    async def _apply(self, group: list[_Waiting]) -> None:
        try:
            outs: list[list[str]] = [[] for _ in group]
            with gc_paused():  # decoded entries and rows: no cycles (see shared.gcpause)
                counts = await apply_group(self.store, [w.part for w in group], outs)
        except Exception as e:
            tasks.reraise_if_cancelled()
            if len(group) == 1:
                _settle(group[0], exc=e)
                return
            log.debug("a group of %s partitions failed (%s); applying each alone", len(group), e)
            for w in group:
                try:
                    _settle(w, await apply_batch(self.store, *w.part, w.settled))
                except Exception as alone:
                    tasks.reraise_if_cancelled()
                    _settle(w, exc=alone)
            self.transactions += len(group)
            return
        except BaseException:  # cancelled mid-transaction: its outcome is unknown
            for w in group:
                if not w.done.done():
                    w.done.cancel()
            raise
        self.transactions += 1
        for w, n, ids in zip(group, counts, outs, strict=True):
            if w.settled is not None:
                w.settled.extend(ids)
            _settle(w, n)


def _settle(w: _Waiting, n: int = 0, exc: BaseException | None = None) -> None:
    if w.done.done():  # the partition's task was cancelled while it waited
        return
    if exc is not None:
        w.done.set_exception(exc)
    else:
        w.done.set_result(n)
