r"""XML bodies in, XML responses out: the mapping between XML and JSON resources.

Pure (bytes and schemas in, values out). Parsing goes through defusedxml with
DTDs, entity declarations and external references forbidden, so a
billion-laughs or XXE body is refused at its DOCTYPE, before any expansion.

Request mapping (resource = the JSON object the table's schema describes):

* Single event: the root element is the resource. Bulk: the root element holds
  one element per resource, in order. Tag names of the root and of resource
  elements are not interpreted (``<employees><employee>…`` is typical).
* Inside a resource, each child element is a property named by its local name
  (namespaces are dropped); attributes are properties too, except ``xsi:*``.
  An element with child elements or attributes is an object; repeated sibling
  elements with the same name are an array, in document order. A property the
  schema types as ``array`` is an array even when it occurs once.
* Leaf text gets its type from the table's JSON schema (``type``, following
  local ``$ref`` and ``allOf``/``anyOf``/``oneOf``, or inferred from
  ``enum``/``const``): ``integer`` ``"42"`` → 42, ``number`` → int or float as
  the same JSON text would parse (an integer beyond 64 bits, which that would round to
  a float, fits neither; if no other listed type fits, it is refused with
  ``number_out_of_range``), ``boolean`` ``true``/``false``/``1``/``0``,
  ``null`` from an empty element; when a schema allows several types, the first
  listed that fits the text wins; otherwise the text stays a string (and schema
  validation reports it with its pointer). ``xsi:nil="true"`` is ``null``. An
  empty element is ``""`` for strings, ``[]`` for arrays, ``{}`` for objects.
* Not expressible in XML: empty arrays outside an array-typed property, arrays
  of arrays, and property names that are not XML names.
* Refused (400): DTDs and entities, mixed content (text beside child elements),
  an attribute and a child element with the same name, nesting deeper than
  :data:`MAX_DEPTH`.

So an XML body and its JSON equivalent produce identical resources, hence
identical content hashes. Answers, the mapping in reverse, are written by
:mod:`shared.xmlanswer` (re-exported here as :func:`dumps`).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml
from defusedxml import ElementTree as SafeET

from shared import pointer
from shared.codes import Code
from shared.xmlanswer import XSI, dumps

__all__ = ["XML_TYPES", "XSI", "XmlError", "dumps", "resource_from_xml", "resources_from_xml"]

XML_TYPES = frozenset({"application/xml", "text/xml"})
MAX_DEPTH = 64
_NIL = f"{{{XSI}}}nil"
_INT = re.compile(r"^[+-]?\d+$")
_NUM = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class XmlError(Exception):
    """The body is not acceptable XML; ``code`` is stable, ``message`` says where."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- schema lookups -------------------------------------------------------------


_NO_SCHEMA: dict[str, Any] = {}  # an unconstrained sub-schema (never mutated)


