"""Bulk sessions across real processes: parts go to two gateways, a worker and a projector
apply the snapshot once; a session without its final part changes nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from shared.config import Settings
from tests.conftest import ADMIN, EMPLOYEE_SCHEMA
from tests.e2e.procs import port, stages

pytestmark = pytest.mark.slow  # stages as processes, seconds each

BULK = "/integration/custom-data/bulk-event/employee"


async def until(what: str, check: Callable[[], Awaitable[Any]], within: float = 30) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


async def setup_table(c: aiohttp.ClientSession) -> str:
    r = await c.post("/admin/v1/schema-groups", json={"name": "d", "prefix": "_directory"},
                     headers=ADMIN)  # fmt: skip
    gid = (await r.json())["id"]
    body = {"table": "employee", "schema": EMPLOYEE_SCHEMA}
    r = await c.post(f"/admin/v1/schema-groups/{gid}/schemas", json=body, headers=ADMIN)
    assert r.status == 201, await r.text()
    r = await c.post("/admin/v1/integrations", json={"name": "hr", "schemaGroup": gid},
                     headers=ADMIN)  # fmt: skip
    return str((await r.json())["ingestKey"])


async def key_known(c: aiohttp.ClientSession, key: str) -> None:
    async def known() -> bool:
        r = await c.get("/integration/custom-data/events/ev_probe", headers={"X-Ingest-Key": key})
        return r.status == 404

    await until("the gateway to know the key", known)


async def part(
    c: aiohttp.ClientSession, key: str, items: list[Any], query: str, status: int = 202
) -> dict[str, Any]:
    r = await c.post(f"{BULK}?{query}", data=orjson.dumps(items),
                     headers={"Authorization": f"Bearer {key}",
                              "Content-Type": "application/json"})  # fmt: skip
    body = await r.json()
    assert r.status == status, body
    return dict(body)


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


async def applied(c: aiohttp.ClientSession, key: str, eid: str) -> dict[str, Any] | None:
    r = await c.get(f"/integration/custom-data/events/{eid}", headers={"X-Ingest-Key": key})
    body = await r.json()
    return dict(body) if body["status"] != "pending" else None


def emp(i: int, rev: int = 0) -> dict[str, Any]:
    return {"employeeId": f"e{i:06d}", "employee": {"age": 20 + i % 40, "email": f"{i}.{rev}@x"}}


async def test_session_parts_on_two_gateways_apply_once(settings: Settings, tmp_path: Path) -> None:
    with stages(settings, tmp_path, "gateway", "gateway", "worker", "projector") as s:
        g1, g2 = (f"http://127.0.0.1:{port(g)}" for g in s["gateway"])
        async with aiohttp.ClientSession(g1) as c1, aiohttp.ClientSession(g2) as c2:
            key = await setup_table(c1)
            await key_known(c1, key)
            await key_known(c2, key)
            # the scope before: 0..2999, then a session of 3 parts that keeps 1000..3999
            before = [emp(i) for i in range(3000)]
            first = await part(c1, key, before, "groupKey=hr")
            await until("the first snapshot", lambda: applied(c2, key, first["eventId"]))

            snapshot = [emp(i, rev=1 if i < 1500 else 0) for i in range(1000, 4000)]
            parts = [snapshot[:1000], snapshot[1000:2000], snapshot[2000:]]
            q = "groupKey=hr&session=nightly-1&event=nightly&actor=%22cron%22"
            r3 = await part(c2, key, parts[2], f"{q}&part=3&final=true")
            r1 = await part(c1, key, parts[0], f"{q}&part=1")
            dup = await part(c2, key, parts[0], f"{q}&part=1")  # the same part, other gateway
            assert dup["duplicate"] is True and dup["partsReceived"] == 2
            assert r1["eventId"] == r3["eventId"] == dup["eventId"]
            await asyncio.sleep(1.0)  # incomplete: the worker has nothing to do
            assert len(await listing(c1, "hr")) == 3000
            r2 = await part(c1, key, parts[1], f"{q}&part=2")
            assert r2["complete"] is True
            done = await until("the session's receipt", lambda: applied(c1, key, r3["eventId"]))
            assert done["status"] == "applied", done
            counts = (done["created"], done["updated"], done["deleted"], done["unchanged"])
            assert counts == (1000, 500, 1000, 1500)
            state = await listing(c2, "hr")
            assert sorted(state) == [f"e{i:06d}" for i in range(1000, 4000)]
            assert state["e001000"]["_meta"]["version"] == 2
            assert state["e001500"]["_meta"]["version"] == 1
            # a retry after the commit is recognised, on either gateway
            again = await part(c2, key, parts[1], f"{q}&part=2")
            assert again["duplicate"] is True and again["eventId"] == r3["eventId"]


async def test_session_without_final_part_changes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    with stages(settings, tmp_path, "gateway", "gateway", "worker", "projector") as s:
        g1, g2 = (f"http://127.0.0.1:{port(g)}" for g in s["gateway"])
        async with aiohttp.ClientSession(g1) as c1, aiohttp.ClientSession(g2) as c2:
            key = await setup_table(c1)
            await key_known(c1, key)
            await key_known(c2, key)
            first = await part(c1, key, [emp(1), emp(2)], "groupKey=k")
            await until("the first snapshot", lambda: applied(c1, key, first["eventId"]))
            q = "groupKey=k&session=abandoned"
            r = await part(c1, key, [emp(3)], f"{q}&part=1")
            await part(c2, key, [emp(4)], f"{q}&part=2")
            await asyncio.sleep(1.5)
            assert sorted(await listing(c2, "k")) == ["e000001", "e000002"]
            rc = await (await c2.get(f"/integration/custom-data/events/{r['eventId']}",
                                     headers={"X-Ingest-Key": key})).json()  # fmt: skip
            assert rc["status"] == "pending" and rc["session"]["partsReceived"] == 2
            # a newer snapshot applies; the abandoned session can no longer complete
            newer = await part(c2, key, [emp(5)], "groupKey=k")
            await until("the newer snapshot", lambda: applied(c1, key, newer["eventId"]))
            late = await part(c1, key, [emp(6)], f"{q}&part=3&final=true", status=409)
            assert late["code"] == "session_superseded"
            assert sorted(await listing(c1, "k")) == ["e000005"]
