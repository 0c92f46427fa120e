"""Titles (issue 14, Endgrate): a table's title is unique in its schema group, can never be
read as another table, and names the table in place of its name in every ingest, read
and admin URL (percent-encoded, case-sensitive)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN, EMPLOYEE_SCHEMA, InlinePipeline, Seeded, seed_directory
from tests.helpers import INGEST, emp, key_headers, receipt
from tests.integration.test_admin_api import error, new_group
from tests.integration.test_sources_admin import SOURCES, new_spec, ok, source_body

Client = TestClient[Any, Any]
G = "/admin/v1/schema-groups"
TITLE = "Company Person"
#: titles as a URL carries them: a space, a slash, non-ASCII, a percent sign
TITLES = ["Company Person", "HR/People", "Société", "100% staff"]


def url(title: str) -> str:
    """A title as one path segment (every reserved character percent-encoded)."""
    return quote(title, safe="")


async def create(
    c: Client, gid: str, table: str, title: str | None = None, schema: Any = None
) -> ClientResponse:
    body: dict[str, Any] = {"table": table, "schema": schema or EMPLOYEE_SCHEMA}
    if title is not None:
        body["title"] = title
    return await c.post(f"{G}/{gid}/schemas", json=body, headers=ADMIN)


async def put(c: Client, gid: str, table: str, title: str | None = None) -> ClientResponse:
    body: dict[str, Any] = {"schema": EMPLOYEE_SCHEMA}
    if title is not None:
        body["title"] = title
    return await c.put(f"{G}/{gid}/schemas/{url(table)}", json=body, headers=ADMIN)


async def titled(c: Client, title: str = TITLE) -> Seeded:
    """The directory group whose employee table is titled ``title``."""
    seeded = await seed_directory(c)
    r = await put(c, seeded.group_id, "employee", title)
    assert r.status == 200, await r.text()
    assert (await r.json())["title"] == title
    return seeded


# ---- uniqueness and ambiguity ----------------------------------------------------------


async def test_a_title_is_unique_within_its_group_only(client: Client) -> None:
    gid = await new_group(client)
    assert (await create(client, gid, "employee", TITLE)).status == 201
    await error(await create(client, gid, "person", TITLE), 409, "duplicate_title")
    assert (await create(client, gid, "person", "People")).status == 201
    await error(await put(client, gid, "person", TITLE), 409, "duplicate_title")
    other = await new_group(client, "other", "_other")
    assert (await create(client, other, "employee", TITLE)).status == 201


async def test_a_refused_title_changes_nothing(client: Client) -> None:
    gid = await new_group(client)
    assert (await create(client, gid, "employee", TITLE)).status == 201
    assert (await create(client, gid, "person", "People")).status == 201
    await error(await put(client, gid, "person", TITLE), 409, "duplicate_title")
    r = await client.get(f"{G}/{gid}/schemas/person/versions", headers=ADMIN)
    versions = (await r.json())["items"]
    assert [(v["version"], v["title"]) for v in versions] == [(1, "People")]


async def test_a_title_may_not_be_another_tables_name(client: Client) -> None:
    gid = await new_group(client)
    assert (await create(client, gid, "employee")).status == 201
    body = await error(await create(client, gid, "person", "employee"), 409, "ambiguous_title")
    assert "employee" in body["message"]
    assert (await create(client, gid, "person")).status == 201
    await error(await put(client, gid, "person", "employee"), 409, "ambiguous_title")


async def test_a_table_may_not_be_named_as_another_tables_title(client: Client) -> None:
    gid = await new_group(client)
    assert (await create(client, gid, "employee", "person")).status == 201
    await error(await create(client, gid, "person"), 409, "ambiguous_title")


async def test_a_title_may_be_its_own_tables_name(client: Client) -> None:
    gid = await new_group(client)
    assert (await create(client, gid, "employee", "employee")).status == 201
    assert (await put(client, gid, "employee", "employee")).status == 200


async def test_a_title_may_not_read_as_another_groups_resource_type(client: Client) -> None:
    """The read API takes ``<prefix>_<title>``: prefix _acme + title crm_contact reads as
    the resource type of table contact in the group of prefix _acme_crm."""
    acme = await new_group(client, "acme", "_acme")
    crm = await new_group(client, "acme crm", "_acme_crm")
    assert (await create(client, crm, "contact")).status == 201
    await error(await create(client, acme, "person", "crm_contact"), 409, "ambiguous_title")
    assert (await create(client, acme, "person", "crm_person")).status == 201
    await error(await create(client, crm, "person"), 409, "ambiguous_title")


@pytest.mark.parametrize("title", ["", " padded", "padded ", ".", "..", 7, "x" * 201])
async def test_invalid_titles_are_400(client: Client, title: Any) -> None:
    gid = await new_group(client)
    r = await create(client, gid, "employee", title)
    body = await error(r, 400, "invalid_title", title)
    assert body["pointer"] == "/title"


async def test_concurrent_writers_cannot_both_take_a_title(client: Client) -> None:
    """The rules hold in PostgreSQL: of writers racing for one title (or for a title and
    the same table name), exactly one wins."""
    gid = await new_group(client)
    for round_ in range(5):
        title = f"T{round_}"
        results = await asyncio.gather(
            *(create(client, gid, f"t{round_}_{n}", title) for n in range(4)),
            create(client, gid, title.lower(), None),
        )
        statuses = sorted(r.status for r in results)
        assert statuses.count(201) == 2, statuses  # one of the titled, and the plain one
        codes = {(await r.json())["code"] for r in results if r.status == 409}
        assert codes == {"duplicate_title"}
        tables = [f"t{round_}_{n}" for n, r in enumerate(results[:4]) if r.status == 201]
        assert len(tables) == 1
        race = await asyncio.gather(
            create(client, gid, f"u{round_}", f"v{round_}"),
            create(client, gid, f"v{round_}", None),
        )
        assert sorted(r.status for r in race) == [201, 409], [r.status for r in race]


async def test_pg_refuses_a_clash_whoever_writes(pool: asyncpg.Pool, client: Client) -> None:
    """The index and the trigger of migration 0006, not only the gateway's store."""
    gid = await new_group(client)
    assert (await create(client, gid, "employee", TITLE)).status == 201
    assert (await create(client, gid, "person")).status == 201
    for sql, constraint in [
        ("UPDATE schemas SET title = 'employee' WHERE table_name = 'person'",
         "schemas_title_is_a_table"),
        ("UPDATE schemas SET title = $1 WHERE table_name = 'person'", "schemas_group_title"),
        ("UPDATE schemas SET table_name = $1 WHERE table_name = 'person'",
         "schemas_table_is_a_title"),
    ]:  # fmt: skip
        with pytest.raises(asyncpg.UniqueViolationError) as e:
            await pool.execute(sql, *([TITLE] if "$1" in sql else []))
        assert e.value.constraint_name == constraint, sql


