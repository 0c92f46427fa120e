"""Admin API of pull sources against a real gateway, PostgreSQL and Redis: specs and
their revisions, sources (secrets sealed and never answered), pause/resume and runs."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from shared.config import Settings
from shared.pg.sources import SourceStore
from shared.secrets import SecretBox
from tests.conftest import ADMIN, SECRET_KEY, Seeded, seed_directory
from tests.integration.test_admin_api import error

Client = TestClient[Any, Any]
SPECS = "/admin/v1/source-specs"
SOURCES = "/admin/v1/sources"
SECRET = "sk-live-0123456789-top-secret"
MEMBERS_SPEC: dict[str, Any] = {
    "attributes": {
        "uiAttributes": {"isSource": True, "label": {"key": "mailchimpMembersLabel"}},
        "urlParams": {
            "host": "http://127.0.0.1:9",
            "path": "/3.0/lists/${listId}/members",
            "method": "GET",
            "queryParams": {"apikey": "${apiKey}"},
        },
        "contentPath": {"path": "$.members", "skipAttributes": ["_links"]},
        "paginationParams": {
            "type": "OFFSET",
            "limitName": "count",
            "limitValue": "100",
            "offSetName": "offset",
        },
        "scheduleParams": {
            "scheduleStartParamName": "since_last_changed",
            "scheduleEndParamName": "before_last_changed",
            "scheduleStartParamFormat": "yyyy-MM-ddTHH:mm:ss:fffffffK",
            "scheduleEndParamFormat": "yyyy-MM-ddTHH:mm:ss:fffffffK",
        },
    },
    "spec": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "listId": {"type": "string", "description": "listId for which members need to fetch."},
            "apiKey": {"type": "string", "format": "password"},
        },
        "required": ["listId"],
    },
}


async def ok(r: ClientResponse, status: int = 200) -> Any:
    assert r.status == status, await r.text()
    return await r.json()


async def new_spec(c: Client, name: str = "mailchimp-members") -> dict[str, Any]:
    r = await c.post(SPECS, json={"name": name, "sourceSpec": MEMBERS_SPEC}, headers=ADMIN)
    return dict(await ok(r, 201))


def source_body(seeded: Seeded, spec: str = "mailchimp-members", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "members",
        "sourceSpec": spec,
        "params": {"listId": "L1", "apiKey": SECRET},
        "integration": seeded.integration_id,
        "table": "employee",
        "mode": "incremental",
    }
    body.update(kw)
    return body


async def new_source(c: Client, seeded: Seeded, **kw: Any) -> dict[str, Any]:
    r = await c.post(SOURCES, json=source_body(seeded, **kw), headers=ADMIN)
    return dict(await ok(r, 201))


@pytest.fixture
def store(pool: asyncpg.Pool) -> SourceStore:
    return SourceStore(pool, SecretBox(SECRET_KEY))


# ---- auth and configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", SPECS),
        ("GET", SPECS),
        ("PUT", f"{SPECS}/x"),
        ("DELETE", f"{SPECS}/x"),
        ("POST", SOURCES),
        ("GET", f"{SOURCES}/x"),
        ("POST", f"{SOURCES}/x/pause"),
        ("POST", f"{SOURCES}/x/runs"),
        ("GET", f"{SOURCES}/x/runs/run_1"),
        ("DELETE", f"{SOURCES}/x/runs/run_1"),
    ],
)
async def test_admin_token_required(client: Client, method: str, path: str) -> None:
    await error(await client.request(method, path, json={}), 401, "unauthorized")
    bad = {"Authorization": "Bearer nope"}
    await error(await client.request(method, path, json={}, headers=bad), 401, "unauthorized")


@pytest.fixture
async def keyless(settings: Settings) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(replace(settings, secret_key=None)))) as c:
        yield c


async def test_without_a_secret_key_sources_are_unavailable(keyless: Client) -> None:
    for method, path in (("GET", SPECS), ("POST", SOURCES), ("GET", f"{SOURCES}/x/runs")):
        body = await error(await keyless.request(method, path, headers=ADMIN), 503, "unavailable")
        assert "INGESTD_SECRET_KEY" in body["message"]
    r = await keyless.get("/admin/v1/schema-groups", headers=ADMIN)  # the rest still works
    assert r.status == 200


# ---- specs --------------------------------------------------------------------------------


async def test_spec_round_trip_and_revisions(client: Client) -> None:
    created = await new_spec(client)
    assert (created["name"], created["revision"], created["sourceSpec"]) == (
        "mailchimp-members", 1, MEMBERS_SPEC,
    )  # fmt: skip
    assert set(created) == {"id", "name", "revision", "sourceSpec", "createdAt", "updatedAt"}
    for ref in (created["id"], "mailchimp-members"):
        assert await ok(await client.get(f"{SPECS}/{ref}", headers=ADMIN)) == created
    listed = await ok(await client.get(SPECS, headers=ADMIN))
    assert listed == {"items": [created]}

    changed = copy.deepcopy(MEMBERS_SPEC)
    changed["attributes"]["paginationParams"]["limitValue"] = 50
    r = await client.put(f"{SPECS}/{created['id']}", json={"sourceSpec": changed}, headers=ADMIN)
    v2 = await ok(r)
    assert (v2["id"], v2["revision"], v2["sourceSpec"]) == (created["id"], 2, changed)
    r = await client.put(f"{SPECS}/mailchimp-members", json={"sourceSpec": changed}, headers=ADMIN)
    assert (await ok(r))["revision"] == 3

    await error(await client.post(SPECS, json={"name": "mailchimp-members",
                "sourceSpec": MEMBERS_SPEC}, headers=ADMIN), 409, "duplicate_name")  # fmt: skip
    assert (await client.delete(f"{SPECS}/{created['id']}", headers=ADMIN)).status == 204
    await error(await client.get(f"{SPECS}/{created['id']}", headers=ADMIN), 404,
                "source_spec_not_found")  # fmt: skip
    await error(await client.delete(f"{SPECS}/nope", headers=ADMIN), 404, "source_spec_not_found")


def _broken(path: list[str], value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MEMBERS_SPEC)
    node: Any = spec
    for k in path[:-1]:
        node = node[k]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return spec


@pytest.mark.parametrize(
    ("body", "code", "pointer"),
    [
        ({"sourceSpec": MEMBERS_SPEC}, "invalid_name", "/name"),
        ({"name": "x"}, "invalid_source_spec", "/sourceSpec"),
        (
            {"name": "x", "sourceSpec": _broken(["attributes", "urlParams", "host"], None)},
            "invalid_source_spec",
            "/sourceSpec/attributes/urlParams/host",
        ),
        (
            {"name": "x", "sourceSpec": _broken(["attributes", "paginationParams", "type"], "X")},
            "invalid_source_spec",
            "/sourceSpec/attributes/paginationParams/type",
        ),
    ],
)
async def test_spec_refusals(client: Client, body: dict[str, Any], code: str, pointer: str) -> None:
    r = await client.post(SPECS, json=body, headers=ADMIN)
    got = await error(r, 400, code, body)
    assert got["pointer"] == pointer
    if code != "invalid_source_spec":
        return
    spec = await new_spec(client, "ok")
    r = await client.put(f"{SPECS}/{spec['id']}", json={"sourceSpec": body.get("sourceSpec")},
                         headers=ADMIN)  # fmt: skip
    assert (await error(r, 400, code))["pointer"] == pointer
    assert (await ok(await client.get(f"{SPECS}/ok", headers=ADMIN)))["revision"] == 1


async def test_spec_in_use(client: Client, seeded: Seeded) -> None:
    spec = await new_spec(client)
    src = await new_source(client, seeded)
    body = await error(await client.delete(f"{SPECS}/{spec['id']}", headers=ADMIN), 409,
                       "spec_in_use")  # fmt: skip
    assert "members" in body["message"]
    assert (await client.delete(f"{SOURCES}/{src['id']}", headers=ADMIN)).status == 204
    assert (await client.delete(f"{SPECS}/{spec['id']}", headers=ADMIN)).status == 204


# ---- sources ------------------------------------------------------------------------------


async def test_source_round_trip(client: Client, seeded: Seeded, store: SourceStore) -> None:
    spec = await new_spec(client)
    created = await new_source(
        client, seeded, schedule={"every": "15m"}, startTime="2024-05-01T00:00:00Z",
        groupKey="acme",
    )  # fmt: skip
    assert created["params"] == {"listId": "L1", "apiKey": "******"}
    expect = {
        "name": "members", "sourceSpec": spec["id"], "sourceSpecName": "mailchimp-members",
        "integration": seeded.integration_id, "table": "employee", "groupKey": "acme",
        "mode": "incremental", "schedule": {"every": "15m"},
        "startTime": "2024-05-01T00:00:00+00:00", "paused": False,
    }  # fmt: skip
    assert expect.items() <= created.items()
    assert created["nextRunAt"] is not None
    for ref in (created["id"], "members"):
        assert await ok(await client.get(f"{SOURCES}/{ref}", headers=ADMIN)) == created
    assert await ok(await client.get(SOURCES, headers=ADMIN)) == {"items": [created]}

    paused = await ok(await client.post(f"{SOURCES}/members/pause", headers=ADMIN))
    assert paused["paused"] is True
    resumed = await ok(await client.post(f"{SOURCES}/members/resume", headers=ADMIN))
    assert resumed["paused"] is False

    # PUT: the GET answer sent back keeps the stored secret; a new value replaces it
    body = {**created, "mode": "full", "schedule": {"cron": "0 * * * *"}, "groupKey": ""}
    out = await ok(await client.put(f"{SOURCES}/{created['id']}", json=body, headers=ADMIN))
    assert (out["mode"], out["schedule"], out["params"]) == (
        "full", {"cron": "0 * * * *"}, {"listId": "L1", "apiKey": "******"},
    )  # fmt: skip
    assert (await store.get_source(created["id"])).params["apiKey"] == SECRET
    body["params"] = {"listId": "L2", "apiKey": "new-secret-value"}
    await ok(await client.put(f"{SOURCES}/members", json=body, headers=ADMIN))
    stored = await store.get_source(created["id"])
    assert stored.params == {"listId": "L2", "apiKey": "new-secret-value"}

    assert (await client.delete(f"{SOURCES}/members", headers=ADMIN)).status == 204
    await error(await client.get(f"{SOURCES}/members", headers=ADMIN), 404, "source_not_found")
    await error(await client.delete(f"{SOURCES}/members", headers=ADMIN), 404, "source_not_found")


async def test_secrets_never_answered_and_sealed(
    client: Client, seeded: Seeded, pool: asyncpg.Pool
) -> None:
    await new_spec(client)
    answers = [await client.post(SOURCES, json=source_body(seeded), headers=ADMIN)]
    sid = (await answers[0].json())["id"]
    body = source_body(seeded, params={"listId": "L1", "apiKey": "******"})
    answers.append(await client.put(f"{SOURCES}/{sid}", json=body, headers=ADMIN))
    for path in (SOURCES, f"{SOURCES}/{sid}", SPECS):
        answers.append(await client.get(path, headers=ADMIN))
    answers.append(await client.post(f"{SOURCES}/{sid}/pause", headers=ADMIN))
    answers.append(await client.post(f"{SOURCES}/{sid}/runs", headers=ADMIN))
    answers.append(await client.get(f"{SOURCES}/{sid}/runs", headers=ADMIN))
    for a in answers:
        assert a.status < 300, await a.text()
        assert SECRET not in await a.text()
    # in PostgreSQL: only ciphertext (not the value, nor its bytes in hex)
    for table in ("sources", "source_runs", "source_specs", "source_spec_revisions"):
        for row in await pool.fetch(f"SELECT row_to_json(t)::text AS j FROM {table} t"):
            assert SECRET not in row["j"] and SECRET.encode().hex() not in row["j"], table
    blob = await pool.fetchval("SELECT secret_params FROM sources WHERE id = $1::uuid", sid)
    assert blob is not None and SECRET.encode() not in bytes(blob)
    assert SecretBox(SECRET_KEY).open(bytes(blob)) == {"apiKey": SECRET}


async def test_masked_secret_without_a_stored_value(client: Client, seeded: Seeded) -> None:
    spec = copy.deepcopy(MEMBERS_SPEC)  # an optional secret no placeholder needs
    spec["spec"]["properties"]["token"] = {"type": "string", "secret": True}
    r = await client.post(SPECS, json={"name": "mailchimp-members", "sourceSpec": spec},
                          headers=ADMIN)  # fmt: skip
    await ok(r, 201)
    masked = {"listId": "L", "apiKey": "******"}
    r = await client.post(SOURCES, json=source_body(seeded, params=masked), headers=ADMIN)
    assert (await error(r, 400, "invalid_source_params"))["pointer"] == "/params/apiKey"
    src = await new_source(client, seeded, params={"listId": "L", "apiKey": SECRET})
    body = source_body(seeded, params={"listId": "L", "apiKey": "******", "token": "******"})
    r = await client.put(f"{SOURCES}/{src['id']}", json=body, headers=ADMIN)
    assert (await error(r, 400, "invalid_source_params"))["pointer"] == "/params/token"


async def test_spec_put_reseals_and_refuses_misfits(
    client: Client, seeded: Seeded, store: SourceStore, pool: asyncpg.Pool
) -> None:
    spec = await new_spec(client)
    src = await new_source(client, seeded)
    # listId becomes a secret: it is sealed from now on, and masked
    changed = copy.deepcopy(MEMBERS_SPEC)
    changed["spec"]["properties"]["listId"]["writeOnly"] = True
    r = await client.put(f"{SPECS}/{spec['id']}", json={"sourceSpec": changed}, headers=ADMIN)
    await ok(r)
    params = await pool.fetchval("SELECT params FROM sources WHERE id = $1::uuid", src["id"])
    assert params == {}
    got = await ok(await client.get(f"{SOURCES}/{src['id']}", headers=ADMIN))
    assert got["params"] == {"listId": "******", "apiKey": "******"}
    assert (await store.get_source(src["id"])).params == {"listId": "L1", "apiKey": SECRET}
    # a revision the source's params no longer fit is refused
    misfit = copy.deepcopy(MEMBERS_SPEC)
    misfit["spec"]["properties"]["listId"]["pattern"] = "^X"
    r = await client.put(f"{SPECS}/{spec['id']}", json={"sourceSpec": misfit}, headers=ADMIN)
    body = await error(r, 400, "invalid_source_params")
    assert body["pointer"] == "/sourceSpec/spec" and "members" in body["message"]
    assert SECRET not in body["message"]
    assert (await ok(await client.get(f"{SPECS}/{spec['id']}", headers=ADMIN)))["revision"] == 2


@pytest.mark.parametrize(
    ("change", "status", "code", "pointer"),
    [
        ({"name": ""}, 400, "invalid_name", "/name"),
        ({"sourceSpec": "nope"}, 404, "source_spec_not_found", "/sourceSpec"),
        ({"sourceSpec": 5}, 400, "invalid_source", "/sourceSpec"),
        ({"params": {"apiKey": "k"}}, 400, "invalid_source_params", "/params"),
        ({"params": {"listId": 5}}, 400, "invalid_source_params", "/params/listId"),
        ({"params": []}, 400, "invalid_source_params", "/params"),
        (
            {"integration": "00000000-0000-0000-0000-000000000000"},
            404,
            "integration_not_found",
            "/integration",
        ),
        ({"integration": None}, 400, "invalid_source", "/integration"),
        ({"table": "nope"}, 400, "invalid_source", "/table"),
        ({"groupKey": "g" * 101}, 400, "invalid_source", "/groupKey"),
        ({"groupKey": 5}, 400, "invalid_source", "/groupKey"),
        ({"mode": "sometimes"}, 400, "invalid_source", "/mode"),
        ({"mode": None}, 400, "invalid_source", "/mode"),
        ({"schedule": {"every": "1s"}}, 400, "invalid_source", "/schedule/every"),
        ({"schedule": {"cron": "nope"}}, 400, "invalid_source", "/schedule/cron"),
        ({"schedule": "15m"}, 400, "invalid_source", "/schedule"),
        ({"startTime": "yesterday"}, 400, "invalid_source", "/startTime"),
        ({"startTime": "2024-05-01T00:00:00"}, 400, "invalid_source", "/startTime"),
        ({"startTime": "2024-05-01"}, 400, "invalid_source", "/startTime"),
    ],
)
async def test_source_refusals(
    client: Client, seeded: Seeded, change: dict[str, Any], status: int, code: str, pointer: str
) -> None:
    await new_spec(client)
    r = await client.post(SOURCES, json=source_body(seeded, **change), headers=ADMIN)
    body = await error(r, status, code, change)
    assert body["pointer"] == pointer, body
    assert SECRET not in body["message"]
    assert await ok(await client.get(SOURCES, headers=ADMIN)) == {"items": []}


async def test_table_of_another_group_is_refused(client: Client, seeded: Seeded) -> None:
    other = await seed_directory(client, prefix="_other", table="ticket")
    await new_spec(client)
    r = await client.post(SOURCES, json=source_body(seeded, table="ticket"), headers=ADMIN)
    assert (await error(r, 400, "invalid_source"))["pointer"] == "/table"
    await new_source(client, seeded, integration=other.integration_id, table="ticket")
    r = await client.post(SOURCES, json=source_body(seeded, table="ticket",
                          integration=other.integration_id), headers=ADMIN)  # fmt: skip
    await error(r, 409, "duplicate_name")


# ---- runs ---------------------------------------------------------------------------------

RUN_KEYS = {
    "runId", "kind", "status", "specRevision", "windowStart", "windowEnd", "requests", "pages",
    "records", "created", "updated", "deleted", "unchanged", "rejected", "skipped", "pending",
    "truncated", "createdAt", "startedAt", "finishedAt",
}  # fmt: skip


async def test_runs(client: Client, seeded: Seeded, store: SourceStore) -> None:
    await new_spec(client)
    src = await new_source(client, seeded)
    runs = f"{SOURCES}/{src['id']}/runs"
    first = await ok(await client.post(runs, headers=ADMIN), 202)
    assert set(first) == {"runId", "status"} and first["status"] == "queued"
    body = await error(await client.post(runs, json={"kind": "backfill"}, headers=ADMIN), 409,
                       "run_in_progress")  # fmt: skip
    assert body["message"]
    got = await ok(await client.get(f"{runs}/{first['runId']}", headers=ADMIN))
    assert set(got) == RUN_KEYS
    assert (got["kind"], got["status"], got["specRevision"], got["records"]) == (
        "incremental", "queued", 1, 0,
    )  # fmt: skip
    cancelled = await ok(await client.delete(f"{runs}/{first['runId']}", headers=ADMIN))
    assert cancelled["status"] == "cancelled" and cancelled["finishedAt"] is not None
    await error(await client.delete(f"{runs}/{first['runId']}", headers=ADMIN), 409,
                "run_finished")  # fmt: skip

    second = await ok(await client.post(f"{SOURCES}/members/runs", json={"kind": "backfill"},
                      headers=ADMIN), 202)  # fmt: skip
    claimed = await store.claim_run("stage-1")
    assert claimed is not None and claimed.id == second["runId"]
    failure = {"code": "source_http_error", "message": "HTTP 401", "request": "GET http://x/"}
    assert await store.finish_run(claimed.id, "stage-1", "failed", error=failure)
    listed = await ok(await client.get(runs, headers=ADMIN))
    assert [r["runId"] for r in listed["items"]] == [second["runId"], first["runId"]]
    assert listed["next"] is None
    failed = listed["items"][0]
    assert (failed["kind"], failed["status"]) == ("backfill", "failed")
    assert failed["error"] == failure
    page = await ok(await client.get(f"{runs}?limit=1", headers=ADMIN))
    assert [r["runId"] for r in page["items"]] == [second["runId"]]
    assert page["next"] == second["runId"]
    rest = await ok(await client.get(f"{runs}?limit=1&before={page['next']}", headers=ADMIN))
    assert [r["runId"] for r in rest["items"]] == [first["runId"]]
    await error(await client.get(f"{runs}?limit=0", headers=ADMIN), 400, "invalid_parameter")
    await error(await client.get(f"{runs}/run_nope", headers=ADMIN), 404, "run_not_found")
    await error(await client.get(f"{SOURCES}/nope/runs", headers=ADMIN), 404, "source_not_found")


async def test_run_kinds(client: Client, seeded: Seeded) -> None:
    await new_spec(client)
    full = await new_source(client, seeded, name="full", mode="full")
    runs = f"{SOURCES}/{full['id']}/runs"
    r = await client.post(runs, json={"kind": "incremental"}, headers=ADMIN)
    assert (await error(r, 400, "invalid_source"))["pointer"] == "/kind"
    r = await client.post(runs, json={"kind": "sometimes"}, headers=ADMIN)
    assert (await error(r, 400, "invalid_source"))["pointer"] == "/kind"
    await error(await client.post(runs, data=b"[1]", headers=ADMIN), 400, "body_not_object")
    await error(await client.post(runs, data=b"{", headers=ADMIN), 400, "invalid_json")
    run = await ok(await client.post(runs, headers=ADMIN), 202)  # default: backfill
    got = await ok(await client.get(f"{runs}/{run['runId']}", headers=ADMIN))
    assert got["kind"] == "backfill"
    # a run of one source is not found under another
    inc = await new_source(client, seeded, name="inc")
    await error(await client.get(f"{SOURCES}/{inc['id']}/runs/{run['runId']}", headers=ADMIN),
                404, "run_not_found")  # fmt: skip
    await error(await client.delete(f"{SOURCES}/{inc['id']}/runs/{run['runId']}", headers=ADMIN),
                404, "run_not_found")  # fmt: skip
    inc_run = await ok(await client.post(f"{SOURCES}/inc/runs", json={"kind": "backfill"},
                       headers=ADMIN), 202)  # fmt: skip
    assert inc_run["status"] == "queued"
    # deleting a source with an open run cancels and removes it
    assert (await client.delete(f"{SOURCES}/full", headers=ADMIN)).status == 204
    await error(await client.get(f"{SOURCES}/full/runs", headers=ADMIN), 404, "source_not_found")


async def test_a_key_that_cannot_open_the_secrets_is_unavailable(
    client: Client, seeded: Seeded, settings: Settings
) -> None:
    await new_spec(client)
    src = await new_source(client, seeded)
    other = replace(settings, secret_key=SecretBox.generate_key())
    async with TestClient(TestServer(create_app(other))) as c:
        body = await error(await c.get(f"{SOURCES}/{src['id']}", headers=ADMIN), 503,
                           "unavailable")  # fmt: skip
        assert "INGESTD_SECRET_KEY" in body["message"] and SECRET not in body["message"]
    rotated = replace(settings, secret_key=f"{SecretBox.generate_key()},{SECRET_KEY}")
    async with TestClient(TestServer(create_app(rotated))) as c:
        assert (await ok(await c.get(f"{SOURCES}/{src['id']}", headers=ADMIN)))["id"] == src["id"]
