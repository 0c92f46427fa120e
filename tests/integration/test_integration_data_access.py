"""Integration data: who may see what (vendor ids, key isolation), the lifecycle across a
resource's delete and re-create, ``?expand=integrationData``, the change history and the
README's analyst SQL, and the self link behind a proxy."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from shared.config import Settings
from shared.integration_data import slug
from shared.pg.migrate import RECORD_SQL, migrate, migration_files
from tests.conftest import ADMIN, InlinePipeline, Seeded, seed_directory
from tests.helpers import delete, post

RT = "_directory_employee"
Client = TestClient[Any, Any]
README = Path(__file__).resolve().parents[2] / "README.md"


def inst(vendor: str, rid: str = "e1", rt: str = RT) -> str:
    return f"/api/v1/resources/{rt}/{rid}/integrationdata/{vendor}/"


def coll(rid: str = "e1") -> str:
    return f"/api/v1/resources/{RT}/{rid}/integrationdata/"


async def integration(client: Client, gid: str, name: str, **extra: Any) -> dict[str, Any]:
    r = await client.post(
        "/admin/v1/integrations", json={"name": name, "schemaGroup": gid, **extra}, headers=ADMIN
    )
    body = await r.json()
    assert r.status == 201, body
    return dict(body)


def key(body: dict[str, Any] | Seeded) -> dict[str, str]:
    k = body.key if isinstance(body, Seeded) else body["ingestKey"]
    return {"X-Ingest-Key": k}


async def test_vendor_ids_of_integrations(client: Client, seeded: Seeded) -> None:
    listed = await (await client.get("/admin/v1/integrations", headers=ADMIN)).json()
    assert [i["vendorId"] for i in listed["items"]] == ["hr"]  # its name "HR", slugged
    again = await integration(client, seeded.group_id, "HR")
    assert again["vendorId"] == "hr-2"
    named = await integration(client, seeded.group_id, "Acme Ltd. (EU)")
    assert named["vendorId"] == "acme-ltd.-eu"
    given = await integration(client, seeded.group_id, "x", vendorId="AcmeLtd")
    assert given["vendorId"] == "acmeltd"
    r = await client.post(
        "/admin/v1/integrations",
        json={"name": "y", "schemaGroup": seeded.group_id, "vendorId": "ACMELTD"},
        headers=ADMIN,
    )
    assert r.status == 409 and (await r.json())["code"] == "duplicate_vendor_id"
    for bad in ("-x", 3, "a b", "a" * 65):
        r = await client.post(
            "/admin/v1/integrations",
            json={"name": "y", "schemaGroup": seeded.group_id, "vendorId": bad},
            headers=ADMIN,
        )
        got = await r.json()
        assert r.status == 400 and got["code"] == "invalid_vendor_id", got
        assert got["pointer"] == "/vendorId"


async def test_keys_see_only_their_own_vendor(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    acme = await integration(client, seeded.group_id, "Acme", vendorId="acmeltd")
    other = await seed_directory(client, prefix="_other", table="thing")
    await post(client, seeded, {"employeeId": "e1"})
    await pipeline.run()
    hr = key(seeded)
    # each key writes its own vendor's map; the admin token writes any vendor's
    assert (await client.put(inst("hr"), json={"A": "hr"}, headers=hr)).status == 201
    r = await client.put(inst("AcmeLtd"), json={"VendorID": "AcmeLtd"}, headers=key(acme))
    assert r.status == 201
    r = await client.put(inst("third"), json={"A": "t"}, headers=ADMIN)
    assert r.status == 201
    r = await client.put(inst("hr"), json={"B": "x"}, headers=key(acme))
    assert r.status == 404 and (await r.json())["code"] == "integration_data_not_found"
    for vendor in ("acmeltd", "third"):
        r = await client.get(inst(vendor), headers=hr)
        assert r.status == 404 and (await r.json())["code"] == "integration_data_not_found"
    assert (await (await client.get(inst("hr"), headers=hr)).json())["A"] == "hr"
    # the collection lists only the key's own link; the admin token sees all three
    r = await client.get(coll(), params={"expand": "all"}, headers=key(acme))
    links = (await r.json())["Link"]
    assert [k.get("title") for k in links] == ["AcmeLtd", None]
    assert links[0]["IntegrationData"]["VendorID"] == "AcmeLtd"
    r = await client.get(coll(), headers=ADMIN)
    assert [k.get("title") for k in (await r.json())["Link"]] == ["AcmeLtd", "hr", "third", None]
    # a key of another schema group does not see this group's tables at all
    r = await client.get(inst("hr"), headers=key(other))
    assert r.status == 404 and (await r.json())["code"] == "resource_type_not_found"
    r = await client.get(coll(), headers=key(other))
    assert r.status == 404 and (await r.json())["code"] == "resource_type_not_found"
    # no credentials, a wrong key
    assert (await client.get(inst("hr"))).status == 401
    assert (await client.get(inst("hr"), headers={"X-Ingest-Key": "nope"})).status == 401
    # the history says who wrote what
    rows = await pool.fetch(
        "SELECT vendor_id, actor, integration_id::text AS iid FROM integration_data_changes"
        " ORDER BY id"
    )
    assert [(r["vendor_id"], r["actor"], r["iid"]) for r in rows] == [
        ("hr", "integration", seeded.integration_id),
        ("acmeltd", "integration", acme["id"]),
        ("third", "admin", None),
    ]


async def test_lifecycle_across_delete_and_recreate(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    r = await client.put(inst("acme"), json={"ID": "x1"}, headers=ADMIN)
    assert r.status == 404 and (await r.json())["code"] == "resource_not_found"
    await post(client, seeded, {"employeeId": "e1"})
    await pipeline.run()
    r = await client.put(inst("acme"), json={"ID": "x1"}, headers=ADMIN)
    assert r.status == 201
    etag = r.headers["ETag"]
    await delete(client, seeded, "e1")
    await pipeline.run()
    # hidden while the resource is gone (and no write to it)
    for path in (inst("acme"), coll()):
        r = await client.get(path, headers=ADMIN)
        assert r.status == 404 and (await r.json())["code"] == "resource_not_found", path
    r = await client.put(inst("acme"), json={"ID": "x2"}, headers=ADMIN)
    assert r.status == 404 and (await r.json())["code"] == "resource_not_found"
    # the same id re-created: the external reference is there again, unchanged
    await post(client, seeded, {"employeeId": "e1"})
    await pipeline.run()
    r = await client.get(inst("acme"), headers=ADMIN)
    assert r.status == 200 and r.headers["ETag"] == etag
    assert (await r.json())["ID"] == "x1"
    # groupKey is part of the resource's key
    r = await client.get(inst("acme"), params={"groupKey": "g"}, headers=ADMIN)
    assert r.status == 404 and (await r.json())["code"] == "resource_not_found"


async def test_resource_read_expands_integration_data(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await post(client, seeded, {"employeeId": "e1"})
    await pipeline.run()
    path = f"/api/v1/resources/{RT}/e1"
    body = await (
        await client.get(path, params={"expand": "integrationData"}, headers=ADMIN)
    ).json()
    assert body["integrationData"] == {}
    await client.put(inst("b"), json={"VendorID": "B", "X": "1"}, headers=ADMIN)
    await client.put(inst("a"), json={"Y": "2"}, headers=ADMIN)
    body = await (
        await client.get(path, params={"expand": "integrationData"}, headers=ADMIN)
    ).json()
    assert body["integrationData"] == {"a": {"Y": "2"}, "b": {"VendorID": "B", "X": "1"}}
    assert "integrationData" not in await (await client.get(path, headers=ADMIN)).json()
    r = await client.get(path, params={"expand": "other"}, headers=ADMIN)
    assert r.status == 400 and (await r.json())["pointer"] == "/query/expand"


def _readme_sql(title: str) -> str:
    text = README.read_text()
    i = text.index(title)
    m = re.search(r"```sql\n(.*?)```", text[i:], re.S)
    assert m, title
    return m.group(1)


async def test_readme_analyst_sql_runs(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    for rid in ("e1", "e2", "e3", "e4"):
        await post(client, seeded, {"employeeId": rid})
    await pipeline.run()
    for rid, flag in (("e1", "true"), ("e2", "false"), ("e3", "true"), ("e4", "true")):
        r = await client.put(inst("acme", rid), json={"SuppressIntegration": flag}, headers=ADMIN)
        assert r.status == 201
    r = await client.put(inst("acme", "e3"), json={"SuppressIntegration": "false"}, headers=ADMIN)
    assert r.status == 200
    r = await client.put(inst("other", "e2"), json={"SuppressIntegration": "true"}, headers=ADMIN)
    assert r.status == 201
    await delete(client, seeded, "e1")
    await pipeline.run()
    async with pool.acquire() as conn:
        rows = await conn.fetch(_readme_sql("Resources whose vendor suppresses integration"))
        # e1 is deleted (its map is kept, hidden), e2 is another vendor's, e3 switched back
        assert [(r["resource_type"], r["group_key"], r["resource_id"]) for r in rows] == [
            (RT, "", "e4")
        ]
        history = await conn.fetch(_readme_sql("Changes of one vendor's maps"))
        assert [(r["resource_id"], r["old_data"], r["new_data"], r["actor"]) for r in history] == [
            ("e1", None, {"SuppressIntegration": "true"}, "admin"),
            ("e2", None, {"SuppressIntegration": "false"}, "admin"),
            ("e3", None, {"SuppressIntegration": "true"}, "admin"),
            ("e4", None, {"SuppressIntegration": "true"}, "admin"),
            ("e3", {"SuppressIntegration": "true"}, {"SuppressIntegration": "false"}, "admin"),
        ]


async def test_self_link_honours_forwarded_headers_only_when_trusted(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, settings: Settings
) -> None:
    await post(client, seeded, {"employeeId": "e1"})
    await pipeline.run()
    fwd = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.org"}
    await client.put(inst("acme"), json={"A": "1"}, headers=ADMIN)
    r = await client.get(inst("acme"), headers=ADMIN | fwd)
    href = (await r.json())["Link"][0]["href"]
    assert href == f"{str(client.make_url('')).rstrip('/')}{inst('acme')}"
    trusted = TestServer(create_app(replace(settings, trust_proxy=True)))
    async with TestClient(trusted) as c2:
        r = await c2.get(inst("acme"), params={"groupKey": ""}, headers=ADMIN | fwd)
        assert (await r.json())["Link"][0]["href"] == f"https://api.example.org{inst('acme')}"
        r = await c2.get(coll(), params={"top": "5"}, headers=ADMIN | fwd)
        self_link = (await r.json())["Link"][-1]
        assert self_link == {
            "rel": "self",
            "type": "application/json",
            "href": f"https://api.example.org{coll()}?top=5",
        }


async def test_migration_0008_gives_existing_integrations_a_vendor_id(scratch_dsn: str) -> None:
    conn = await asyncpg.connect(scratch_dsn)
    try:
        for number, name, sql in migration_files():
            if number < 8:
                await conn.execute(sql)
                await conn.execute(RECORD_SQL, number, name)
        gid = await conn.fetchval(
            "INSERT INTO schema_groups (name, prefix) VALUES ('g', '_g') RETURNING id"
        )
        for n, name in enumerate(["HR", "HR", "Acme Ltd. (EU)", "---", "Zoë"]):
            await conn.execute(
                "INSERT INTO integrations (name, group_id, created_at)"
                " VALUES ($1, $2, now() + $3 * interval '1 second')",
                name,
                gid,
                n,
            )
        assert (await migrate(scratch_dsn))[0] == "0008_integration_data.sql"
        rows = await conn.fetch("SELECT id::text, vendor_id FROM integrations ORDER BY created_at")
    finally:
        await conn.close()
    got = [r["vendor_id"] for r in rows]
    suffix = rows[1]["id"].replace("-", "")[:8]
    assert got == ["hr", f"hr-{suffix}", "acme-ltd.-eu", "integration", "zo"]
    # the gateway's default for a new integration is the same rule
    assert [slug(n) for n in ("HR", "Acme Ltd. (EU)", "---", "Zoë")] == [
        "hr",
        "acme-ltd.-eu",
        "integration",
        "zo",
    ]
