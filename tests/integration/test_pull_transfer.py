"""Pull transfer (seed 003, issue 17): a session's consistent snapshot, then the changes
after it; request_id replay; titles; defaults of the current schema; access and bad
bodies."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests import xmlread
from tests.conftest import ADMIN, InlinePipeline, Seeded, seed_directory
from tests.helpers import delete, emp, employee_schema, follow_feed, post

PULL = "/integration/custom-data/pull/transfer"


async def pull(c: TestClient[Any, Any], who: Seeded, status: int = 200, **body: Any) -> Any:
    r = await c.post(PULL, json={"type": "employee", **body}, headers={"X-Ingest-Key": who.key})
    out = await r.json()
    assert r.status == status, out
    return out


def rows(batch: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(i["id"], i["op"], i["version"]) for i in batch["transfer_data"]]


async def before_the_session(c: TestClient[Any, Any], s: Seeded, pipeline: InlinePipeline) -> None:
    """Live: e1, e2, e3 (version 2), e5; e4 came and went. 7 changes."""
    for rid in ("e1", "e2", "e3", "e4", "e5"):
        await post(c, s, emp(rid, active=True))
    await post(c, s, emp("e3", active=False))
    await delete(c, s, "e4")
    await pipeline.run()
    await follow_feed(c, ADMIN, 7)  # all of it below the feed's bound


async def test_snapshot_then_the_changes_after_it(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await before_the_session(client, seeded, pipeline)
    first = await pull(client, seeded, session_id="s1", limit=2, request_id="r1")
    assert first["session_id"] == "s1" and first["has_more"] is True
    assert rows(first) == [("e1", "snapshot", 1), ("e2", "snapshot", 1)]
    assert first["transfer_data"][0]["data"] == emp("e1", active=True)
    # changes while the snapshot is being read: the snapshot stays the state at its start
    await post(client, seeded, emp("e5", active=False))
    await post(client, seeded, emp("e0", active=True))
    await delete(client, seeded, "e1")
    await pipeline.run()
    await follow_feed(client, ADMIN, 10)
    second = await pull(client, seeded, session_id="s1", limit=2, request_id="r2")
    assert rows(second) == [("e3", "snapshot", 2), ("e5", "snapshot", 1)]
    assert second["transfer_data"][1]["data"] == emp("e5", active=True)
    assert second["has_more"] is True  # the changes after the snapshot
    third = await pull(client, seeded, session_id="s1", limit=10, request_id="r3")
    assert rows(third) == [("e5", "updated", 2), ("e0", "created", 1), ("e1", "deleted", 2)]
    assert third["transfer_data"][2]["data"] is None
    assert third["has_more"] is False
    # the same request_id again: the same batch; then a new one moves on (nothing new)
    assert await pull(client, seeded, session_id="s1", limit=10, request_id="r3") == third
    fourth = await pull(client, seeded, session_id="s1", request_id="r4")
    assert fourth == {"session_id": "s1", "transfer_data": [], "has_more": False}
    await post(client, seeded, emp("e2", active=False))
    await pipeline.run()
    await follow_feed(client, ADMIN, 11)
    fifth = await pull(client, seeded, session_id="s1", request_id="r5")
    assert rows(fifth) == [("e2", "updated", 2)]


async def test_a_repeated_request_id_answers_the_same_batch(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await before_the_session(client, seeded, pipeline)
    one = await pull(client, seeded, session_id="s", limit=1, request_id="a")
    again = await pull(client, seeded, session_id="s", limit=3, request_id="a")
    assert again == one and rows(one) == [("e1", "snapshot", 1)]
    two = await pull(client, seeded, session_id="s", limit=1, request_id="b")
    assert rows(two) == [("e2", "snapshot", 1)]
    # no request_id: every call moves on
    assert rows(await pull(client, seeded, session_id="s", limit=1)) == [("e3", "snapshot", 2)]
    assert rows(await pull(client, seeded, session_id="s", limit=1)) == [("e5", "snapshot", 1)]
    # a new session of the same integration starts from its own snapshot
    assert len((await pull(client, seeded, session_id="t", limit=10))["transfer_data"]) == 4


async def test_type_by_title_and_current_defaults(
    client: TestClient[Any, Any], pipeline: InlinePipeline
) -> None:
    seeded = await seed_directory(client)
    await post(client, seeded, emp("e1"))
    await pipeline.run()
    later = employee_schema()
    later["properties"]["active"]["default"] = True
    r = await client.put(
        f"/admin/v1/schema-groups/{seeded.group_id}/schemas/employee",
        json={"schema": later, "title": "Company Person"},
        headers=ADMIN,
    )
    assert r.status == 200, await r.text()
    await follow_feed(client, ADMIN, 1)

    async def by_title(**body: Any) -> Any:
        r = await client.post(PULL, json=body, headers={"Authorization": f"Bearer {seeded.key}"})
        return r.status, await r.json()

    for _ in range(50):  # until the gateway's registry (polled every 100 ms) has the title
        status, out = await by_title(session_id="t", type="Company Person", request_id="1")
        if status == 200:
            break
    assert status == 200, out
    assert out["transfer_data"] == [
        {"data": {"employeeId": "e1", "active": True}, "id": "e1", "op": "snapshot", "version": 1}
    ]
    # seed 003's endgrate_type names the table as well
    status, out = await by_title(session_id="u", endgrate_type="Company Person")
    assert status == 200 and rows(out) == [("e1", "snapshot", 1)]


async def test_xml_answer(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await before_the_session(client, seeded, pipeline)
    as_json = await pull(client, seeded, session_id="x", request_id="1")
    r = await client.post(
        PULL,
        json={"session_id": "x", "type": "employee", "request_id": "1"},
        headers={"X-Ingest-Key": seeded.key, "Accept": "application/xml"},
    )
    assert r.status == 200 and r.content_type == "application/xml"
    root = xmlread.parse(await r.read())
    assert root.tag == "transfer" and xmlread.read(root, as_json) == as_json


async def test_access(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline
) -> None:
    other = await seed_directory(client, prefix="_other", table="person")
    await before_the_session(client, seeded, pipeline)
    body = {"session_id": "s", "type": "employee"}
    r = await client.post(PULL, json=body)
    assert (r.status, (await r.json())["code"]) == (401, "missing_ingest_key")
    r = await client.post(PULL, json=body, headers=ADMIN)  # the admin token is no ingest key
    assert (r.status, (await r.json())["code"]) == (401, "invalid_ingest_key")
    r = await client.post(PULL, json=body, headers={"X-Ingest-Key": other.key})
    assert (r.status, (await r.json())["code"]) == (404, "table_not_found")
    # the same session id in another integration is another session
    assert (await pull(client, other, session_id="s", type="person"))["transfer_data"] == []
    assert len((await pull(client, seeded, session_id="s"))["transfer_data"]) == 4


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"type": "employee"}, "/session_id"),
        ({"session_id": "", "type": "employee"}, "/session_id"),
        ({"session_id": 5, "type": "employee"}, "/session_id"),
        ({"session_id": "s"}, "/type"),
        ({"session_id": "s", "type": "employee", "limit": 0}, "/limit"),
        ({"session_id": "s", "type": "employee", "limit": 1001}, "/limit"),
        ({"session_id": "s", "type": "employee", "limit": True}, "/limit"),
        ({"session_id": "s", "type": "employee", "groupKey": 3}, "/groupKey"),
        ({"session_id": "s", "type": "employee", "request_id": ""}, "/request_id"),
        ({"session_id": "s", "type": "employee", "requestId": "r"}, "/requestId"),
    ],
)
async def test_bad_bodies_are_400(
    client: TestClient[Any, Any], seeded: Seeded, body: dict[str, Any], pointer: str
) -> None:
    r = await client.post(PULL, json=body, headers={"X-Ingest-Key": seeded.key})
    out = await r.json()
    assert (r.status, out["code"], out["pointer"]) == (400, "invalid_parameter", pointer), out


async def test_a_session_reads_one_scope(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await post(client, seeded, emp("g1"), group_key="acme")
    await post(client, seeded, emp("n1"))
    await pipeline.run()
    await follow_feed(client, ADMIN, 2)
    acme = await pull(client, seeded, session_id="a", groupKey="acme")
    assert rows(acme) == [("g1", "snapshot", 1)]
    out = await pull(client, seeded, 409, session_id="a")  # the empty groupKey
    assert out["code"] == "session_conflict"
    assert rows(await pull(client, seeded, session_id="b")) == [("n1", "snapshot", 1)]
