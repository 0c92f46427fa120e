"""Integration data (seed 001): the seed's examples as literal requests, the map's rules
both ways, the 405s, the collection with expand / skip / top, ETag / If-Match."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN, InlinePipeline, Seeded
from tests.helpers import post

RT = "_directory_employee"
Client = TestClient[Any, Any]
XML = {"Content-Type": "application/xml", "Accept": "application/xml"}
JSON = {"Content-Type": "application/json"}


def base(client: Client) -> str:
    return str(client.make_url("")).rstrip("/")


def coll(rid: str = "562") -> str:
    return f"/api/v1/resources/{RT}/{rid}/integrationdata/"


def inst(vendor: str, rid: str = "562") -> str:
    return coll(rid) + vendor + "/"


async def live(client: Client, seeded: Seeded, pipeline: InlinePipeline, *ids: str) -> None:
    for rid in ids:
        await post(client, seeded, {"employeeId": rid})
    await pipeline.run()


SEED_PUT = b"""<ContactIntegrationData>
  <VendorID>AcmeLtd</VendorID>
  <LastSynchronized>2012-01-01T19:02:01+0100</LastSynchronized>
  <Link rel="self" type="application/xml" href="https://demo.arlo.co/api/2012-02-01/auth/resources/contacts/562/integrationdata/acmeltd/"/>
</ContactIntegrationData>"""

# the seed's "general structure", as printed: <SuppressIntegration>true</Alpha> is a mismatch
SEED_BROKEN = b"""<ContactIntegrationData>
  <VendorID>AcmeLtd</VendorID>
  <SuppressIntegration>true</Alpha>
  <Uri>https://app.acmeltd.org/contacts/9943lkz0ll104/edit</Uri>
