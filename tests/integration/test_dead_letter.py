"""An entry the worker cannot handle (a defect, not an outage) is rejected with a sync
issue and the partition moves on; it is never retried forever. The defect is injected
into ingestd's own code; Redis and PostgreSQL are real."""

from __future__ import annotations

from typing import Any

import pytest

import services.worker.drain as drain
from tests.conftest import ADMIN, InlinePipeline, Seeded
from tests.helpers import counts, emp, only, post, receipt


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected defect")


async def test_single_event_defect_is_dead_lettered(
    client: Any, seeded: Seeded, pipeline: InlinePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = await post(client, seeded, emp("a"))
    monkeypatch.setattr(drain, "prepare_single", _boom)
    await pipeline.run()
    monkeypatch.undo()
    ok = await post(client, seeded, emp("b"))
    await pipeline.run()
    rc = await receipt(client, seeded, bad)
    assert rc["status"] == "rejected"
    assert rc["issues"][0]["code"] == "unprocessable"
    assert counts(await receipt(client, seeded, ok)) == only("created")
    r = await client.get("/api/v1/sync-issues", headers=ADMIN)
    assert [i["code"] for i in (await r.json())["items"]] == ["unprocessable"]


async def test_snapshot_defect_is_dead_lettered(
    client: Any, seeded: Seeded, pipeline: InlinePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await client.post(
        "/integration/custom-data/bulk-event/employee",
        json=[emp("a"), emp("b")],
        headers=seeded.headers,
    )
    assert r.status == 202, await r.text()
    bad = (await r.json())["eventId"]
    monkeypatch.setattr(drain.BulkCommit, "run", _boom)
    await pipeline.run()
    monkeypatch.undo()
    ok = await post(client, seeded, emp("c"))
    await pipeline.run()
    rc = await receipt(client, seeded, bad)
    assert rc["status"] == "rejected" and rc["issues"][0]["code"] == "unprocessable"
    assert counts(await receipt(client, seeded, ok)) == only("created")
    r = await client.get("/api/v1/resources/_directory_employee", headers=ADMIN)
    assert [i["id"] for i in (await r.json())["items"]] == ["c"]  # the snapshot changed nothing
