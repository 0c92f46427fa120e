"""Admin API against real PostgreSQL and Redis: auth, schema registry, integrations, keys."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from services.gateway.app import create_app
from shared import keys
from shared.config import Settings
from shared.embedded import EmbeddedRedis
from shared.pg.registry import RegistryCache, RegistryStore
from shared.schema_rules import CompiledSchema, Extracted, prepare_schema
from tests.conftest import ADMIN, EMPLOYEE_SCHEMA, TABLES, Seeded
from tests.helpers import employee_schema

Client = TestClient[Any, Any]
G = "/admin/v1/schema-groups"
EVENT = "/integration/custom-data/event/employee"


async def error(r: ClientResponse, status: int, code: str, case: Any = "") -> dict[str, Any]:
    """Assert an error response: status, JSON body {code, message, pointer?}."""
    assert r.status == status, (case, await r.text())
    assert r.content_type == "application/json"
    body: dict[str, Any] = await r.json()
    assert set(body) <= {"code", "message", "pointer"}, (case, body)
    assert body["code"] == code, (case, body)
    assert isinstance(body["message"], str) and body["message"]
    return body


async def new_group(c: Client, name: str = "directory", prefix: str = "_directory") -> str:
    r = await c.post(G, json={"name": name, "prefix": prefix}, headers=ADMIN)
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


async def post_schema(c: Client, gid: str, schema: Any, table: str = "employee") -> ClientResponse:
    return await c.post(
        f"{G}/{gid}/schemas", json={"table": table, "schema": schema}, headers=ADMIN
    )


async def ingest(c: Client, key: str) -> ClientResponse:
    return await c.post(EVENT, json={"employeeId": "e1"}, headers={"X-Ingest-Key": key})


# ---- admin auth -----------------------------------------------------------------------------


ADMIN_CALLS = [
    ("GET", G),
    ("POST", G),
    ("GET", "/admin/v1/integrations"),
    ("POST", "/admin/v1/integrations"),
    ("DELETE", "/admin/v1/integrations/x/keys/y"),
]
BAD_AUTH: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": "Basic dGVzdC1hZG1pbi10b2tlbg=="},
    {"Authorization": "Bearer "},
    {"Authorization": "test-admin-token"},
]


async def test_admin_calls_need_the_admin_token(client: Client) -> None:
    for method, path in ADMIN_CALLS:
        for headers in BAD_AUTH:
            r = await client.request(method, path, json={}, headers=headers)
            await error(r, 401, "unauthorized", (method, path, headers))
            assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_admin_token_is_accepted(client: Client) -> None:
    r = await client.get(G, headers=ADMIN)
    assert r.status == 200
    assert await r.json() == {"items": []}


async def test_ingest_key_is_not_an_admin_token(client: Client, seeded: Seeded) -> None:
    r = await client.get(G, headers={"Authorization": f"Bearer {seeded.key}"})
    await error(r, 401, "unauthorized")


# ---- schema groups ------------------------------------------------------------------------


async def test_create_and_list_groups(client: Client) -> None:
    r = await client.post(G, json={"name": "Directory", "prefix": "_directory"}, headers=ADMIN)
    assert r.status == 201
    created = await r.json()
    assert {k: created[k] for k in ("name", "prefix")} == {
        "name": "Directory",
        "prefix": "_directory",
    }
    await new_group(client, "crm", "crm")
    r = await client.get(G, headers=ADMIN)
    items = (await r.json())["items"]
    assert [(g["name"], g["prefix"]) for g in items] == [
        ("Directory", "_directory"),
        ("crm", "crm"),
    ]
    assert items[0]["id"] == created["id"]
    r = await client.get(f"{G}/{created['id']}", headers=ADMIN)
    assert (await r.json())["prefix"] == "_directory"


async def test_duplicate_group_name_or_prefix_is_409(client: Client) -> None:
    await new_group(client, "directory", "_directory")
    r = await client.post(G, json={"name": "directory", "prefix": "_other"}, headers=ADMIN)
    await error(r, 409, "duplicate_name")
    r = await client.post(G, json={"name": "other", "prefix": "_directory"}, headers=ADMIN)
    await error(r, 409, "duplicate_prefix")
    r = await client.get(G, headers=ADMIN)
    assert len((await r.json())["items"]) == 1


async def test_bad_prefix_is_400(client: Client) -> None:
    for prefix in ["", "Directory", "1dir", "dir-x", "__dir", "_" + "a" * 32, "dir\n", None, 5]:
        r = await client.post(G, json={"name": "n", "prefix": prefix}, headers=ADMIN)
        body = await error(r, 400, "invalid_prefix", prefix)
        assert body["pointer"] == "/prefix"


async def test_malformed_group_body_is_400(client: Client) -> None:
    for data, code in [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "body_not_object"),
        (b'{"name": "", "prefix": "ok"}', "invalid_name"),
        (b'{"prefix": "ok"}', "invalid_name"),
    ]:
        r = await client.post(G, data=data, headers={**ADMIN, "Content-Type": "application/json"})
        await error(r, 400, code, data)
    r = await client.get(G, headers=ADMIN)
    assert (await r.json())["items"] == []


async def test_nul_characters_are_400_not_500(client: Client, seeded: Seeded) -> None:
    # PostgreSQL text/jsonb cannot store U+0000; it must be a clear 400, never a 500
    gid, iid = seeded.group_id, seeded.integration_id
    cases: list[tuple[str, str, Any, str]] = [
        ("POST", G, {"name": "a\x00b", "prefix": "_x"}, "/name"),
        (
            "POST",
            f"{G}/{gid}/schemas",
            {"table": "t", "schema": employee_schema(description="x\x00")},
            "/schema/description",
        ),
        (
            "PUT",
            f"{G}/{gid}/schemas/employee",
            {"schema": employee_schema(required=["employeeId", "a\x00"])},
            "/schema/required/1",
        ),
        ("POST", "/admin/v1/integrations", {"name": "i\x00", "schemaGroup": gid}, "/name"),
        ("GET", f"{G}/{gid}/schemas/emp%00", None, "/path/table"),
        ("DELETE", f"/admin/v1/integrations/{iid}/keys/k%00", None, "/path/keyId"),
    ]
    for method, path, body, pointer in cases:
        r = await client.request(method, path, json=body, headers=ADMIN)
        got = await error(r, 400, "invalid_character", (method, path))
        assert got["pointer"] == pointer
    r = await client.get(f"{G}/{gid}/schemas/employee/versions", headers=ADMIN)
    assert [v["version"] for v in (await r.json())["items"]] == [1]


async def test_unknown_group_is_404(client: Client) -> None:
    for gid in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        r = await client.get(f"{G}/{gid}/schemas", headers=ADMIN)
        await error(r, 404, "schema_group_not_found")
        r = await post_schema(client, gid, EMPLOYEE_SCHEMA)
        await error(r, 404, "schema_group_not_found")


# ---- schemas -------------------------------------------------------------------------------


async def test_create_schema(client: Client) -> None:
    gid = await new_group(client)
    r = await client.post(
        f"{G}/{gid}/schemas",
        json={"table": "employee", "schema": EMPLOYEE_SCHEMA, "title": "Employees"},
        headers=ADMIN,
    )
    assert r.status == 201, await r.text()
    body = await r.json()
    assert body["table"] == "employee"
    assert body["resourceType"] == "_directory_employee"
    assert body["version"] == 1
    assert body["title"] == "Employees"
    assert body["schema"]["unevaluatedProperties"] is False
    assert body["schema"]["resmo"] == EMPLOYEE_SCHEMA["resmo"]
    assert {
        k: v for k, v in body["schema"].items() if k != "unevaluatedProperties"
    } == EMPLOYEE_SCHEMA
    # only the create/update answer carries the schema advice (seed 003)
    assert {w["code"] for w in body.pop("warnings")} == {"undescribed_attribute"}
    r = await client.get(f"{G}/{gid}/schemas/employee", headers=ADMIN)
    assert await r.json() == body
    r = await client.get(f"{G}/{gid}/schemas", headers=ADMIN)
    assert (await r.json())["items"] == [body]


async def test_stored_schema_refuses_unknown_fields(client: Client, seeded: Seeded) -> None:
    # the registry closes the schema: an accepted event with an extra field is not
    # checked here (processing is asynchronous), but the compiled stored body refuses it
    r = await client.get(f"{G}/{seeded.group_id}/schemas/employee", headers=ADMIN)
    stored = (await r.json())["schema"]
    c = CompiledSchema(stored)
    assert c.validate({"employeeId": "e1"}) == []
    assert [i.code for i in c.validate({"employeeId": "e1", "x": 1})] == ["unknown_field"]


async def test_duplicate_table_is_409(client: Client) -> None:
    gid = await new_group(client)
    assert (await post_schema(client, gid, EMPLOYEE_SCHEMA)).status == 201
    await error(await post_schema(client, gid, EMPLOYEE_SCHEMA), 409, "duplicate_table")
    other = await new_group(client, "crm", "crm")
    assert (await post_schema(client, other, EMPLOYEE_SCHEMA)).status == 201


async def test_resource_type_clash_across_groups_is_409(client: Client) -> None:
    # prefix "_a" + table "b_c" and prefix "_a_b" + table "c" both make "_a_b_c"
    a = await new_group(client, "a", "_a")
    ab = await new_group(client, "ab", "_a_b")
    r = await post_schema(client, a, EMPLOYEE_SCHEMA, table="b_c")
    assert (await r.json())["resourceType"] == "_a_b_c"
    await error(
        await post_schema(client, ab, EMPLOYEE_SCHEMA, table="c"), 409, "duplicate_resource_type"
    )


async def test_invalid_table_is_400(client: Client) -> None:
    gid = await new_group(client)
    for table in ["Employee", "emp-loyee", "1emp", "", None, "a" * 40, "employee\n"]:
        r = await client.post(
            f"{G}/{gid}/schemas", json={"table": table, "schema": EMPLOYEE_SCHEMA}, headers=ADMIN
        )
        body = await error(r, 400, "invalid_table", table)
        assert body["pointer"] == "/table"


async def test_update_bumps_version_and_keeps_every_version(client: Client) -> None:
    gid = await new_group(client)
    assert (await post_schema(client, gid, EMPLOYEE_SCHEMA)).status == 201
    bodies = [EMPLOYEE_SCHEMA]
    for n in (2, 3):
        new = employee_schema(
            properties={**EMPLOYEE_SCHEMA["properties"], f"extra{n}": {"type": "string"}}
        )
        r = await client.put(f"{G}/{gid}/schemas/employee", json={"schema": new}, headers=ADMIN)
        assert r.status == 200, await r.text()
        body = await r.json()
        assert (body["version"], body["resourceType"]) == (n, "_directory_employee")
        assert body["schema"]["unevaluatedProperties"] is False
        bodies.append(new)
    r = await client.get(f"{G}/{gid}/schemas/employee/versions", headers=ADMIN)
    items = (await r.json())["items"]
    assert [v["version"] for v in items] == [1, 2, 3]
    for v, sent in zip(items, bodies, strict=True):
        assert v["schema"] == {**sent, "unevaluatedProperties": False}
    r = await client.get(f"{G}/{gid}/schemas/employee", headers=ADMIN)
    current = await r.json()
    assert current["version"] == 3 and "extra3" in current["schema"]["properties"]
    r = await client.get(f"{G}/{gid}/schemas", headers=ADMIN)
    assert [s["version"] for s in (await r.json())["items"]] == [3]


async def test_invalid_update_changes_nothing(client: Client) -> None:
    gid = await new_group(client)
    assert (await post_schema(client, gid, EMPLOYEE_SCHEMA)).status == 201
    r = await client.put(
        f"{G}/{gid}/schemas/employee", json={"schema": employee_schema(resmo=None)}, headers=ADMIN
    )
    await error(r, 400, "missing_resmo")
    r = await client.get(f"{G}/{gid}/schemas/employee/versions", headers=ADMIN)
    assert [v["version"] for v in (await r.json())["items"]] == [1]


async def test_update_of_unknown_table_is_404(client: Client) -> None:
    gid = await new_group(client)
    r = await client.put(f"{G}/{gid}/schemas/nope", json={"schema": EMPLOYEE_SCHEMA}, headers=ADMIN)
    await error(r, 404, "schema_not_found")
    r = await client.get(f"{G}/{gid}/schemas/nope/versions", headers=ADMIN)
    await error(r, 404, "schema_not_found")


@pytest.mark.parametrize(
    ("schema", "code", "pointer"),
    [
        ([], "schema_not_object", "/schema"),
        ({}, "schema_not_object", "/schema"),
        (None, "schema_not_object", "/schema"),
        (employee_schema(type="array"), "schema_root_not_object", "/schema/type"),
        (employee_schema(type=None), "schema_root_not_object", "/schema/type"),
        (
            employee_schema(**{"$schema": "http://json-schema.org/draft-07/schema#"}),
            "unsupported_draft",
            "/schema/$schema",
        ),
        (
            employee_schema(
                properties={
                    "employeeId": {"type": "object", "properties": {"x": {"type": "no-such-type"}}}
                }
            ),
            "invalid_schema",
            "/schema/properties/employeeId/properties/x/type",
        ),
        (employee_schema(resmo=None), "missing_resmo", "/schema/resmo"),
        (
            employee_schema(resmo={"name": "$.employee.username"}),
            "missing_resmo_id",
            "/schema/resmo/id",
        ),
        (employee_schema(resmo={"id": ""}), "invalid_resmo_path", "/schema/resmo/id"),
        (employee_schema(resmo={"id": "$.employeeId["}), "invalid_resmo_path", "/schema/resmo/id"),
        (employee_schema(resmo={"id": "$.a[*]"}), "resmo_path_not_singular", "/schema/resmo/id"),
        (employee_schema(resmo={"id": "$..a"}), "resmo_path_not_singular", "/schema/resmo/id"),
        (
            employee_schema(resmo={"id": "employeeId", "name": "$.employee.*"}),
            "resmo_path_not_singular",
            "/schema/resmo/name",
        ),
    ],
)
async def test_each_schema_rule_is_refused_with_its_code(
    client: Client, schema: Any, code: str, pointer: str
) -> None:
    gid = await new_group(client)
    body = await error(await post_schema(client, gid, schema), 400, code)
    assert body["pointer"] == pointer
    r = await client.get(f"{G}/{gid}/schemas", headers=ADMIN)
    assert (await r.json())["items"] == []


@pytest.mark.parametrize(
    "schema",
    [
        employee_schema(**{"$schema": None}),
        employee_schema(**{"$schema": "https://json-schema.org/draft/2020-12/schema"}),
        employee_schema(
            resmo={"id": "employeeId", "importantFields": ["$.employee[*]", "$..email"]}
        ),
        employee_schema(resmo={"id": "$.employeeId", "name": "employee.username"}),
        employee_schema(resmo={"id": "employeeId"}),
    ],
)
async def test_valid_variants_are_accepted(client: Client, schema: Any) -> None:
    gid = await new_group(client)
    r = await post_schema(client, gid, schema)
    assert r.status == 201, await r.text()
    assert (await r.json())["schema"]["resmo"] == schema["resmo"]


async def test_bare_id_path_selects_the_root_member(client: Client, seeded: Seeded) -> None:
    # the seed's "id": "employeeId" (bare) extracts $.employeeId
    r = await client.get(f"{G}/{seeded.group_id}/schemas/employee", headers=ADMIN)
    out = CompiledSchema((await r.json())["schema"]).extract({"employeeId": "E-1"})
    assert isinstance(out, Extracted) and out.id == "E-1"


async def test_schema_body_over_1_mib_is_413(client: Client) -> None:
    gid = await new_group(client)
    big = employee_schema(description="x" * (1 << 20))
    await error(await post_schema(client, gid, big), 413, "body_too_large")
    r = await client.put(f"{G}/{gid}/schemas/employee", json={"schema": big}, headers=ADMIN)
    await error(r, 413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the streaming limit
        yield b'{"table": "employee", "schema": {"description": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}}'

    r = await client.post(
        f"{G}/{gid}/schemas", data=chunks(), headers={**ADMIN, "Content-Type": "application/json"}
    )
    await error(r, 413, "body_too_large")
    # just under the limit is fine
    ok = employee_schema(description="x" * ((1 << 20) - 2000))
    assert (await post_schema(client, gid, ok)).status == 201


# ---- integrations and keys ------------------------------------------------------------------


async def test_create_integration_returns_the_key_once(client: Client, pool: asyncpg.Pool) -> None:
    gid = await new_group(client)
    r = await client.post(
        "/admin/v1/integrations", json={"name": "HR", "schemaGroup": gid}, headers=ADMIN
    )
    assert r.status == 201
    created = await r.json()
    assert (created["name"], created["schemaGroup"]) == ("HR", gid)
    plaintext = created["ingestKey"]
    parts = keys.split_key(plaintext)
    assert parts is not None and parts[0] == created["keyId"]
    secret = parts[1]
    assert plaintext.startswith("igk_") and len(secret) >= 43  # base64url of >= 32 bytes

    listings = [
        await client.get("/admin/v1/integrations", headers=ADMIN),
        await client.get(f"/admin/v1/integrations/{created['id']}/keys", headers=ADMIN),
    ]
    for listing in listings:
        text = await listing.text()
        assert listing.status == 200
        assert secret not in text and plaintext not in text
    items = (await listings[0].json())["items"]
    assert [(i["id"], i["name"], i["schemaGroup"]) for i in items] == [(created["id"], "HR", gid)]
    assert "ingestKey" not in items[0]
    key_items = (await listings[1].json())["items"]
    assert [(k["keyId"], k["revokedAt"]) for k in key_items] == [(created["keyId"], None)]

    row = await pool.fetchrow("SELECT * FROM ingest_keys WHERE id = $1", created["keyId"])
    assert row is not None
    assert bytes(row["secret_sha256"]) == hashlib.sha256(secret.encode()).digest()
    # neither the key nor its secret (as text or as bytes) is stored anywhere
    for table in TABLES:
        for dump in await pool.fetch(f"SELECT row_to_json(t)::text AS j FROM {table} t"):
            text = dump["j"]
            assert plaintext not in text and secret not in text
            assert secret.encode().hex() not in text


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"name": "HR", "schemaGroup": "00000000-0000-0000-0000-000000000000"},
            404,
            "schema_group_not_found",
        ),
        ({"name": "HR", "schemaGroup": "nope"}, 404, "schema_group_not_found"),
        ({"name": "HR"}, 400, "invalid_schema_group"),
        ({"name": "", "schemaGroup": "x"}, 400, "invalid_name"),
    ],
)
async def test_bad_integration_is_refused(
    client: Client, body: dict[str, Any], status: int, code: str
) -> None:
    r = await client.post("/admin/v1/integrations", json=body, headers=ADMIN)
    await error(r, status, code)


async def test_second_key_and_revocation(client: Client, seeded: Seeded) -> None:
    base = f"/admin/v1/integrations/{seeded.integration_id}/keys"
    r = await client.post(base, headers=ADMIN)
    assert r.status == 201
    second = await r.json()
    assert second["ingestKey"] != seeded.key and second["keyId"] != seeded.key_id
    assert (await ingest(client, seeded.key)).status == 202
    assert (await ingest(client, second["ingestKey"])).status == 202

    r = await client.delete(f"{base}/{seeded.key_id}", headers=ADMIN)
    assert r.status == 204
    await error(await ingest(client, seeded.key), 401, "invalid_ingest_key")
    assert (await ingest(client, second["ingestKey"])).status == 202

    r = await client.get(base, headers=ADMIN)
    listed = {k["keyId"]: k["revokedAt"] for k in (await r.json())["items"]}
    assert listed[seeded.key_id] is not None and listed[second["keyId"]] is None
    # revoking again is idempotent; unknown keys are 404
    assert (await client.delete(f"{base}/{seeded.key_id}", headers=ADMIN)).status == 204
    await error(await client.delete(f"{base}/0000", headers=ADMIN), 404, "key_not_found")


async def test_key_cannot_be_revoked_through_another_integration(
    client: Client, seeded: Seeded
) -> None:
    r = await client.post(
        "/admin/v1/integrations",
        json={"name": "other", "schemaGroup": seeded.group_id},
        headers=ADMIN,
    )
    other = (await r.json())["id"]
    r = await client.delete(f"/admin/v1/integrations/{other}/keys/{seeded.key_id}", headers=ADMIN)
    await error(r, 404, "key_not_found")
    assert (await ingest(client, seeded.key)).status == 202


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_ingest_key"),
        ({"X-Ingest-Key": "igk_0000_secret"}, "invalid_ingest_key"),
        ({"X-Ingest-Key": "not-a-key"}, "invalid_ingest_key"),
    ],
)
async def test_ingest_without_a_valid_key_is_401(
    client: Client, seeded: Seeded, headers: dict[str, str], code: str
) -> None:
    r = await client.post(EVENT, json={"employeeId": "e1"}, headers=headers)
    await error(r, 401, code)


async def test_forged_secret_for_a_real_key_id_is_401(client: Client, seeded: Seeded) -> None:
    forged = f"igk_{seeded.key_id}_{keys.new_key().plaintext.rsplit('_', 1)[1]}"
    await error(await ingest(client, forged), 401, "invalid_ingest_key")


async def test_every_process_sees_a_revocation_through_postgresql_alone(
    client: Client, seeded: Seeded, pool: asyncpg.Pool, redis: Redis
) -> None:
    """Another process's cache (a second gateway, a worker) sees a revocation even if
    Redis lost everything meanwhile: the generation it polls is bumped in PostgreSQL, in
    the transaction of the write itself."""
    cache = RegistryCache(RegistryStore(pool), 100)
    await cache.refresh(force=True)
    assert cache.snapshot.authenticate(seeded.key) is not None
    await redis.flushdb()
    base = f"/admin/v1/integrations/{seeded.integration_id}/keys"
    assert (await client.delete(f"{base}/{seeded.key_id}", headers=ADMIN)).status == 204
    await cache.refresh()
    assert cache.snapshot.authenticate(seeded.key) is None


async def test_every_registry_table_bumps_the_generation(pool: asyncpg.Pool) -> None:
    """The triggers cover each table an admin write can change (a missed one would be
    a change other processes never load)."""
    gen = "SELECT generation FROM registry_state WHERE id = 1"
    before = await pool.fetchval(gen)
    store = RegistryStore(pool)
    group = await store.create_group("gen", "_gen")
    schema = await store.create_schema(group.id, "t", prepare_schema(EMPLOYEE_SCHEMA), None)
    integ = await store.create_integration("gen", group.id)
    seen = [before, await pool.fetchval(gen)]
    tables = ["schema_groups", "schemas", "schema_versions", "integrations", "ingest_keys"]
    for table in tables:
        await pool.execute(f"UPDATE {table} SET created_at = created_at WHERE false")
        seen.append(await pool.fetchval(gen))
    assert seen == sorted(set(seen)), seen  # every statement moved it, none went back
    assert schema and integ


async def test_admin_writes_work_while_redis_is_down(
    settings: Settings, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    """Admin writes are PostgreSQL only: an outage of Redis fails ingestion (503), not
    the registry, and the change is answered as saved."""
    rd = EmbeddedRedis(tmp_path / "redis")
    try:
        app = create_app(replace(settings, redis_url=rd.start()))
        async with TestClient(TestServer(app)) as c:
            rd.stop()
            r = await c.post("/admin/v1/schema-groups", json={"name": "x", "prefix": "_x"},
                             headers=ADMIN)  # fmt: skip
            assert r.status == 201, await r.text()
            gid = (await r.json())["id"]
            r = await c.post("/admin/v1/integrations", json={"name": "i", "schemaGroup": gid},
                             headers=ADMIN)  # fmt: skip
            assert r.status == 201, await r.text()
    finally:
        rd.stop()
    assert await pool.fetchval("SELECT count(*) FROM schema_groups WHERE prefix = '_x'") == 1


# ---- health -----------------------------------------------------------------------------------


async def test_healthz_ok(client: Client) -> None:
    r = await client.get("/healthz")
    assert r.status == 200
    assert await r.json() == {"status": "ok"}


async def test_healthz_503_when_redis_goes_away(settings: Settings, tmp_path: Path) -> None:
    # stop a Redis the running gateway was using
    rd = EmbeddedRedis(tmp_path / "redis")
    try:
        url = rd.start()
        app = create_app(replace(settings, redis_url=url))
        async with TestClient(TestServer(app)) as c:
            assert (await c.get("/healthz")).status == 200
            rd.stop()
            r = await c.get("/healthz")
            body = await error(r, 503, "unhealthy")
            assert "redis" in body["message"]
            assert "postgres" not in body["message"]
    finally:
        rd.stop()


async def test_gateway_starts_without_redis_and_says_so(settings: Settings, seeded: Seeded) -> None:
    """Started while Redis is down, the gateway serves: health is 503, an ingest is 503
    (retry), the admin API works; nothing is accepted that could be lost."""
    from shared.embedded import free_port

    app = create_app(replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    async with TestClient(TestServer(app)) as c:
        body = await error(await c.get("/healthz"), 503, "unhealthy")
        assert "redis" in body["message"]
        r = await c.post(
            "/integration/custom-data/event/employee",
            json={"employeeId": "e1"},
            headers={"X-Ingest-Key": seeded.key},
        )
        await error(r, 503, "unavailable")
        assert (await c.get("/admin/v1/schema-groups", headers=ADMIN)).status == 200


async def test_a_stage_refuses_a_database_missing_a_migration(pool: asyncpg.Pool) -> None:
    from shared.errors import ConfigError
    from shared.pg.migrate import require_migrated

    await require_migrated(pool)  # the test database is current
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("DELETE FROM schema_migrations WHERE version = 3")
            with pytest.raises(ConfigError, match=r"\[3\].*ingestd migrate"):
                await require_migrated(conn)
        finally:
            await tx.rollback()
