"""The projector's group commit against real PostgreSQL: the batches of several
partitions ready together share ONE transaction, each partition's position is its own,
and a part that fails never takes another partition's batch down with it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from services.projector.group import GroupCommit
from shared.pg.projection import PARTITION_LOCK_CLASS
from shared.pg.resources import ResourceStore
from tests.helpers import poll
from tests.integration.test_pg_stores import RT, change


async def txids(pool: asyncpg.Pool, group_key: str) -> set[int]:
    rows = await pool.fetch(
        "SELECT txid::text::bigint AS t FROM resource_changes WHERE resource_type = $1"
        " AND group_key = $2",
        RT,
        group_key,
    )
    return {r["t"] for r in rows}


async def test_ready_partitions_share_one_transaction(
    resource_store: ResourceStore, pool: asyncpg.Pool
) -> None:
    group = GroupCommit(resource_store, 2 << 20)
    a = change([("created", "a1", 1), ("created", "a2", 1)], group_key="ga")
    b = change([("created", "b1", 1)], group_key="gb")
    try:
        # both queued before the group's task first runs: they go in one transaction
        got = await asyncio.gather(
            group.apply(3, [(b"10-0", a.encode())]), group.apply(5, [(b"20-0", b.encode())])
        )
        assert got == [1, 1]
        assert group.transactions == 1
        (ta,) = await txids(pool, "ga")
        assert await txids(pool, "gb") == {ta}
        assert await resource_store.position(3) == (10, 0)
        assert await resource_store.position(5) == (20, 0)
        # the same entries again: each part is past its own position, nothing is written
        again = await asyncio.gather(
            group.apply(3, [(b"10-0", a.encode())]), group.apply(5, [(b"20-0", b.encode())])
        )
        assert again == [0, 0]
        assert len(await resource_store.history(RT, "ga", "a1")) == 1
    finally:
        await group.stop()


async def test_a_failing_part_fails_alone(resource_store: ResourceStore) -> None:
    group = GroupCommit(resource_store, 2 << 20)
    good = change([("created", "ok", 1)], group_key="gg")
    try:
        results = await asyncio.gather(
            group.apply(7, [(b"30-0", good.encode())]),
            group.apply(8, [(b"31-0", b"not a change entry")]),
            return_exceptions=True,
        )
        assert results[0] == 1
        assert isinstance(results[1], Exception)
        assert (await resource_store.get_resource(RT, "gg", "ok")) is not None
        assert await resource_store.position(7) == (30, 0)
        assert await resource_store.position(8) in (None, (0, 0))  # nothing recorded
        # the group task survived: the next batch is applied
        later = change([("created", "ok2", 1)], group_key="gg")
        assert await group.apply(7, [(b"32-0", later.encode())]) == 1
    finally:
        await group.stop()


async def test_one_partition_waits_for_its_own_turn(resource_store: ResourceStore) -> None:
    """Two batches of one partition never share a transaction: the later one waits."""
    group = GroupCommit(resource_store, 2 << 20)
    first = change([("created", "x", 1)], group_key="gx")
    second = change([("updated", "x", 2)], group_key="gx")
    try:
        got = await asyncio.gather(
            group.apply(9, [(b"40-0", first.encode())]),
            group.apply(9, [(b"41-0", second.encode())]),
        )
        assert got == [1, 1]
        assert group.transactions == 2
        h = await resource_store.history(RT, "gx", "x")
        assert [e.version for e in h] == [1, 2]
    finally:
        await group.stop()


@pytest.mark.parametrize("size", [1, 3])
async def test_the_group_respects_its_byte_bound(resource_store: ResourceStore, size: int) -> None:
    group = GroupCommit(resource_store, max_bytes=size)  # every part is bigger: one each
    cs = [change([("created", f"s{i}", 1)], group_key=f"gs{size}") for i in range(3)]
    try:
        got = await asyncio.gather(
            *(group.apply(10 + i, [(f"{50 + i}-0".encode(), c.encode())]) for i, c in enumerate(cs))
        )
        assert got == [1, 1, 1]
        assert group.transactions == 3
    finally:
        await group.stop()


def _queued(group: GroupCommit, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(group._queue) >= n

    return check


async def _blocked_then_other(
    resource_store: ResourceStore, pool: asyncpg.Pool, group: GroupCommit, tag: str
) -> list[str]:
    """Partition 11's transaction waits on its advisory lock (held here) while partitions
    12 and 13 queue a batch each; the lock is released once 12 and 13 are done or, when
    they wait for 11, once they are queued. The order the three finished in."""
    order: list[str] = []
    parts = {p: change([("created", f"{tag}{p}", 1)], group_key=f"g{tag}{p}") for p in (11, 12, 13)}

    async def one(p: int) -> None:
        await group.apply(p, [(f"{60 + p}-0".encode(), parts[p].encode())])
        order.append(str(p))

    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1, 11)", PARTITION_LOCK_CLASS)
        first = asyncio.create_task(one(11))
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        # the barrier: 11's transaction is waiting on the lock
        await poll("11 waiting on its lock", lambda: holder.fetchval(waiting), 10, 0.01)
        others = asyncio.gather(one(12), one(13))
        if group.overlap_bytes <= 1:
            await asyncio.wait_for(others, 10)  # done beside the blocked transaction
        else:
            await poll("12 and 13 queued", _queued(group, 2), 10, 0.01)  # behind it
        await holder.execute("SELECT pg_advisory_unlock($1, 11)", PARTITION_LOCK_CLASS)
        await asyncio.wait_for(asyncio.gather(first, others), 10)
    return order


async def test_a_second_transaction_overlaps_a_running_one_for_other_partitions(
    resource_store: ResourceStore, pool: asyncpg.Pool
) -> None:
    """Waiting parts that weigh enough start a transaction beside the running one (over
    other partitions): they commit while the first still waits."""
    group = GroupCommit(resource_store, 2 << 20, overlap_bytes=1)
    try:
        order = await _blocked_then_other(resource_store, pool, group, "ov")
    finally:
        await group.stop()
    assert order[-1] == "11" and sorted(order[:2]) == ["12", "13"]
    assert group.overlapped == 1 and group.transactions == 2  # 12 and 13 shared one
    for p in (11, 12, 13):
        assert await resource_store.position(p) == (60 + p, 0)


async def test_light_waiting_parts_wait_for_the_running_transaction(
    resource_store: ResourceStore, pool: asyncpg.Pool
) -> None:
    """Below ``overlap_bytes`` (live traffic) one transaction at a time: the parts that
    queued meanwhile go together once it is done."""
    group = GroupCommit(resource_store, 2 << 20)
    try:
        order = await _blocked_then_other(resource_store, pool, group, "lt")
    finally:
        await group.stop()
    assert order[0] == "11" and sorted(order[1:]) == ["12", "13"]
    assert group.overlapped == 0 and group.transactions == 2


async def test_overlap_never_puts_one_partition_in_two_transactions(
    resource_store: ResourceStore,
) -> None:
    group = GroupCommit(resource_store, 2 << 20, overlap_bytes=1)
    cs = [change([("created" if v == 1 else "updated", "y", v)], group_key="gy") for v in (1, 2, 3)]
    try:
        got = await asyncio.gather(
            *(group.apply(14, [(f"{70 + i}-0".encode(), c.encode())]) for i, c in enumerate(cs))
        )
        assert got == [1, 1, 1]
        assert group.overlapped == 0 and group.transactions == 3
        h = await resource_store.history(RT, "gy", "y")
        assert [e.version for e in h] == [1, 2, 3]
    finally:
        await group.stop()
