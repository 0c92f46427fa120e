from __future__ import annotations

from typing import Any

from tests.conftest import ADMIN, InlinePipeline, Seeded


async def test_single_event_created_then_unchanged(
    client: Any, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    doc = {"employeeId": "e1", "active": True, "employee": {"username": "jdoe", "email": "j@x.io"}}
    url = "/integration/custom-data/event/employee?groupKey=acme&event=hired&actor=%22hr%22"
    r = await client.post(url, json=doc, headers=seeded.headers)
    assert r.status == 202
    first = (await r.json())["eventId"]
    r = await client.post(url, json=doc, headers=seeded.headers)
    second = (await r.json())["eventId"]
    await pipeline.run()
    r = await client.get(f"/integration/custom-data/events/{first}", headers=seeded.headers)
    assert (await r.json())["created"] == 1
    r = await client.get(f"/integration/custom-data/events/{second}", headers=seeded.headers)
    body = await r.json()
    assert body["status"] == "applied" and body["unchanged"] == 1
    r = await client.get("/api/v1/resources/_directory_employee/e1?groupKey=acme", headers=ADMIN)
    res = await r.json()
    assert res["name"] == "jdoe" and res["_meta"]["version"] == 1
    assert res["importantFields"]["$.employee.email"] == "j@x.io"
