"""Admin API: integrations and their ingest keys (creation, revocation, who sees it), the
registry generation, admin writes without Redis, health and the migrations check."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from services.gateway.app import create_app
from shared import keys
from shared.config import Settings
from shared.embedded import EmbeddedRedis
from shared.pg.registry import RegistryCache, RegistryStore
from shared.schema_rules import prepare_schema
from tests.conftest import ADMIN, EMPLOYEE_SCHEMA, TABLES, Seeded
from tests.integration.test_admin_api import EVENT, Client, error, ingest, new_group

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
