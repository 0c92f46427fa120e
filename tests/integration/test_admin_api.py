"""Admin API against real PostgreSQL and Redis: auth, schema groups and schemas (integrations
and keys: test_admin_keys.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from shared.schema_rules import CompiledSchema, Extracted
from tests.conftest import ADMIN, EMPLOYEE_SCHEMA, Seeded
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
