"""The XML ↔ JSON mapping (pure): typing from the schema, structure, safety, responses."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest

from shared import xmlcodec
from shared.schema_rules import content_hash
from shared.xmlcodec import XmlError, dumps, resource_from_xml, resources_from_xml
from tests.conftest import EMPLOYEE_SCHEMA

SCHEMA: dict[str, Any] = {
    "type": "object",
    "$defs": {"money": {"type": "number"}},
    "properties": {
        "id": {"type": "string"},
        "count": {"type": "integer"},
        "price": {"$ref": "#/$defs/money"},
        "ok": {"type": "boolean"},
        "gone": {"type": "null"},
        "maybe": {"type": ["integer", "null"]},
        "either": {"type": ["integer", "string"]},
        "code": {"type": ["string", "integer"]},
        "level": {"enum": [1, 2, 3]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "scores": {"type": "array", "items": {"type": "integer"}},
        "addresses": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
            },
        },
        "owner": {
            "anyOf": [
                {"type": "object", "properties": {"age": {"type": "integer"}}},
                {"type": "null"},
            ]
        },
        "meta": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}


def one(xml: str, schema: dict[str, Any] = SCHEMA) -> Any:
    return resource_from_xml(xml.encode(), schema)


# ---- typing from the schema -----------------------------------------------------------


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ("<count>42</count>", {"count": 42}),
        ("<count> -7 </count>", {"count": -7}),
        ("<count>4.5</count>", {"count": "4.5"}),  # not an integer: left for validation
        ("<price>4.5</price>", {"price": 4.5}),
        ("<price>4</price>", {"price": 4}),
        ("<price>1e3</price>", {"price": 1000.0}),
        ("<price>1e400</price>", {"price": "1e400"}),
        ("<price>abc</price>", {"price": "abc"}),
        ("<ok>true</ok>", {"ok": True}),
        ("<ok>0</ok>", {"ok": False}),
        ("<ok>yes</ok>", {"ok": "yes"}),
        ("<gone/>", {"gone": None}),
        ("<maybe/>", {"maybe": None}),
        ("<maybe>3</maybe>", {"maybe": 3}),
        ("<either>3</either>", {"either": 3}),
        ("<code>3</code>", {"code": "3"}),  # the first declared type that fits wins
        ("<level>2</level>", {"level": 2}),  # inferred from enum
        ("<id>  padded </id>", {"id": "  padded "}),  # strings keep their whitespace
        ("<id/>", {"id": ""}),
        ("<id>42</id>", {"id": "42"}),
        ("<unknown>42</unknown>", {"unknown": "42"}),
        ('<count xsi:nil="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>',
         {"count": None}),
        ("<meta><a>1</a><b>2</b></meta>", {"meta": {"a": 1, "b": 2}}),
        ("<owner><age>5</age></owner>", {"owner": {"age": 5}}),
        ("<count>18446744073709551615</count>", {"count": 18446744073709551615}),
        ("<price>-9223372036854775808</price>", {"price": -9223372036854775808}),
        ("<either>18446744073709551616</either>", {"either": "18446744073709551616"}),
    ],
)  # fmt: skip
def test_scalars_take_their_type_from_the_schema(xml: str, expected: dict[str, Any]) -> None:
    assert one(f"<r>{xml}</r>") == expected


def test_repeated_elements_are_arrays_and_array_properties_always_are() -> None:
    assert one("<r><tags>a</tags><tags>b</tags></r>") == {"tags": ["a", "b"]}
    assert one("<r><tags>a</tags></r>") == {"tags": ["a"]}
    assert one("<r><tags/></r>") == {"tags": []}
    assert one("<r><tags/><tags/></r>") == {"tags": ["", ""]}
    assert one("<r><scores>1</scores><scores>2</scores></r>") == {"scores": [1, 2]}
    assert one("<r><unknown>1</unknown><unknown>2</unknown></r>") == {"unknown": ["1", "2"]}
    got = one(
        "<r><addresses><city>X</city><zip>1</zip></addresses>"
        "<addresses><city>Y</city></addresses></r>"
    )
    assert got == {"addresses": [{"city": "X", "zip": 1}, {"city": "Y"}]}
    assert one("<r><addresses><zip>9</zip></addresses></r>") == {"addresses": [{"zip": 9}]}


def test_attributes_are_properties_and_namespaces_are_dropped() -> None:
    xml = '<r xmlns="urn:x" xmlns:p="urn:p" id="a" count="3"><p:ok>true</p:ok></r>'
    assert one(xml) == {"id": "a", "count": 3, "ok": True}


def test_formatting_whitespace_is_ignored() -> None:
    xml = "<r>\n  <id>a</id>\n  <meta>\n    <x>1</x>\n  </meta>\n</r>\n"
    assert one(xml) == {"id": "a", "meta": {"x": 1}}


def test_xml_equivalent_of_json_has_the_same_content_hash() -> None:
    doc = {
        "employeeId": "e1",
        "active": True,
        "employee": {"username": "jdoe", "email": "j@x.io", "age": 42},
    }
    xml = (
        b'<?xml version="1.0" encoding="UTF-8"?><employee><employee><age>42</age>'
        b"<email>j@x.io</email><username>jdoe</username></employee>"
        b"<active>true</active><employeeId>e1</employeeId></employee>"
    )
    got = resource_from_xml(xml, EMPLOYEE_SCHEMA)
    assert got == doc and content_hash(got) == content_hash(doc)


def test_encodings_and_entities_of_xml_itself_are_understood() -> None:
    xml = '<?xml version="1.0" encoding="ISO-8859-1"?><r><id>caf\xe9 &amp; &#233;</id></r>'
    assert resource_from_xml(xml.encode("latin-1"), SCHEMA) == {"id": "café & é"}
    assert one("<r><id><![CDATA[<b>]]></id></r>") == {"id": "<b>"}


def test_bulk_root_holds_one_element_per_resource() -> None:
    xml = b"<set><item><id>a</id></item><other id='b'/><item/></set>"
    assert resources_from_xml(xml, SCHEMA) == [{"id": "a"}, {"id": "b"}, {}]
    assert resources_from_xml(b"<set/>", SCHEMA) == []
    assert resources_from_xml(b"<set a='1'>\n</set>", SCHEMA) == []  # root attributes: ignored
    assert resources_from_xml(b"<set><x>text</x></set>", SCHEMA) == ["text"]  # worker: not object


# ---- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xml", "code"),
    [
        (b"<r>text<id>a</id></r>", "xml_mixed_content"),
        (b"<r><id>a</id>tail</r>", "xml_mixed_content"),
        (b'<r><meta k="1">text</meta></r>', "xml_mixed_content"),
        (b'<r id="a"><id>b</id></r>', "xml_duplicate_property"),
        (b"<r><id>a</r>", "invalid_xml"),
        (b"", "invalid_xml"),
        (b"not xml", "invalid_xml"),
        (b"<a/><b/>", "invalid_xml"),
        (b"<r>" * 65 + b"</r>" * 65, "xml_too_deep"),
        (b'<!DOCTYPE r SYSTEM "http://example.com/x.dtd"><r/>', "xml_forbidden"),
        (b'<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><r/>', "xml_forbidden"),
        (b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>', "xml_forbidden"),
        (b'<!DOCTYPE r [<!ENTITY a "aaaa">]><r>&a;</r>', "xml_forbidden"),
        (b"<!DOCTYPE r><r/>", "xml_forbidden"),
        (b"<r>&undefined;</r>", "invalid_xml"),
    ],
)
def test_refused_documents(xml: bytes, code: str) -> None:
    with pytest.raises(XmlError) as e:
        resource_from_xml(xml, SCHEMA)
    assert e.value.code == code
    if xml.startswith(b"<!"):
        wrapped = xml
    elif xml in (b"", b"<a/><b/>"):  # wrapped in a root, these two are fine
        return
    else:
        wrapped = b"<set>" + xml + b"</set>"
    with pytest.raises(XmlError):
        resources_from_xml(wrapped, SCHEMA)


def _laughs(levels: int) -> bytes:
    ents = ['<!ENTITY l0 "lol">'] + [
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, levels)
    ]
    return f'<?xml version="1.0"?><!DOCTYPE r [{"".join(ents)}]><r>&l{levels - 1};</r>'.encode()


def test_billion_laughs_is_refused_in_bounded_time_and_memory() -> None:
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(XmlError) as e:
        resource_from_xml(_laughs(10), SCHEMA)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert e.value.code == "xml_forbidden"
    assert elapsed < 0.5 and peak < 2 << 20


def test_deep_nesting_of_a_large_body_is_refused_early() -> None:
    body = b"<a>" * 1_000_000 + b"</a>" * 1_000_000
    tracemalloc.start()
    with pytest.raises(XmlError) as e:
        resource_from_xml(body, SCHEMA)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert e.value.code == "xml_too_deep" and peak < 8 << 20


# ---- responses ----------------------------------------------------------------------------


def test_dumps_is_the_inverse_mapping() -> None:
    data = {
        "eventId": "ev_1",
        "status": "rejected",
        "created": 0,
        "ok": True,
        "issues": [
            {"code": "x", "message": 'a < b & "c"', "pointer": None, "index": 3},
            {"code": "y", "message": "m", "pointer": "/a"},
        ],
        "ignored": ["a", "b"],
        "nested": {"k": 1.5},
    }
    xml = dumps(data, "receipt")
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?><receipt ')
    back = resource_from_xml(xml, {})
    assert back["issues"][0] == {"code": "x", "message": 'a < b & "c"', "pointer": None,
                                 "index": "3"}  # fmt: skip
    assert back["ignored"] == ["a", "b"] and back["ok"] == "true" and back["nested"] == {"k": "1.5"}
    # an empty array is one marked element, never left out (see tests/unit/test_xmlanswer.py)
    assert b'<ignored array="empty"/>' in dumps({"ignored": []})


def test_dumps_keeps_keys_that_are_not_xml_names() -> None:
    xml = dumps({"$.employee.email": "a", "xmlish": 1, "ok_name": 2})
    assert b'<property name="$.employee.email">a</property>' in xml
    assert b'<property name="xmlish">1</property>' in xml and b"<ok_name>2</ok_name>" in xml


def test_xml_types() -> None:
    assert {"application/xml", "text/xml"} == set(xmlcodec.XML_TYPES)
