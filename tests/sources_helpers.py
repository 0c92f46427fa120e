"""Pull-source tests: the seed's specs, a table for each, and a harness that drives the
sources stage in-process (its real claim / run / finish path) beside the pipeline."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from aiohttp.test_utils import TestClient

from services.sources.main import SourcesStage
from shared.config import Settings
from shared.pg.registry import RegistryCache, RegistryStore
from shared.pg.sources import SourceStore
from shared.secrets import SecretBox
from tests.conftest import ADMIN, InlinePipeline, Seeded
from tests.unit.pull_examples import mailchimp_members as seed_members

Client = TestClient[Any, Any]

MEMBER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "member": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "email_address": {"type": "string"},
                "status": {"type": "string"},
            },
            "required": ["id", "email_address"],
        }
    },
    "required": ["member"],
    "resmo": {
        "id": "$.member.id",
        "name": "$.member.email_address",
        "importantFields": ["$.member.status"],
    },
}


def mailchimp_members(host: str) -> dict[str, Any]:
    """The seed's completed Mailchimp Members source spec, parsed from the seed's own text
    (:data:`tests.unit.pull_examples.MAILCHIMP_MEMBERS_TEXT`), with ``host`` pointing at
    the demo API, the API key header added and the key declared as a secret param."""
    spec = seed_members()
    spec["attributes"]["urlParams"]["host"] = host
    spec["attributes"]["headerParams"] = {"Authorization": "Bearer ${apiKey}"}
    spec["spec"]["properties"]["apiKey"] = {"type": "string", "format": "password"}
    spec["spec"]["required"] = ["listId", "apiKey"]
    return spec


def with_paging(spec: dict[str, Any], **paging: Any) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    out["attributes"]["paginationParams"].update(paging)
    return out


async def add_table(client: Client, seeded: Seeded, table: str, schema: dict[str, Any]) -> None:
    r = await client.post(
        f"/admin/v1/schema-groups/{seeded.group_id}/schemas",
        json={"table": table, "schema": schema},
        headers=ADMIN,
    )
    assert r.status == 201, await r.text()


async def create_source(
    client: Client, seeded: Seeded, name: str, spec: dict[str, Any], params: dict[str, Any],
    table: str, **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    r = await client.post(
        "/admin/v1/source-specs", json={"name": f"{name}-spec", "sourceSpec": spec}, headers=ADMIN
    )
    assert r.status == 201, await r.text()
    spec_id = (await r.json())["id"]
    body = {
        "name": name, "sourceSpec": spec_id, "params": params,
        "integration": seeded.integration_id, "table": table, "mode": "full", **extra,
    }  # fmt: skip
    r = await client.post("/admin/v1/sources", json=body, headers=ADMIN)
    assert r.status == 201, await r.text()
    return dict(await r.json())


class Harness:
    """The sources stage's real loop, one tick at a time, and the pipeline after it."""

    def __init__(self, client: Client, settings: Settings, pool: Any, redis: Any,
                 pipeline: InlinePipeline) -> None:  # fmt: skip
        assert settings.secret_key
        self.client = client
        self.pipeline = pipeline
        self.store = SourceStore(pool, SecretBox(settings.secret_key))
        registry = RegistryCache(RegistryStore(pool), 100)
        self.stage = SourcesStage(settings, self.store, registry, redis)

    async def start_run(self, source: str, kind: str | None = None) -> str:
        body = {"kind": kind} if kind else {}
        r = await self.client.post(f"/admin/v1/sources/{source}/runs", json=body, headers=ADMIN)
        assert r.status == 202, await r.text()
        return str((await r.json())["runId"])

    async def finish(self, within: float = 30) -> None:
        """Tick until no run is queued or running, then drain the pipeline."""
        async with asyncio.timeout(within):
            while True:
                await self.stage.tick()
                if not self.stage.running:
                    open_runs = await self.store.open_runs()
                    if not open_runs:
                        break
                await asyncio.sleep(0.02)
        await self.pipeline.run()

    async def run(self, source: str, kind: str | None = None) -> dict[str, Any]:
        """One run to its end, applied; its record as the API shows it."""
        run_id = await self.start_run(source, kind)
        await self.finish()
        return await self.get_run(source, run_id)

    async def get_run(self, source: str, run_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/admin/v1/sources/{source}/runs/{run_id}", headers=ADMIN)
        assert r.status == 200, await r.text()
        return dict(await r.json())
