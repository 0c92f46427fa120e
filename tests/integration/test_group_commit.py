"""The projector's group commit against real PostgreSQL: the batches of several
partitions ready together share ONE transaction, each partition's position is its own,
and a part that fails never takes another partition's batch down with it."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.projector.group import GroupCommit
from shared.pg.resources import ResourceStore
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
