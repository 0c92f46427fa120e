"""XML answers never hold a character XML 1.0 forbids, and say exactly what the string was;
XML bodies never turn an integer beyond 64 bits into a float (pure)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from defusedxml import ElementTree as SafeET

from shared.xmlcodec import XmlError, dumps, resource_from_xml

# XML 1.0 §2.2, what a document may hold at all
XML_CHAR = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*$")
KEY = "\u0001\u001b[31m"


def parse_strictly(xml: bytes) -> ET.Element:
    assert XML_CHAR.match(xml.decode()), "a character XML 1.0 forbids"
    return SafeET.fromstring(xml, forbid_dtd=True)  # expat: refuses any such character too


def read_back(elem: ET.Element) -> str:
    """What a reader does with the documented notation."""
    text = elem.text or ""
    if elem.get("escaped") != "true":
        return text
    return re.sub(
        r"\\(\\|u([0-9a-f]{4}))",
        lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(2), 16)),
        text,
    )


def test_the_issue_receipt_is_well_formed_and_lossless() -> None:
    # a rejected payload with the key "\u0001\u001b[31m": its receipt, answered as XML
    message = f"unknown field '{KEY}' (and a \\ backslash)"
    receipt = {
        "status": "rejected",
        "issues": [{"code": "unknown_field", "message": message, "pointer": "/" + KEY}],
    }
    root = parse_strictly(dumps(receipt, "receipt"))
    issue = root.find("issues")
    assert issue is not None
    msg, ptr = issue.find("message"), issue.find("pointer")
    assert msg is not None and ptr is not None
    assert msg.get("escaped") == "true" and ptr.get("escaped") == "true"
    assert read_back(msg) == message and read_back(ptr) == "/" + KEY
    assert msg.text is not None and "\\u0001\\u001b[31m" in msg.text


@pytest.mark.parametrize(
    "value",
    [
        "".join(map(chr, range(0x20))),  # every C0 control (tab, newline, CR are allowed)
        "\ufffe\uffff",
        "\ud800 lone surrogate",
        "already \\u0001 escaped-looking text\x07",
    ],
)
def test_every_forbidden_character_is_written_in_backslash_notation(value: str) -> None:
    root = parse_strictly(dumps({"v": value, "list": [value, "plain"]}))
    v = root.find("v")
    assert v is not None and read_back(v) == value
    assert [read_back(e) for e in root.findall("list")] == [value, "plain"]


def test_keys_with_forbidden_characters_go_in_an_escaped_name() -> None:
    root = parse_strictly(dumps({KEY: 1, "ok": None, f"{KEY}x": {"in": "side"}}))
    props = root.findall("property")
    assert [(p.get("name"), p.get("escaped"), p.text) for p in props[:1]] == [
        ("\\u0001\\u001b[31m", "true", "1")
    ]
    inner = props[1].find("in")
    assert inner is not None and inner.text == "side"


def test_names_keep_tabs_and_newlines_in_attributes() -> None:
    (prop,) = parse_strictly(dumps({"a\tb\nc": "x"})).findall("property")
    assert prop.get("name") == "a\tb\nc" and prop.get("escaped") is None


def test_writable_strings_are_unchanged() -> None:
    xml = dumps({"path": "C:\\dir", "emoji": "\U0001f600", "cr": "a\r\nb"})
    root = parse_strictly(xml)
    assert b"escaped" not in xml
    assert [(e.tag, e.text) for e in root] == [
        ("path", "C:\\dir"),
        ("emoji", "\U0001f600"),
        ("cr", "a\r\nb"),
    ]


# ---- XML bodies: integers beyond 64 bits ------------------------------------------------

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "count": {"type": "integer"},
        "price": {"type": "number"},
        "either": {"type": ["integer", "string"]},
    },
}


@pytest.mark.parametrize(
    "xml",
    [
        "<r><price>123456789012345678901234567890</price></r>",
        "<r><count>18446744073709551616</count></r>",
        "<r><count>-9223372036854775809</count></r>",
        f"<r><price>{'9' * 5000}</price></r>",  # past Python's 4,300-digit int() limit
        '<r price="123456789012345678901234567890"/>',
    ],
)
def test_an_integer_beyond_64_bits_is_refused_not_rounded(xml: str) -> None:
    with pytest.raises(XmlError) as e:
        resource_from_xml(xml.encode(), SCHEMA)
    assert e.value.code == "number_out_of_range"
    assert "<price>" in e.value.message or "<count>" in e.value.message


def test_the_64_bit_range_itself_and_strings_are_kept() -> None:
    got = resource_from_xml(
        b"<r><count>18446744073709551615</count><price>-9223372036854775808</price>"
        b"<either>123456789012345678901234567890</either></r>",
        SCHEMA,
    )
    assert got == {
        "count": 18446744073709551615,
        "price": -9223372036854775808,
        "either": "123456789012345678901234567890",
    }
