"""Helpers shared by the integration tests and the process-level (e2e) tests.

``c`` is either an in-process gateway's ``TestClient`` or an ``aiohttp.ClientSession``
with a gateway process's base URL: both answer ``get`` / ``post`` / ``delete`` alike.
``who`` is whose ingest key to use: a :class:`~tests.conftest.Seeded` or the key itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from tests.conftest import EMPLOYEE_SCHEMA, InlinePipeline, Seeded

INGEST = "/integration/custom-data"
OPS = ("created", "updated", "deleted", "unchanged", "rejected")


async def poll(
    what: str, check: Callable[[], Awaitable[Any]], within: float, every: float = 0.1
) -> Any:
    """Call ``check`` until it returns something truthy and return that; fail with ``what``
    at the deadline."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")


def key_headers(who: Seeded | str) -> dict[str, str]:
    key = who.key if isinstance(who, Seeded) else who
    return {"X-Ingest-Key": key, "Content-Type": "application/json"}


async def wait_key_known(c: Any, who: Seeded | str, within: float = 10) -> None:
    """Until this gateway's registry knows the key (a probe that enqueues nothing)."""

    async def known() -> bool:
        r = await c.get(f"{INGEST}/events/ev_probe", headers=key_headers(who))
        return bool(r.status == 404)

    await poll("the gateway to know the ingest key", known, within, every=0.05)


async def post(
    c: Any,
    who: Seeded | str,
    doc: Any,
    group_key: str = "",
    table: str = "employee",
    **params: str,
) -> str:
    """One single event, accepted (202); its event id."""
    r = await c.post(
        f"{INGEST}/event/{table}",
        json=doc,
        params={"groupKey": group_key, **params},
        headers=key_headers(who),
    )
    assert r.status == 202, await r.text()
    return str((await r.json())["eventId"])


async def delete(
    c: Any, who: Seeded | str, ids: str, group_key: str = "", table: str = "employee"
) -> str:
    """One delete event for the comma-separated ``ids``, accepted (202); its event id."""
    r = await c.delete(
        f"{INGEST}/{table}",
        params={"resourceIds": ids, "groupKey": group_key},
        headers=key_headers(who),
    )
    assert r.status == 202, await r.text()
    return str((await r.json())["eventId"])


async def post_bulk(
    c: Any,
    who: Seeded | str,
    body: Any,
    query: str = "",
    status: int = 202,
    table: str = "employee",
    **headers: str,
) -> dict[str, Any]:
    """One bulk upload (a list, or raw bytes sent as they are); asserts ``status``."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    r = await c.post(
        f"{INGEST}/bulk-event/{table}?{query}", data=data, headers={**key_headers(who), **headers}
    )
    out = await r.json()
    assert r.status == status, out
    return dict(out)


async def receipt(c: Any, who: Seeded | str, eid: str) -> dict[str, Any]:
    r = await c.get(f"{INGEST}/events/{eid}", headers=key_headers(who))
    assert r.status == 200, await r.text()
    return dict(await r.json())


async def wait_receipt(c: Any, who: Seeded | str, eid: str, within: float = 20) -> dict[str, Any]:
    """The receipt of ``eid`` once it is no longer pending (applied or rejected)."""

    async def done() -> dict[str, Any] | None:
        body = await receipt(c, who, eid)
        return body if body["status"] != "pending" else None

    return dict(await poll(f"the receipt of {eid}", done, within))


async def barrier(
    c: Any,
    who: Seeded | str,
    doc: Any,
    group_key: str = "",
    table: str = "employee",
    within: float = 30,
) -> dict[str, Any]:
    """Send ``doc`` as a single event to the scope (``table``, ``group_key``) and wait until
    its receipt is applied. A scope is one partition, processed in stream order, so
    whatever was accepted for it before has acted by then: wait on this, never on a
    sleep, before asserting that something did NOT happen. ``doc`` should leave the
    scope as it is (an unchanged copy of a current resource); the receipt is returned."""
    eid = await post(c, who, doc, group_key, table)
    rc = await wait_receipt(c, who, eid, within)
    assert rc["status"] == "applied", rc
    return rc


def emp(rid: Any = "e1", **extra: Any) -> dict[str, Any]:
    """An employee document for ``EMPLOYEE_SCHEMA``."""
    return {"employeeId": rid, **extra}


def counts(rc: dict[str, Any]) -> dict[str, int]:
    return {k: rc[k] for k in OPS}


def only(op: str, n: int = 1) -> dict[str, int]:
    c = dict.fromkeys(OPS, 0)
    c[op] = n
    return c


def employee_schema(**changes: Any) -> dict[str, Any]:
    """``EMPLOYEE_SCHEMA`` with top-level keys replaced (None removes a key)."""
    out = copy.deepcopy(EMPLOYEE_SCHEMA)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


async def follow_feed(
    c: Any, headers: dict[str, str], expect: int, limit: int = 100, **query: str
) -> tuple[list[dict[str, Any]], str]:
    """Every change feed item from the start (or ``after``), following ``next`` until
    ``expect`` items came, then one more page, which must be empty. Long polls while
    short: the feed shows a commit once every older transaction of the PostgreSQL cluster
    has ended, and the shared test server runs other databases' tests."""
    items: list[dict[str, Any]] = []
    params = {"limit": str(limit), **query}
    deadline = time.monotonic() + 30
    while True:
        if len(items) >= expect:
            params.pop("wait", None)
        r = await c.get("/api/v1/changes", params=params, headers=headers)
        assert r.status == 200, await r.text()
        body = await r.json()
        items += body["items"]
        params["after"] = body["next"]
        if len(items) >= expect and not body["items"]:
            assert len(items) == expect, items
            return items, str(body["next"])
        assert time.monotonic() < deadline, f"{len(items)} of {expect} items came"
        if not body["items"]:
            params["wait"] = "5"


@contextlib.asynccontextmanager
async def applying(pipeline: InlinePipeline, every: float = 0.02) -> AsyncIterator[None]:
    """Worker and projector (``pipeline``) applying in the background for the block."""

    async def loop() -> None:
        while True:
            await pipeline.run()
            await asyncio.sleep(every)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