class _Schemas:
    """Type and sub-schema lookups in one table schema (local ``$ref`` only), memoised:
    a bulk body asks the same few questions for every resource."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self._memo: dict[tuple[int, str, str], tuple[Any, Any]] = {}

    def _cached(self, kind: str, s: Any, name: str, compute: Callable[[], Any]) -> Any:
        key = (id(s), kind, name)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is s:  # the entry keeps s alive: ids stay unique
            return hit[1]
        value = compute()
        self._memo[key] = (s, value)
        return value

    def resolve(self, s: Any, depth: int = 0) -> dict[str, Any]:
        if not isinstance(s, dict):
            return _NO_SCHEMA
        ref = s.get("$ref")
        if not (isinstance(ref, str) and ref.startswith("#") and depth < 16):
            return s

        def merge() -> dict[str, Any]:
            target: Any = self.root
            for raw in ref[1:].split("/")[1:]:
                key = pointer.unescape(raw)
                target = target.get(key) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                return s
            merged = {**self.resolve(target, depth + 1), **s}
            merged.pop("$ref", None)
            return merged

        return self._cached("resolve", s, "", merge)  # type: ignore[no-any-return]

    def _members(self, s: dict[str, Any]) -> list[dict[str, Any]]:
        out = [s]
        for k in ("allOf", "anyOf", "oneOf"):
            for sub in s.get(k) or []:
                out.append(self.resolve(sub))
        return out

    def types(self, s: Any) -> list[str]:
        return self._cached("types", s, "", lambda: self._types(self.resolve(s)))  # type: ignore[no-any-return]

    def _types(self, s: dict[str, Any]) -> list[str]:
        found: list[str] = []
        for m in self._members(s):
            t = m.get("type")
            for name in [t] if isinstance(t, str) else t if isinstance(t, list) else []:
                if isinstance(name, str) and name not in found:
                    found.append(name)
            values = [m["const"]] if "const" in m else m.get("enum") or []
            for v in values if isinstance(values, list) else []:
                name = _json_type(v)
                if name not in found:
                    found.append(name)
        return found

    def child(self, s: Any, name: str) -> dict[str, Any]:
        return self._cached("child", s, name, lambda: self._child(self.resolve(s), name))  # type: ignore[no-any-return]

    def _child(self, s: dict[str, Any], name: str) -> dict[str, Any]:
        for m in self._members(s):
            props = m.get("properties")
            if isinstance(props, dict) and name in props:
                return self.resolve(props[name])
        for m in self._members(s):
            extra = m.get("additionalProperties")
            if isinstance(extra, dict):
                return self.resolve(extra)
        return _NO_SCHEMA

    def items(self, s: Any) -> dict[str, Any]:
        return self._cached("items", s, "", lambda: self._items(self.resolve(s)))  # type: ignore[no-any-return]

    def _items(self, s: dict[str, Any]) -> dict[str, Any]:
        for m in self._members(s):
            if isinstance(m.get("items"), dict):
                return self.resolve(m["items"])
        return _NO_SCHEMA


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


# --- XML -> JSON ---------------------------------------------------------------


def _beyond_64_bits(text: str) -> bool:
    # never int() a long one: Python refuses past 4,300 digits
    return len(text.lstrip("+-")) > 20 or not -(1 << 63) <= int(text) < (1 << 64)


def _number(text: str, integer_only: bool) -> int | float | None:
    """The value orjson would give the same JSON number text (None if it is not one, or
    if it is an integer beyond 64 bits, which orjson would round to a float)."""
    if _INT.match(text):
        return None if _beyond_64_bits(text) else int(text)
    if integer_only or not _NUM.match(text):
        return None
    f = float(text)
    return f if math.isfinite(f) else None


def _scalar(text: str, types: list[str], where: str) -> Any:
    """Leaf text typed by the schema: the first declared type that fits, else the text."""
    stripped = text.strip()
    for t in types:
        if t == "string":
            return text
        if t in ("integer", "number"):
            n = _number(stripped, t == "integer")
            if n is not None and not (t == "integer" and isinstance(n, float)):
                return n
        elif t == "boolean" and stripped.lower() in ("true", "false", "1", "0"):
            return stripped.lower() in ("true", "1")
        elif t == "null" and stripped == "":
            return None
        elif t == "array" and stripped == "":
            return []
        elif t == "object" and stripped == "":
            return {}
    if ("integer" in types or "number" in types) and _INT.match(stripped):  # beyond 64 bits
        shown = stripped if len(stripped) <= 40 else f"{stripped[:20]}… ({len(stripped)} chars)"
        raise XmlError(
            Code.NUMBER_OUT_OF_RANGE,
            f"<{where}>: the integer {shown} is outside the 64-bit range; as a number it would "
            "be stored as a rounded float, so it is refused (a schema that also allows "
            '"string" keeps every digit)',
        )
    return text


def _has_text(text: str | None) -> bool:
    return bool(text and text.strip())


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


@dataclass(slots=True)
class _Frame:
    schema: dict[str, Any]
    props: dict[str, list[Any]] = field(default_factory=dict)
    attrs: set[str] = field(default_factory=set)
    nil: bool = False


class _Empty:
    """An element with no content at all: ``[]`` for an array property, else typed ``""``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _mixed(elem: Element) -> XmlError:
    return XmlError(
        Code.XML_MIXED_CONTENT,
        f"<{_local(elem.tag)}> mixes text with child elements or attributes; "
        "put the text in a child element",
    )


