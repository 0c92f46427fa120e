"""The notifier's delivery window: in-flight bound, one change per resource at a time in
feed order, the cursor held by the first change not done, room counted from the stored
cursor."""

from __future__ import annotations

from datetime import UTC, datetime

from services.notifier.window import Entry, State, Window
from shared import feed
from shared.pg.feed import FeedChange
from shared.pg.webhooks import Attempt

OK = Attempt(1, 204, None, 1)


def change(n: int, rid: str) -> Entry:
    pos = (10, n)
    c = FeedChange(
        feed.encode(pos), pos, "t", "", rid, n, "updated", None, None, [], {}, f"ev{n}",
        datetime.now(UTC),
    )  # fmt: skip
    return Entry(pos, c, f"m{n}", State.WAITING)


def test_one_change_per_resource_in_order_and_the_inflight_bound() -> None:
    w = Window((0, 0), inflight=2, size=10)
    a1, b1, a2, c1 = change(1, "a"), change(2, "b"), change(3, "a"), change(4, "c")
    for e in (a1, b1, a2, c1):
        w.add(e)
    assert w.startable() == [a1, b1]  # two in flight; a2 waits for a1 anyway
    w.acknowledged(b1, OK)
    assert w.startable() == []  # b1 holds its slot until recorded
    batch, pos = w.take()
    assert batch == [b1] and pos == (0, 0)  # a1 holds the cursor
    w.recorded(batch, pos)
    assert w.startable() == [c1]  # not a2: a1 is not recorded yet
    w.acknowledged(a1, OK)
    batch, pos = w.take()
    assert batch == [a1] and pos == b1.position  # past a1 and b1, not the sending c1
    w.recorded(batch, pos)
    assert w.startable() == [a2] and w.stored == b1.position and w.items == 2


def test_room_counts_from_the_stored_cursor_and_markers_move_it() -> None:
    w = Window((0, 0), inflight=4, size=3)
    stuck, later = change(1, "a"), change(2, "b")
    w.add(stuck)
    w.add(later)
    w.add(Entry((10, 3), change(3, "c").change))  # skipped by the filters: done
    assert w.room() == 0
    w.startable()
    w.acknowledged(later, OK)
    stuck.first_failed = datetime.now(UTC)
    assert w.failing_since() == stuck.first_failed
    batch, pos = w.take()
    w.recorded(batch, pos)
    assert pos == (0, 0) and w.room() == 0  # the stuck change holds the cursor and room
    w.acknowledged(stuck, OK)
    w.settled((11, feed.LAST_ID))
    batch, pos = w.take()
    w.recorded(batch, pos)
    assert pos == (11, feed.LAST_ID) and w.room() == 3 and not w.entries
    assert w.failing_since() is None
