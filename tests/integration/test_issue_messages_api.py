"""Messages and pointers as a client sees them (admin answers, receipts, sync issues), and
the README's one-line change that makes a nested object strict."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN, EMPLOYEE_SCHEMA, InlinePipeline, Seeded, seed_directory
from tests.helpers import post, wait_receipt

Client = TestClient[Any, Any]
README = Path(__file__).resolve().parents[2] / "README.md"
G = "/admin/v1/schema-groups"


def readme_one_liner() -> dict[str, Any]:
    """The JSON line the README gives to make a nested object strict, as a schema member."""
    text = README.read_text()
    after = text[text.index("To make a nested\n  object strict too") :]
    block = re.search(r"```json\n(.*?)\n\s*```", after, re.S)
    assert block is not None and block.group(1).count("\n") == 0, "one line"
    member: dict[str, Any] = orjson.loads("{" + block.group(1).strip() + "}")
    return member


async def test_a_missing_prefix_says_so(client: Client) -> None:
    r = await client.post(G, json={"name": "x"}, headers=ADMIN)
    body = await r.json()
    assert r.status == 400 and body["code"] == "invalid_prefix" and body["pointer"] == "/prefix"
    assert body["message"].startswith("prefix is missing") and "None" not in body["message"]


async def test_receipts_and_sync_issues_carry_the_rule(
    client: Client, pipeline: InlinePipeline
) -> None:
    props = {**EMPLOYEE_SCHEMA["properties"], "mail": {"type": "string", "format": "email"}}
    who = await seed_directory(client, schema={**EMPLOYEE_SCHEMA, "properties": props})
    bad_mail = await post(client, who, {"employeeId": "a", "mail": "not-an-email"})
    no_id = await post(client, who, {"active": True})
    nul = await post(client, who, {"employeeId": "b", "employee": {"username": "x\u0000y"}})
    await pipeline.run()
    got = {}
    for eid in (bad_mail, no_id, nul):
        rc = await wait_receipt(client, who, eid)
        got[eid] = [(i["code"], i["pointer"], i["message"]) for i in rc["issues"]]
    assert got[bad_mail] == [
        ("invalid_format", "/mail",
         '"not-an-email" is not a valid email: An email address must have an @-sign.')
    ]  # fmt: skip
    assert [(c, p) for c, p, _ in got[no_id]] == [("missing_id", ""), ("missing_field", "")]
    assert [(c, p) for c, p, _ in got[nul]] == [("invalid_character", "/employee/username")]
    r = await client.get("/api/v1/sync-issues", headers=ADMIN)
    stored = {(i["eventId"], i["code"], i["pointer"]) for i in (await r.json())["items"]}
    assert (no_id, "missing_id", "") in stored
    assert (nul, "invalid_character", "/employee/username") in stored


async def test_the_readme_one_liner_makes_a_nested_object_strict(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    doc = {"employeeId": "e1", "employee": {"username": "ann", "nickname": "x"}}
    before = await post(client, seeded, doc)  # the seed's rule: nested fields are open
    await pipeline.run()
    assert (await wait_receipt(client, seeded, before))["status"] == "applied"
    schema: dict[str, Any] = {**EMPLOYEE_SCHEMA, "properties": dict(EMPLOYEE_SCHEMA["properties"])}
    schema["properties"]["employee"] = {**schema["properties"]["employee"], **readme_one_liner()}
    r = await client.put(
        f"{G}/{seeded.group_id}/schemas/employee", json={"schema": schema}, headers=ADMIN
    )
    assert r.status == 200, await r.text()
    after = await post(client, seeded, {**doc, "employeeId": "e2"})
    await pipeline.run()
    rc = await wait_receipt(client, seeded, after)
    assert rc["status"] == "rejected", rc
    assert [(i["code"], i["pointer"]) for i in rc["issues"]] == [
        ("unknown_field", "/employee/nickname")
    ]
