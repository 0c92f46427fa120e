"""One endpoint's delivery window: the changes read after its stored cursor, in feed
order, and which of them may be sent now. Bookkeeping only (no I/O).

- At most ``inflight`` changes are in flight: from their first attempt until their 2xx is
  RECORDED in PostgreSQL (a change waiting for its retry keeps its slot).
- Per resource, one change at a time, in feed order: a change is startable only when
  every earlier change of its resource in the window is recorded (so after a crash the
  receiver never gets an older version again after a newer one: a redelivery repeats only
  what was in flight).
- The cursor: :meth:`Window.done_position` is past the longest prefix of changes that are
  done (acknowledged, skipped by the filters, or the feed's settled head). A failing change
  holds it there (later changes of other resources go on, up to ``size`` changes past the
  stored cursor), so a notifier killed resumes at or before every unacknowledged change.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from shared.feed import Position
from shared.pg.feed import FeedChange
from shared.pg.webhooks import Attempt

Key = tuple[str, str]  # (resource type, resource id)


class State(Enum):
    WAITING = "waiting"  # to be sent
    SENDING = "sending"  # in flight (being attempted, or waiting for its retry)
    ACKED = "acked"  # answered 2xx, not recorded yet (still holds its slot)
    DONE = "done"  # recorded, skipped by the filters, or a marker of the settled head


@dataclass(eq=False, slots=True)
class Entry:
    position: Position
    change: FeedChange | None = None  # None: no delivery (a marker of the settled head)
    msg_id: str = ""
    state: State = State.DONE
    attempts: int = 0
    next_at: datetime | None = None
    first_failed: datetime | None = None  # this change's first failed attempt
    result: Attempt | None = None  # the 2xx attempt

    @property
    def key(self) -> Key:
        assert self.change is not None
        return (self.change.resource_type, self.change.resource_id)


@dataclass(slots=True)
class Window:
    stored: Position  # the cursor as PostgreSQL has it
    inflight: int
    size: int  # changes kept past the stored cursor at most
    entries: deque[Entry] = field(default_factory=deque)
    items: int = 0  # entries that are changes (not markers)
    in_flight: set[Entry] = field(default_factory=set)
    acked: list[Entry] = field(default_factory=list)
    _queues: dict[Key, deque[Entry]] = field(default_factory=dict)
    _ready: list[tuple[Position, int, Entry]] = field(default_factory=list)
    _seq: int = 0

    def room(self) -> int:
        return self.size - self.items

    def add(self, e: Entry) -> None:
        """The next change in feed order: DONE (skipped, already delivered) or WAITING."""
        self.entries.append(e)
        self.items += e.change is not None
        if e.state is State.WAITING:
            q = self._queues.setdefault(e.key, deque())
            q.append(e)
            if len(q) == 1:
                self._push(e)

    def settled(self, pos: Position) -> None:
        """The feed read on to ``pos`` with no more change before it."""
        last = self.entries[-1].position if self.entries else self.stored
        if pos > last:
            self.entries.append(Entry(pos))

    def _push(self, e: Entry) -> None:
        self._seq += 1
        heapq.heappush(self._ready, (e.position, self._seq, e))

    def startable(self) -> list[Entry]:
        """Changes to send now (each goes SENDING), earliest first."""
        out = []
        while self._ready and len(self.in_flight) < self.inflight:
            _, _, e = heapq.heappop(self._ready)
            e.state = State.SENDING
            self.in_flight.add(e)
            out.append(e)
        return out

    def acknowledged(self, e: Entry, a: Attempt) -> None:
        e.state, e.result = State.ACKED, a
        self.acked.append(e)

    def done_position(self) -> Position:
        pos = self.stored
        for e in self.entries:
            if e.state not in (State.ACKED, State.DONE):
                break
            pos = e.position
        return pos

    def take(self) -> tuple[list[Entry], Position]:
        """What to record next: the acknowledged changes, and the cursor to store."""
        batch, self.acked = self.acked, []
        return batch, self.done_position()

    def recorded(self, batch: list[Entry], pos: Position) -> None:
        """``batch`` is recorded and the stored cursor is ``pos``: free their slots and
        resources, forget the entries at or before ``pos``."""
        for e in batch:
            e.state = State.DONE
            self.in_flight.discard(e)
            q = self._queues[e.key]
            head = q.popleft()
            assert head is e, "a resource's changes are recorded in feed order"
            if q:
                self._push(q[0])
            else:
                del self._queues[e.key]
        while self.entries and self.entries[0].position <= pos:
            e = self.entries.popleft()
            assert e.state is State.DONE
            self.items -= e.change is not None
        self.stored = max(self.stored, pos)

    def failing_since(self) -> datetime | None:
        """The earliest first failed attempt of a change still being retried."""
        times = [
            e.first_failed
            for e in self.in_flight
            if e.first_failed is not None and e.state is State.SENDING
        ]
        return min(times, default=None)
