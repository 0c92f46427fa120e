"""What a client does with an XML answer: read it back to JSON by the README's rules.

XML text has no types, so :func:`read` takes ``like``, a JSON value of the answer's
shape (the JSON answer itself, in the tests): it says which properties are arrays,
objects, numbers or booleans, as the documented shape tells a client. Everything else
(which properties there are, how many members an array has, every text, every null)
comes from the XML alone, so an answer that drops, adds or changes anything reads back
different from its JSON.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree.ElementTree import Element

from defusedxml import ElementTree as SafeET

NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
#: the only attributes an answer's elements carry (the root carries xmlns:xsi only)
MARKS = {"name", "escaped", "array", NIL}
# XML 1.0 §2.2, what a document may hold at all
XML_CHAR = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*$")


def parse(raw: bytes) -> Element:
    """A strict XML 1.0 parse (expat, no DTD) of a whole answer."""
    assert XML_CHAR.match(raw.decode()), "a character XML 1.0 forbids"
    root: Element = SafeET.fromstring(raw, forbid_dtd=True)
    return root


def _unescaped(text: str, elem: Element) -> str:
    if elem.get("escaped") != "true":
        return text
    return re.sub(
        r"\\(\\|u([0-9a-f]{4}))",
        lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(2), 16)),
        text,
    )


def name_of(elem: Element) -> str:
    if elem.tag == "property" and "name" in elem.attrib:
        return _unescaped(elem.attrib["name"], elem)
    return elem.tag


def read(elem: Element, like: Any) -> Any:
    """The JSON value of one element (for the root: the whole answer)."""
    assert set(elem.attrib) <= MARKS, elem.attrib
    if elem.get(NIL) == "true":
        assert len(elem) == 0 and not elem.text, "a nil element is empty"
        return None
    if isinstance(like, dict):
        assert not (elem.text or "").strip(), f"text beside properties in <{elem.tag}>"
        groups: dict[str, list[Element]] = {}
        for child in elem:
            groups.setdefault(name_of(child), []).append(child)
        return {k: read_property(v, like.get(k)) for k, v in groups.items()}
    if isinstance(like, list):  # an array inside an array: its members are <item>s
        assert all(c.tag == "item" for c in elem), [c.tag for c in elem]
        return read_property(list(elem), like)
    assert len(elem) == 0, f"<{elem.tag}> has children where a scalar was expected"
    text = _unescaped(elem.text or "", elem)
    if isinstance(like, bool):
        return {"true": True, "false": False}[text]
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    return text


def read_property(elems: list[Element], like: Any) -> Any:
    """The value of one property, written as ``elems`` (several for an array)."""
    if isinstance(like, list):
        if len(elems) == 1 and elems[0].get("array") == "empty":
            assert len(elems[0]) == 0 and not elems[0].text
            return []
        assert all(e.get("array") is None for e in elems)
        shapes = like or [None]
        return [read(e, shapes[min(n, len(shapes) - 1)]) for n, e in enumerate(elems)]
    assert len(elems) == 1, f"{len(elems)} elements for a property that is not an array"
    return read(elems[0], like)


def answer(raw: bytes, like: dict[str, Any], root: str | None = None) -> dict[str, Any]:
    """A whole XML answer read back, with its JSON twin ``like`` as the shape."""
    elem = parse(raw)
    if root is not None:
        assert elem.tag == root, elem.tag
    out = read(elem, like)
    assert isinstance(out, dict)
    return out
