"""Bulk and single events as XML: the same resources as JSON; bombs and XXE refused."""

from __future__ import annotations

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from shared.redis import keyspace as ks
from shared.schema_rules import content_hash
from tests.conftest import InlinePipeline, Seeded
from tests.helpers import emp, post_bulk, receipt
from tests.integration.test_bulk import (
    BULK,
    EVENT,
    Client,
    scope,
)

XML_SET = b"""<?xml version="1.0" encoding="UTF-8"?>
<employees>
  <employee>
    <employeeId>a</employeeId>
    <active>true</active>
    <employee><username>ann</username><age>42</age><email>a@x.io</email></employee>
  </employee>
  <employee employeeId="b"><active>0</active></employee>
</employees>"""
JSON_SET = [
    {
        "employeeId": "a",
        "active": True,
        "employee": {"username": "ann", "age": 42, "email": "a@x.io"},
    },
    {"employeeId": "b", "active": False},
]


async def test_xml_bulk_equals_json_bulk(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    await post_bulk(client, seeded, XML_SET, "groupKey=x", **{"Content-Type": "application/xml"})
    await post_bulk(client, seeded, JSON_SET, "groupKey=j")
    await pipeline.run()
    x, j = await scope(pool, "x"), await scope(pool, "j")
    assert sorted(x) == ["a", "b"]
    for rid in x:
        assert x[rid]["data"] == j[rid]["data"]
        assert x[rid]["content_hash"] == j[rid]["content_hash"]
        assert x[rid]["name"] == j[rid]["name"]
    assert x["a"]["content_hash"] == content_hash(JSON_SET[0])
    # and the JSON set sent to the XML scope again is all unchanged
    r = await post_bulk(client, seeded, JSON_SET, "groupKey=x")
    await pipeline.run()
    assert (await receipt(client, seeded, r["eventId"]))["unchanged"] == 2


async def test_xml_single_event_equals_json(
    client: Client, seeded: Seeded, pipeline: InlinePipeline, pool: asyncpg.Pool
) -> None:
    xml = (
        b"<employee><employeeId>a</employeeId><active>true</active>"
        b"<employee><username>ann</username><age>42</age><email>a@x.io</email></employee>"
        b"</employee>"
    )
    r = await client.post(
        f"{EVENT}?groupKey=x",
        data=xml,
        headers={**seeded.headers, "Content-Type": "application/xml"},
    )
    assert r.status == 202
    await client.post(f"{EVENT}?groupKey=j", json=JSON_SET[0], headers=seeded.headers)
    await pipeline.run()
    x, j = await scope(pool, "x"), await scope(pool, "j")
    assert x["a"]["content_hash"] == j["a"]["content_hash"] == content_hash(JSON_SET[0])


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<employees><employee><employeeId>&lol9;</employeeId></employee></employees>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<employees><employee><employeeId>&xxe;</employeeId></employee></employees>"""


@pytest.mark.parametrize("body", [BOMB, XXE], ids=["billion-laughs", "xxe"])
@pytest.mark.parametrize("url", [BULK, EVENT])
async def test_xml_bombs_and_xxe_are_400(
    client: Client, seeded: Seeded, redis: Redis, body: bytes, url: str
) -> None:
    r = await client.post(url, data=body, headers={**seeded.headers, "Content-Type": "text/xml"})
    out = await r.json()
    assert r.status == 400 and out["code"] == "xml_forbidden", out
    assert "passwd" not in out["message"] and "lol" not in out["message"]
    assert await redis.xlen(ks.ingest_stream(0)) == 0


async def test_accept_xml_gives_xml_responses(
    client: Client, seeded: Seeded, pipeline: InlinePipeline
) -> None:
    from shared import xmlcodec

    xml_headers = {**seeded.headers, "Accept": "application/xml"}
    r = await client.post(BULK, data=orjson.dumps([emp("a")]), headers=xml_headers)
    assert r.status == 202 and r.content_type == "application/xml"
    accepted = xmlcodec.resource_from_xml(await r.read(), {})
    await pipeline.run()
    r = await client.get(
        f"/integration/custom-data/events/{accepted['eventId']}", headers=xml_headers
    )
    assert r.content_type == "application/xml"
    body = xmlcodec.resource_from_xml(await r.read(), {})
    assert body["status"] == "applied" and body["created"] == "1"
    r = await client.post(BULK, data=b"{}", headers=xml_headers)
    assert r.status == 400 and r.content_type == "application/xml"
    err = xmlcodec.resource_from_xml(await r.read(), {})
    assert err["code"] == "body_not_array"
    r = await client.post(BULK, data=b"[]", headers={**seeded.headers, "Accept": "*/*"})
    assert r.content_type == "application/json"


# ---- the streamed diff equals the in-memory reference; slices; interruptions ---------------
