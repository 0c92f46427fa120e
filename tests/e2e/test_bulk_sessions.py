"""Bulk sessions across real processes: parts go to two gateways, a worker and a projector
apply the snapshot once; a session without its final part changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.config import Settings
from tests.conftest import ADMIN, seed_directory
from tests.e2e.helpers import gateway_client
from tests.e2e.procs import stages
from tests.helpers import barrier, post_bulk, receipt, wait_key_known, wait_receipt

pytestmark = pytest.mark.slow  # stages as processes, seconds each


@asynccontextmanager
async def two_gateways(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[aiohttp.ClientSession, aiohttp.ClientSession, str]]:
    """Two gateways, a worker and a projector; a client for each gateway and an ingest key
    for ``_directory_employee`` that both gateways know."""
    with stages(settings, tmp_path, "gateway", "gateway", "worker", "projector") as s:
        g1, g2 = s["gateway"]
        async with gateway_client(g1) as c1, gateway_client(g2) as c2:
            key = (await seed_directory(c1)).key
            await wait_key_known(c1, key)
            await wait_key_known(c2, key)
            yield c1, c2, key


async def listing(c: aiohttp.ClientSession, group_key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cursor = ""
    while True:
        r = await c.get(f"/api/v1/resources/_directory_employee?groupKey={group_key}&limit=1000"
                        + (f"&cursor={cursor}" if cursor else ""), headers=ADMIN)  # fmt: skip
        body = await r.json()
        out.update({i["id"]: i for i in body["items"]})
        if not body["next"]:
            return out
        cursor = body["next"]


def emp(i: int, rev: int = 0) -> dict[str, Any]:
    return {"employeeId": f"e{i:06d}", "employee": {"age": 20 + i % 40, "email": f"{i}.{rev}@x"}}


async def test_session_parts_on_two_gateways_apply_once(settings: Settings, tmp_path: Path) -> None:
    async with two_gateways(settings, tmp_path) as (c1, c2, key):
        # the scope before: 0..2999, then a session of 3 parts that keeps 1000..3999
        before = [emp(i) for i in range(3000)]
        first = await post_bulk(c1, key, before, "groupKey=hr")
        await wait_receipt(c2, key, first["eventId"], 30)

        snapshot = [emp(i, rev=1 if i < 1500 else 0) for i in range(1000, 4000)]
        parts = [snapshot[:1000], snapshot[1000:2000], snapshot[2000:]]
        q = "groupKey=hr&session=nightly-1&event=nightly&actor=%22cron%22"
        r3 = await post_bulk(c2, key, parts[2], f"{q}&part=3&final=true")
        r1 = await post_bulk(c1, key, parts[0], f"{q}&part=1")
        dup = await post_bulk(c2, key, parts[0], f"{q}&part=1")  # the same part, other gateway
        assert dup["duplicate"] is True and dup["partsReceived"] == 2
        assert r1["eventId"] == r3["eventId"] == dup["eventId"]
        # incomplete: nothing is enqueued. An event sent after it to the same scope (one
        # partition, processed in order; an unchanged copy of e000000) is applied, so a
        # snapshot enqueued by mistake would have been applied before it
        assert (await barrier(c2, key, emp(0), "hr"))["unchanged"] == 1
        assert sorted(await listing(c1, "hr")) == [f"e{i:06d}" for i in range(3000)]
        assert (await receipt(c1, key, r3["eventId"]))["status"] == "pending"
        r2 = await post_bulk(c1, key, parts[1], f"{q}&part=2")
        assert r2["complete"] is True
        done = await wait_receipt(c1, key, r3["eventId"], 30)
        assert done["status"] == "applied", done
        counts = (done["created"], done["updated"], done["deleted"], done["unchanged"])
        assert counts == (1000, 500, 1000, 1500)
        state = await listing(c2, "hr")
        assert sorted(state) == [f"e{i:06d}" for i in range(1000, 4000)]
        assert state["e001000"]["_meta"]["version"] == 2
        assert state["e001500"]["_meta"]["version"] == 1
        # a retry after the commit is recognised, on either gateway
        again = await post_bulk(c2, key, parts[1], f"{q}&part=2")
        assert again["duplicate"] is True and again["eventId"] == r3["eventId"]


async def test_session_without_final_part_changes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    async with two_gateways(settings, tmp_path) as (c1, c2, key):
        first = await post_bulk(c1, key, [emp(1), emp(2)], "groupKey=k")
        await wait_receipt(c1, key, first["eventId"], 30)
        q = "groupKey=k&session=abandoned"
        r = await post_bulk(c1, key, [emp(3)], f"{q}&part=1")
        await post_bulk(c2, key, [emp(4)], f"{q}&part=2")
        # after the parts, an unchanged copy of e000001 to the same scope (one partition,
        # in order) is applied: whatever the parts would have done is done by then
        assert (await barrier(c1, key, emp(1), "k"))["unchanged"] == 1
        assert sorted(await listing(c2, "k")) == ["e000001", "e000002"]
        rc = await receipt(c2, key, r["eventId"])
        assert rc["status"] == "pending" and rc["session"]["partsReceived"] == 2
        # a newer snapshot applies; the abandoned session can no longer complete
        newer = await post_bulk(c2, key, [emp(5)], "groupKey=k")
        await wait_receipt(c1, key, newer["eventId"], 30)
        late = await post_bulk(c1, key, [emp(6)], f"{q}&part=3&final=true", status=409)
        assert late["code"] == "session_superseded"
        assert sorted(await listing(c1, "k")) == ["e000005"]
