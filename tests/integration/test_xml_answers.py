"""``Accept: application/xml``: every API family answers XML carrying its JSON's data.

Each request is sent twice, once with the default Accept and once asking for XML; the
XML must parse strictly and read back (tests/xmlread.py, the README's rules) to exactly
the JSON answer. Admin POSTs cannot be repeated, so their XML answer is compared with the
JSON the API gives for the same object afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from shared.schema_advice import advise
from tests.conftest import ADMIN, EMPLOYEE_SCHEMA, InlinePipeline, Seeded, seed_directory
from tests.helpers import INGEST, post, post_bulk
from tests.xmlread import answer

Client = TestClient[Any, Any]
XML = {"Accept": "application/xml"}
G = "/admin/v1/schema-groups"
SCHEMA: dict[str, Any] = {
    **EMPLOYEE_SCHEMA,
    "properties": {
        **EMPLOYEE_SCHEMA["properties"],
        "tags": {"type": "array", "items": {"type": "string"}},
        "grid": {"type": "array", "items": {"type": "array"}},
        "note": {"type": ["string", "null"]},
        "score": {"type": "number"},
    },
}
DOC = {
    "employeeId": "e1",
    "active": True,
    "employee": {"username": "ann", "email": "ann@example.com", "age": 41},
    "tags": [],
    "grid": [[1, 2], []],
    "note": None,
    "score": 2.5,
}


async def same(
    c: Client, path: str, headers: dict[str, str], root: str, status: int = 200, **params: str
) -> dict[str, Any]:
    """GET ``path`` as JSON and as XML: the same status, the same data; the JSON."""
    rj = await c.get(path, headers=headers, params=params)
    rx = await c.get(path, headers={**headers, **XML}, params=params)
    assert rj.status == rx.status == status, (path, await rj.text(), await rx.text())
    assert rj.content_type == "application/json" and rx.content_type == "application/xml"
    assert rx.charset == "utf-8"
    body: dict[str, Any] = await rj.json()
    assert answer(await rx.read(), body, root) == body, (path, await rx.text())
    return body


@pytest.fixture
async def filled(client: Client, pipeline: InlinePipeline) -> Seeded:
    """A group with the schema above, one resource with two versions, one rejection."""
    who = await seed_directory(client, schema=SCHEMA)
    await post(client, who, DOC, "acme")
    await post(client, who, {**DOC, "tags": ["a"], "note": "n"}, "acme", event="sync")
    await post(client, who, {"employeeId": "bad", "age": "x"}, "acme")
    await pipeline.run()
    return who


async def test_admin_answers_xml(client: Client, filled: Seeded) -> None:
    gid = filled.group_id
    await same(client, G, ADMIN, "schemaGroups")
    await same(client, f"{G}/{gid}", ADMIN, "schemaGroup")
    await same(client, f"{G}/{gid}/schemas", ADMIN, "schemas")
    schema = await same(client, f"{G}/{gid}/schemas/employee", ADMIN, "schema")
    assert schema["schema"]["unevaluatedProperties"] is False  # a boolean read back
    await same(client, f"{G}/{gid}/schemas/employee/versions", ADMIN, "schemas")
    await same(client, "/admin/v1/integrations", ADMIN, "integrations")
    r = await client.post(
        f"/admin/v1/integrations/{filled.integration_id}/keys", headers=XML | ADMIN
    )
    assert r.status == 201 and r.content_type == "application/xml"
    issued = answer(await r.read(), {"keyId": "", "ingestKey": "", "createdAt": ""}, "key")
    await client.delete(
        f"/admin/v1/integrations/{filled.integration_id}/keys/{issued['keyId']}", headers=ADMIN
    )
    keys = await same(client, f"/admin/v1/integrations/{filled.integration_id}/keys", ADMIN, "keys")
    revoked = {k["keyId"]: k["revokedAt"] for k in keys["items"]}
    assert revoked[filled.key_id] is None and revoked[issued["keyId"]] is not None  # nil read


async def test_admin_creations_answer_xml(client: Client) -> None:
    r = await client.post(G, json={"name": "x", "prefix": "_x"}, headers=XML | ADMIN)
    assert r.status == 201 and r.content_type == "application/xml"
    raw = await r.read()
    gid = answer(raw, {"id": ""}, "schemaGroup")["id"]
    got = await (await client.get(f"{G}/{gid}", headers=ADMIN)).json()
    assert answer(raw, got, "schemaGroup") == got
    body = {"table": "employee", "schema": SCHEMA, "title": "People"}
    r = await client.post(f"{G}/{gid}/schemas", json=body, headers=XML | ADMIN)
    assert r.status == 201
    got = await (await client.get(f"{G}/{gid}/schemas/employee", headers=ADMIN)).json()
    got["warnings"] = advise(SCHEMA)  # the create/update answer carries the schema advice
    assert answer(await r.read(), got, "schema") == got
    r = await client.put(f"{G}/{gid}/schemas/employee", json=body, headers=XML | ADMIN)
    got = await (await client.get(f"{G}/{gid}/schemas/employee", headers=ADMIN)).json()
    assert r.status == 200 and got["version"] == 2
    got["warnings"] = advise(SCHEMA)
    assert answer(await r.read(), got, "schema") == got
    r = await client.post(
        "/admin/v1/integrations", json={"name": "HR", "schemaGroup": gid}, headers=XML | ADMIN
    )
    assert r.status == 201
    shape = {"id": "", "name": "", "schemaGroup": "", "createdAt": "", "ingestKey": "", "keyId": ""}
    created = answer(await r.read(), shape, "integration")
    listed = await (await client.get("/admin/v1/integrations", headers=ADMIN)).json()
    assert {k: v for k, v in created.items() if k not in ("ingestKey", "keyId")} in listed["items"]
    r = await client.post(
        f"{INGEST}/event/employee", json=DOC, headers={"X-Ingest-Key": created["ingestKey"]}
    )
    assert r.status == 202  # the key read from XML works


async def test_read_api_answers_xml(client: Client, filled: Seeded) -> None:
    rt = "_directory_employee"
    page = await same(client, f"/api/v1/resources/{rt}", ADMIN, "resources", groupKey="acme")
    assert [r["data"]["tags"] for r in page["items"]] == [["a"]] and page["next"] is None
    await same(client, f"/api/v1/resources/{rt}", ADMIN, "resources", allGroups="true", limit="1")
    one = await same(client, f"/api/v1/resources/{rt}/e1", ADMIN, "resource", groupKey="acme")
    assert one["data"]["grid"] == [[1, 2], []] and one["data"]["score"] == 2.5
    hist = await same(
        client, f"/api/v1/resources/{rt}/e1/history", ADMIN, "history", groupKey="acme"
    )
    assert [h["event"] for h in hist["items"]] == [None, "sync"] and hist["items"][1]["patch"]
    issues = await same(client, "/api/v1/sync-issues", ADMIN, "syncIssues")
    assert issues["items"] and issues["next"] is None


async def test_receipts_and_sessions_answer_xml(
    client: Client, filled: Seeded, pipeline: InlinePipeline
) -> None:
    h = filled.headers
    eid = await post(client, filled, DOC, "other")
    pending = await same(client, f"{INGEST}/events/{eid}", h, "receipt")
    assert pending["status"] == "pending" and pending["ignored"] == [] and pending["issues"] == []
    r = await client.delete(
        f"{INGEST}/employee",
        params={"resourceIds": "e1,nope", "groupKey": "other"},
        headers=XML | h,
    )
    assert r.status == 202 and r.content_type == "application/xml"
    deleted = answer(await r.read(), {"eventId": ""})["eventId"]
    bad = await post(client, filled, {"active": "no"}, "other")
    await pipeline.run()
    applied = await same(client, f"{INGEST}/events/{eid}", h, "receipt")
    assert applied["status"] == "applied" and applied["ignored"] == [] and applied["issues"] == []
    gone = await same(client, f"{INGEST}/events/{deleted}", h, "receipt")
    assert gone["ignored"] == ["nope"]
    rejected = await same(client, f"{INGEST}/events/{bad}", h, "receipt")
    assert {i["code"] for i in rejected["issues"]} >= {"missing_id", "schema_violation"}
    opened = await post_bulk(client, filled, [DOC], "groupKey=s&session=s1&part=1")
    status = await same(
        client, f"{INGEST}/bulk-event/employee/sessions/s1", h, "session", groupKey="s"
    )
    assert status["eventId"] == opened["eventId"] and status["partsReceived"] == 1
    session = await same(client, f"{INGEST}/events/{opened['eventId']}", h, "receipt")
    assert session["status"] == "pending" and session["session"]["id"] == "s1"


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("GET", "/api/v1/sync-issues?limit=0", ADMIN, 400, "invalid_parameter"),
        ("GET", G, {}, 401, "unauthorized"),
        ("GET", f"{G}/00000000-0000-0000-0000-000000000000", ADMIN, 404, "schema_group_not_found"),
        ("GET", "/nowhere", {}, 404, "not_found"),
        ("PATCH", G, ADMIN, 405, "method_not_allowed"),
        ("POST", G, ADMIN, 400, "invalid_json"),
    ],
)
async def test_errors_answer_xml(
    client: Client, method: str, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    rj = await client.request(method, path, headers=headers, data=b"{")
    rx = await client.request(method, path, headers={**headers, **XML}, data=b"{")
    assert rj.status == rx.status == status and rx.content_type == "application/xml"
    body = await rj.json()
    assert body["code"] == code and answer(await rx.read(), body, "error") == body


async def test_health_answers_xml(client: Client) -> None:
    await same(client, "/livez", {}, "health")
    await same(client, "/healthz", {}, "health")


@pytest.mark.parametrize(
    ("accept", "xml"),
    [
        ("text/xml", True),
        ("application/json;q=0.5, application/xml", True),
        ("application/xml;q=0.5, application/json", False),
        ("application/xml, application/json", False),  # a tie: JSON
        ("*/*", False),
    ],
)
async def test_accept_decides(client: Client, accept: str, xml: bool) -> None:
    r = await client.get(G, headers={**ADMIN, "Accept": accept})
    assert r.status == 200
    assert r.content_type == ("application/xml" if xml else "application/json")


async def test_the_reader_notices_a_dropped_element(client: Client, filled: Seeded) -> None:
    """The comparison can fail: an XML answer without its ``next`` reads back different."""
    body = await same(client, "/api/v1/sync-issues", ADMIN, "syncIssues")
    xml = await (await client.get("/api/v1/sync-issues", headers=ADMIN | XML)).read()
    assert b'<next xsi:nil="true"/>' in xml
    assert answer(xml.replace(b'<next xsi:nil="true"/>', b""), body, "syncIssues") != body