class _Converter:
    def __init__(self, schemas: _Schemas) -> None:
        self.s = schemas

    def value(self, elem: Element, frame: _Frame) -> Any:
        """The JSON value of a finished element (its children already converted)."""
        if any(_has_text(c.tail) for c in elem) or (_has_text(elem.text) and frame.props):
            raise _mixed(elem)
        if frame.nil:
            return None
        if frame.props:
            return {k: self.collect(frame.schema, k, v) for k, v in frame.props.items()}
        scalar = _scalar(elem.text or "", self.s.types(frame.schema), _local(elem.tag))
        return scalar if elem.text else _Empty(scalar)

    def collect(self, parent: dict[str, Any], name: str, values: list[Any]) -> Any:
        if len(values) > 1:
            return [v.value if isinstance(v, _Empty) else v for v in values]
        value = values[0]
        if "array" in self.s.types(self.s.child(parent, name)):
            return [] if isinstance(value, _Empty) else [value]
        return value.value if isinstance(value, _Empty) else value

    def child_schema(self, parent: _Frame, name: str) -> dict[str, Any]:
        sub = self.s.child(parent.schema, name)
        if "array" in self.s.types(sub):
            return self.s.items(sub)
        return sub

    def attributes(self, elem: Element, frame: _Frame) -> None:
        for raw, text in elem.attrib.items():
            if raw.startswith(f"{{{XSI}}}"):
                if raw == _NIL and text.strip() in ("true", "1"):
                    frame.nil = True
                continue
            name = _local(raw)
            sub = self.child_schema(frame, name)
            frame.attrs.add(name)
            frame.props.setdefault(name, []).append(_scalar(text, self.s.types(sub), name))

    def add(self, parent: _Frame, elem: Element, frame: _Frame) -> None:
        name = _local(elem.tag)
        if name in parent.attrs:
            raise XmlError(
                Code.XML_DUPLICATE_PROPERTY,
                f"{name!r} is given both as an attribute and as a child element",
            )
        parent.props.setdefault(name, []).append(self.value(elem, frame))


def _forbidden(e: Exception) -> XmlError:
    return XmlError(
        Code.XML_FORBIDDEN,
        "XML with a DTD, entity declarations or external references is refused "
        f"(no entity is ever expanded): {type(e).__name__}",
    )


def _release(elem: Element) -> None:
    """Free a converted element's subtree; keep its tail for the parent's mixed-content check."""
    tail = elem.tail
    elem.clear()
    elem.tail = tail


def _convert(body: bytes, schema: dict[str, Any], bulk: bool) -> Any:
    """Stream the document, converting each element when it ends and freeing its subtree."""
    conv = _Converter(_Schemas(schema))
    stack: list[_Frame] = []
    resources: list[Any] = []
    root: Any = None
    events = SafeET.iterparse(
        io.BytesIO(body),
        events=("start", "end"),
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    try:
        for event, elem in events:
            if event == "start":
                stack.append(_start(conv, stack, elem, schema, bulk))
                continue
            frame = stack.pop()
            if bulk and not stack:
                if _has_text(elem.text) or any(_has_text(c.tail) for c in elem):
                    raise _mixed(elem)
                root = resources
            elif bulk and len(stack) == 1:
                resources.append(_resource(conv, elem, frame))
            elif not stack:
                root = _resource(conv, elem, frame)
            else:
                conv.add(stack[-1], elem, frame)
            _release(elem)
    except ParseError as e:
        line, col = getattr(e, "position", (0, 0))
        raise XmlError(
            Code.INVALID_XML, f"the body is not well-formed XML at line {line} column {col}"
        ) from e
    except defusedxml.DefusedXmlException as e:
        raise _forbidden(e) from e
    return root


def _start(
    conv: _Converter, stack: list[_Frame], elem: Element, schema: dict[str, Any], bulk: bool
) -> _Frame:
    depth = len(stack)
    if depth >= MAX_DEPTH:
        raise XmlError(Code.XML_TOO_DEEP, f"elements are nested deeper than {MAX_DEPTH} levels")
    if depth == 0 and bulk:
        return _Frame(_NO_SCHEMA)  # the container: its attributes mean nothing
    if depth == 0 or (depth == 1 and bulk):
        frame = _Frame(schema)
    else:
        frame = _Frame(conv.child_schema(stack[-1], _local(elem.tag)))
    conv.attributes(elem, frame)
    return frame


def _resource(conv: _Converter, elem: Element, frame: _Frame) -> Any:
    value = conv.value(elem, frame)
    if isinstance(value, _Empty):
        return value.value if value.value != "" else {}
    return value


def resource_from_xml(body: bytes, schema: dict[str, Any]) -> Any:
    """A single event's body: the root element is the resource (normally an object)."""
    return _convert(body, schema, bulk=False)


def resources_from_xml(body: bytes, schema: dict[str, Any]) -> list[Any]:
    """A bulk body: the root element holds one element per resource."""
    out = _convert(body, schema, bulk=True)
    assert isinstance(out, list)
    return out