</ContactIntegrationData>"""


async def test_seed_put_then_get_xml_literally(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await live(client, seeded, pipeline, "562")
    # the seed's PUT: no trailing slash, XML in and out
    r = await client.put(inst("acmeltd").rstrip("/"), data=SEED_PUT, headers=XML | ADMIN)
    assert r.status == 201, await r.text()
    href = f"{base(client)}{inst('acmeltd')}"
    expected = (
        '<?xml version="1.0" encoding="UTF-8"?><IntegrationData><VendorID>AcmeLtd</VendorID>'
        "<LastSynchronized>2012-01-01T19:02:01+0100</LastSynchronized>"
        f'<Link rel="self" type="application/xml" href="{href}"/></IntegrationData>'
    )
    assert await r.text() == expected
    assert r.headers["Content-Type"].startswith("application/xml")
    etag = r.headers["ETag"]
    # the seed's GET, with the Uri added by a second PUT (200: replaced)
    doc = SEED_PUT.replace(
        b"<LastSynchronized>",
        b"<Uri>https://app.acmeltd.org/contacts/9943lkz0ll104/edit</Uri>\n  <LastSynchronized>",
    )
    r = await client.put(inst("AcmeLtd"), data=doc, headers=XML | ADMIN)
    assert r.status == 200 and r.headers["ETag"] != etag
    r = await client.get(inst("acmeltd"), headers={"Accept": "application/xml"} | ADMIN)
    assert r.status == 200
    assert await r.text() == expected.replace(
        "<LastSynchronized>",
        "<Uri>https://app.acmeltd.org/contacts/9943lkz0ll104/edit</Uri><LastSynchronized>",
    )
    # and as JSON by default, the same map
    r = await client.get(inst("acmeltd").rstrip("/"), headers=ADMIN)
    assert await r.json() == {
        "VendorID": "AcmeLtd",
        "Uri": "https://app.acmeltd.org/contacts/9943lkz0ll104/edit",
        "LastSynchronized": "2012-01-01T19:02:01+0100",
        "Link": [{"rel": "self", "type": "application/json", "href": href}],
    }


async def test_seed_broken_example_is_invalid_xml_with_line_and_column(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await live(client, seeded, pipeline, "562")
    r = await client.put(inst("acmeltd"), data=SEED_BROKEN, headers=JSON | ADMIN | XML)
    assert r.status == 400
    text = await r.text()
    assert "<code>invalid_xml</code>" in text and "line 3 column" in text, text
    fixed = SEED_BROKEN.replace(b"true</Alpha>", b"true</SuppressIntegration>")
    r = await client.put(inst("acmeltd"), data=fixed, headers=XML | ADMIN)
    assert r.status == 201, await r.text()


async def test_xml_and_json_give_the_same_map(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await live(client, seeded, pipeline, "a", "b")
    m = {"ID": "9943lkz0ll104", "Alpha": "true", "Beta": "992300", "Empty": "", "T": '<&>"'}
    xml = "".join(
        f"<{k}>{v.replace('&', '&amp;').replace('<', '&lt;')}</{k}>" for k, v in m.items()
    )
    r = await client.put(inst("v", "a"), data=f"<X_IntegrationData>{xml}</X_IntegrationData>",
                         headers=XML | ADMIN)  # fmt: skip
    assert r.status == 201, await r.text()
    r = await client.put(inst("v", "b"), json=m, headers=ADMIN)
    assert r.status == 201, await r.text()
    a = await (await client.get(inst("v", "a"), headers=ADMIN)).json()
    b = await (await client.get(inst("v", "b"), headers=ADMIN)).json()
    assert a.pop("Link") != b.pop("Link") and a == b == m
    xa = await (
        await client.get(inst("v", "a"), headers={"Accept": "application/xml"} | ADMIN)
    ).text()
    xb = await (
        await client.get(inst("v", "b"), headers={"Accept": "application/xml"} | ADMIN)
    ).text()
    assert xa.replace("/a/", "/b/") == xb


BAD: list[tuple[Any, int, str, str]] = [
    ({"A": 1}, 400, "invalid_integration_data", "/A"),
    ({"A": True}, 400, "invalid_integration_data", "/A"),
    ({"A": {"b": "c"}}, 400, "invalid_integration_data", "/A"),
    ({"A": None}, 400, "invalid_integration_data", "/A"),
    ({"1a": "x"}, 400, "invalid_integration_data", "/1a"),
    ({"a b": "x"}, 400, "invalid_integration_data", "/a b"),
    ({"x" * 65: "x"}, 400, "invalid_integration_data", "/" + "x" * 65),
    ({"A": "\x01"}, 400, "invalid_integration_data", "/A"),
    ({"SuppressIntegration": "yes"}, 400, "invalid_integration_data", "/SuppressIntegration"),
    ({"SuppressIntegration": "True"}, 400, "invalid_integration_data", "/SuppressIntegration"),
    ({"Uri": "/relative/path"}, 400, "invalid_integration_data", "/Uri"),
    ({"Uri": "ftp://h/x"}, 400, "invalid_integration_data", "/Uri"),
    ({"Uri": "https://h/" + "x" * 120}, 400, "invalid_integration_data", "/Uri"),
    ({"VendorID": "Other"}, 409, "vendor_mismatch", "/VendorID"),
    ({"VendorID": "a" * 65}, 400, "invalid_integration_data", "/VendorID"),
    ({f"n{i}": "" for i in range(201)}, 400, "invalid_integration_data", ""),
    (["A"], 400, "body_not_object", ""),
]
GOOD: list[dict[str, str]] = [
    {"A": "1"},
    {"_a.b-c": "x"},
    {"x" * 64: "x"},
    {"SuppressIntegration": "true"},
    {"SuppressIntegration": "false"},
    {"Uri": "http://h/x"},
    {"Uri": "https://h/" + "x" * 118},
    {"VendorID": "ACME"},
    {"VendorID": "acme"},
    {f"n{i}": "" for i in range(200)},
]


@pytest.mark.parametrize(("body", "status", "code", "pointer"), BAD)
async def test_map_rules_refuse(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, body: Any, status: int,
    code: str, pointer: str,
) -> None:  # fmt: skip
    await live(client, seeded, pipeline, "562")
    r = await client.put(inst("acme"), json=body, headers=ADMIN)
    assert r.status == status, await r.text()
    got = await r.json()
    assert got["code"] == code and got.get("pointer", "") == pointer, got
    r = await client.get(inst("acme"), headers=ADMIN)
    assert r.status == 404 and (await r.json())["code"] == "integration_data_not_found"


@pytest.mark.parametrize("body", GOOD)
async def test_map_rules_accept(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, body: dict[str, str]
) -> None:
    await live(client, seeded, pipeline, "562")
    r = await client.put(inst("acme"), json=body, headers=ADMIN)
    assert r.status == 201, await r.text()
    got = await (await client.get(inst("acme"), headers=ADMIN)).json()
    got.pop("Link")
    assert got == body


async def test_size_vendor_ids_and_xml_shape(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await live(client, seeded, pipeline, "562")
    r = await client.put(inst("acme"), json={"A": "x" * (64 << 10)}, headers=ADMIN)
    assert r.status == 413 and (await r.json())["code"] == "body_too_large"
    r = await client.put(inst("acme"), json={"A": "x" * 60000}, headers=ADMIN)
    assert r.status == 201
    for bad in ("-x", "a" * 65, "a%20b", "%C3%A9"):
        r = await client.get(inst(bad), headers=ADMIN)
        assert r.status == 400 and (await r.json())["code"] == "invalid_vendor_id", bad
    r = await client.get(inst("a" * 64), headers=ADMIN)
    assert r.status == 404
    for doc, code in [
        (b"<Contact><A>x</A></Contact>", "invalid_integration_data"),
        (b"<IntegrationData><A><B>x</B></A></IntegrationData>", "invalid_integration_data"),
        (b'<IntegrationData><A b="1">x</A></IntegrationData>', "invalid_integration_data"),
        (b"<IntegrationData><A>x</A><A>y</A></IntegrationData>", "invalid_integration_data"),
        (b"<IntegrationData>t<A>x</A></IntegrationData>", "invalid_integration_data"),
        (b'<!DOCTYPE x [<!ENTITY e "y">]><IntegrationData><A>&e;</A></IntegrationData>',
         "xml_forbidden"),
    ]:  # fmt: skip
        r = await client.put(inst("acme"), data=doc, headers=XML | ADMIN)
        assert r.status == 400, doc
        assert f"<code>{code}</code>" in await r.text(), doc
    r = await client.put(inst("acme"), data=b"<IntegrationData/>", headers=XML | ADMIN)
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/xml")
    r = await client.put(inst("acme"), data=b"A=1", headers={"Content-Type": "text/plain"} | ADMIN)
    assert r.status == 415


@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE"])
async def test_instance_refuses_other_methods(client: Client, method: str) -> None:
    for path in (inst("acme"), inst("acme").rstrip("/")):
        r = await client.request(method, path, headers=ADMIN)
        assert r.status == 405 and (await r.json())["code"] == "method_not_allowed"
        assert {"GET", "PUT"} <= {m.strip() for m in r.headers["Allow"].split(",")}


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_collection_refuses_other_methods(client: Client, method: str) -> None:
    for path in (coll(), coll().rstrip("/")):
        r = await client.request(method, path, headers=ADMIN)
        assert r.status == 405 and (await r.json())["code"] == "method_not_allowed"
        assert "PUT" not in r.headers["Allow"] and "GET" in r.headers["Allow"]


async def test_collection_links_expand_skip_top(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    await live(client, seeded, pipeline, "211")
    for vendor, title in (("vendorx", "VendorX"), ("salesforce", "Salesforce"), ("oracle", None)):
        body = {"VendorID": title} if title else {"K": "v"}
        r = await client.put(inst(vendor, "211"), json=body, headers=ADMIN)
        assert r.status == 201
    b = base(client)
    rel = "https://schemas.ingestd.dev/api/v1/related/"
    r = await client.get(coll("211"), headers={"Accept": "application/xml"} | ADMIN)
    assert r.status == 200 and r.headers["ETag"]
    expected = (
        '<?xml version="1.0" encoding="UTF-8"?><IntegrationDataCollection>'
        f'<Link rel="{rel}oracle" type="application/xml" title="oracle"'
        f' href="{b}{inst("oracle", "211")}"/>'
        f'<Link rel="{rel}Salesforce" type="application/xml" title="Salesforce"'
        f' href="{b}{inst("salesforce", "211")}"/>'
        f'<Link rel="{rel}VendorX" type="application/xml" title="VendorX"'
        f' href="{b}{inst("vendorx", "211")}"/>'
        f'<Link rel="self" type="application/xml" href="{b}{coll("211")}"/>'
        "</IntegrationDataCollection>"
    )
    assert await r.text() == expected
    # the seed's example 2: ?expand=Salesforce inlines that vendor's map in its link
    r = await client.get(
        coll("211"), params={"expand": "Salesforce"}, headers={"Accept": "application/xml"} | ADMIN
    )
    sf = f"{b}{inst('salesforce', '211')}"
    inline = (
        f'<Link rel="{rel}Salesforce" type="application/xml" title="Salesforce" href="{sf}">'
        f'<IntegrationData><VendorID>Salesforce</VendorID><Link rel="self"'
        f' type="application/xml" href="{sf}"/></IntegrationData></Link>'
    )
    assert inline in await r.text()
    # JSON, expand=all, skip and top
    r = await client.get(coll("211").rstrip("/"), params={"expand": "all"}, headers=ADMIN)
    links = (await r.json())["Link"]
    assert [k["rel"] for k in links] == [
        f"{rel}oracle",
        f"{rel}Salesforce",
        f"{rel}VendorX",
        "self",
    ]
    assert links[0]["IntegrationData"]["K"] == "v" and links[-1]["href"].endswith("expand=all")
    r = await client.get(coll("211"), params={"skip": "1", "top": "1"}, headers=ADMIN)
    links = (await r.json())["Link"]
    assert [k.get("title") for k in links] == ["Salesforce", None]
    assert "IntegrationData" not in links[0]
    r = await client.get(coll("211"), params={"skip": "3"}, headers=ADMIN)
    assert [k["rel"] for k in (await r.json())["Link"]] == ["self"]
    for name, value in [("skip", "-1"), ("top", "1001"), ("top", "x"), ("skip", "²"),
                        ("expand", "-bad")]:  # fmt: skip
        r = await client.get(coll("211"), params={name: value}, headers=ADMIN)
        assert r.status == 400, (name, value)
        assert (await r.json())["pointer"] == f"/query/{name}"
    r = await client.get(coll("211"), params={"top": "1000"}, headers=ADMIN)
    assert r.status == 200


async def test_etag_and_if_match(client: Client, seeded: Seeded, pipeline: InlinePipeline) -> None:
    await live(client, seeded, pipeline, "562")
    r = await client.put(inst("acme"), json={"A": "1"}, headers=ADMIN | {"If-Match": "*"})
    assert r.status == 412 and (await r.json())["code"] == "precondition_failed"
    r = await client.put(inst("acme"), json={"A": "1"}, headers=ADMIN | {"If-None-Match": "*"})
    assert r.status == 201
    e1 = r.headers["ETag"]
    r = await client.get(inst("acme"), headers=ADMIN)
    assert r.headers["ETag"] == e1
    c1 = (await client.get(coll(), headers=ADMIN)).headers["ETag"]
    # two writers both read e1; the first wins, the second is told (no silent overwrite)
    r = await client.put(inst("acme"), json={"A": "2"}, headers=ADMIN | {"If-Match": e1})
    assert r.status == 200
    e2 = r.headers["ETag"]
    assert e2 != e1
    r = await client.put(inst("acme"), json={"A": "3"}, headers=ADMIN | {"If-Match": e1})
    assert r.status == 412 and (await r.json())["code"] == "precondition_failed"
    got = await (await client.get(inst("acme"), headers=ADMIN)).json()
    assert got["A"] == "2"
    r = await client.put(inst("acme"), json={"A": "3"}, headers=ADMIN | {"If-Match": f'"x", {e2}'})
    assert r.status == 200
    r = await client.put(inst("acme"), json={"A": "4"}, headers=ADMIN | {"If-None-Match": "*"})
    assert r.status == 412
    assert (await client.get(coll(), headers=ADMIN)).headers["ETag"] != c1
    # an unchanged map keeps its ETag
    e3 = (await client.get(inst("acme"), headers=ADMIN)).headers["ETag"]
    r = await client.put(inst("acme"), json={"A": "3"}, headers=ADMIN)
    assert r.status == 200 and r.headers["ETag"] == e3