# ---- admin routes by title ----------------------------------------------------------------


@pytest.mark.parametrize("title", TITLES)
async def test_admin_schema_routes_take_the_title(client: Client, title: str) -> None:
    gid = await new_group(client)
    assert (await create(client, gid, "employee", title)).status == 201
    r = await client.get(f"{G}/{gid}/schemas/{url(title)}", headers=ADMIN)
    got = await ok(r)
    assert (got["table"], got["title"], got["version"]) == ("employee", title, 1)
    r = await client.put(
        f"{G}/{gid}/schemas/{url(title)}", json={"schema": EMPLOYEE_SCHEMA}, headers=ADMIN
    )
    assert (await ok(r))["version"] == 2
    r = await client.get(f"{G}/{gid}/schemas/{url(title)}/versions", headers=ADMIN)
    assert [v["version"] for v in (await ok(r))["items"]] == [1, 2]


async def test_titles_are_case_sensitive(client: Client) -> None:
    gid = await new_group(client)
    assert (await create(client, gid, "employee", TITLE)).status == 201
    r = await client.get(f"{G}/{gid}/schemas/{url(TITLE.lower())}", headers=ADMIN)
    await error(r, 404, "schema_not_found")


async def test_a_retitled_table_answers_to_its_new_title_only(
    client: Client, pipeline: InlinePipeline
) -> None:
    seeded = await titled(client, "Old")
    r = await client.put(
        f"{G}/{seeded.group_id}/schemas/Old", json={"schema": EMPLOYEE_SCHEMA, "title": "New"},
        headers=ADMIN,
    )  # fmt: skip
    assert (await ok(r))["title"] == "New"
    r = await client.post(f"{INGEST}/event/Old", json=emp(), headers=key_headers(seeded))
    await error(r, 404, "table_not_found")
    r = await client.post(f"{INGEST}/event/New", json=emp(), headers=key_headers(seeded))
    assert r.status == 202, await r.text()


# ---- ingest routes by title ---------------------------------------------------------------


@pytest.mark.parametrize("title", TITLES)
async def test_ingest_routes_take_the_title(
    client: Client, pipeline: InlinePipeline, title: str
) -> None:
    seeded = await titled(client, title)
    t = url(title)
    h = key_headers(seeded)
    r = await client.post(f"{INGEST}/event/{t}", json=emp("e1"), headers=h)
    single = (await ok(r, 202))["eventId"]
    r = await client.post(
        f"{INGEST}/bulk-event/{t}?groupKey=g", data=orjson.dumps([emp("b1"), emp("b2")]), headers=h
    )
    bulk = (await ok(r, 202))["eventId"]
    r = await client.post(
        f"{INGEST}/bulk-event/{t}?groupKey=s&session=s1&part=1", data=b"[]", headers=h
    )
    await ok(r, 202)
    r = await client.get(f"{INGEST}/bulk-event/{t}/sessions/s1?groupKey=s", headers=h)
    assert (await ok(r))["partsReceived"] == 1
    r = await client.delete(f"{INGEST}/bulk-event/{t}/sessions/s1?groupKey=s", headers=h)
    assert r.status == 204, await r.text()
    await pipeline.run()
    rc = await receipt(client, seeded, single)
    assert (rc["status"], rc["created"], rc["table"]) == ("applied", 1, "employee")
    rc = await receipt(client, seeded, bulk)
    assert (rc["status"], rc["created"], rc["table"]) == ("applied", 2, "employee")
    r = await client.delete(f"{INGEST}/{t}?resourceIds=b1&groupKey=g", headers=h)
    deleted = (await ok(r, 202))["eventId"]
    await pipeline.run()
    assert (await receipt(client, seeded, deleted))["deleted"] == 1


async def test_an_unknown_title_is_404_like_an_unknown_table(client: Client) -> None:
    seeded = await titled(client)
    h = key_headers(seeded)
    for method, path in [
        ("POST", f"{INGEST}/event/{url('Company person')}"),
        ("POST", f"{INGEST}/bulk-event/Nobody"),
        ("DELETE", f"{INGEST}/Nobody?resourceIds=a"),
        ("GET", f"{INGEST}/bulk-event/Nobody/sessions/s1"),
    ]:
        r = await client.request(method, path, data=b"[]", headers=h)
        await error(r, 404, "table_not_found", path)


async def test_another_groups_title_is_not_this_integrations_table(client: Client) -> None:
    seeded = await seed_directory(client)
    other = await new_group(client, "other", "_other")
    assert (await create(client, other, "person", TITLE)).status == 201
    r = await client.post(f"{INGEST}/event/{url(TITLE)}", json=emp(), headers=key_headers(seeded))
    await error(r, 404, "table_not_found")


# ---- read routes by <prefix>_<title> ------------------------------------------------------


@pytest.mark.parametrize("title", TITLES)
async def test_read_routes_take_prefix_and_title(
    client: Client, pipeline: InlinePipeline, title: str
) -> None:
    seeded = await titled(client, title)
    r = await client.post(f"{INGEST}/event/employee", json=emp("e1"), headers=key_headers(seeded))
    await ok(r, 202)
    await pipeline.run()
    rt = url(f"_directory_{title}")
    r = await client.get(f"/api/v1/resources/{rt}", headers=ADMIN)
    items = (await ok(r))["items"]
    assert [(i["id"], i["_meta"]["resourceType"]) for i in items] == [("e1", "_directory_employee")]
    r = await client.get(f"/api/v1/resources/{rt}?allGroups=true", headers=ADMIN)
    assert len((await ok(r))["items"]) == 1
    r = await client.get(f"/api/v1/resources/{rt}/e1", headers=ADMIN)
    assert (await ok(r))["id"] == "e1"
    r = await client.get(f"/api/v1/resources/{rt}/e1/history", headers=ADMIN)
    assert [h["op"] for h in (await ok(r))["items"]] == ["created"]


async def test_read_routes_refuse_a_bare_or_wrongly_cased_title(client: Client) -> None:
    await titled(client)
    for rt in (TITLE, "_directory_company person", "_other_" + TITLE):
        r = await client.get(f"/api/v1/resources/{url(rt)}", headers=ADMIN)
        await error(r, 404, "resource_type_not_found", rt)


# ---- a pull source's table ------------------------------------------------------------


async def test_a_source_may_name_its_table_by_title(client: Client) -> None:
    seeded = await titled(client)
    await new_spec(client)
    body = source_body(seeded, table=TITLE)
    got = await ok(await client.post(SOURCES, json=body, headers=ADMIN), 201)
    assert got["table"] == "employee"  # kept by name: a retitled table keeps its sources
    r = await client.post(
        SOURCES, json=source_body(seeded, name="n2", table="Company"), headers=ADMIN
    )
    body_err = await error(r, 400, "invalid_source")
    assert body_err["pointer"] == "/table"
