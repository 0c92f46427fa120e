"""Per-vendor integration data (seed 001): the rules of a vendor's name-value map. Pure.

A map holds opaque strings under XML NCNames (ASCII: ``[A-Za-z_][A-Za-z0-9._-]*``), so
every map round-trips through XML; :data:`LINK` is reserved (the representation's own
links, ignored in a PUT body so that a GET answer can be sent back). Known properties are
checked: ``VendorID`` (≤ 64 characters, the URI's vendor case-insensitively),
``SuppressIntegration`` (``true``/``false``) and ``Uri`` (≤ 128 characters, an absolute
http(s) URI). XML bodies are read with defusedxml (no DTD, entities or external
references); answers are written here too (:func:`instance_xml`, :func:`collection_xml`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import ParseError

import defusedxml
import orjson
from defusedxml import ElementTree as SafeET
from yarl import URL

from shared.codes import Code
from shared.errors import ApiError
from shared.xmlanswer import escape_attribute as _attribute
from shared.xmlanswer import escape_text as _escape

VENDOR_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,63}$")
MAX_NAMES = 200
MAX_BYTES = 64 << 10  # of the map as JSON (and of a PUT body)
MAX_VENDOR_ID = 64
MAX_URI = 128
LINK = "Link"
REL_RELATED = "https://schemas.ingestd.dev/api/v1/related/"
# XML 1.0 cannot carry these characters, not even as references
_UNWRITABLE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SLUG_DROP = re.compile(r"[^a-z0-9_.-]+")


class DataMap(dict[str, str]):
    """A validated map (name → opaque string), in its given order."""


def vendor_id(raw: str, pointer: str = "/path/vendorId") -> str:
    """The canonical (lower-cased) vendor id, or 400 ``invalid_vendor_id``."""
    v = raw.lower()
    if not VENDOR_RE.match(v):
        raise ApiError(
            Code.INVALID_VENDOR_ID,
            f"vendor id {raw!r} must match ^[a-z0-9][a-z0-9_.-]{{0,63}}$ once lower-cased",
            pointer=pointer,
        )
    return v


def slug(name: str) -> str:
    """An integration's default vendor id: its name lower-cased and slugged (the same rule
    as migration 0008's back-fill)."""
    s = _SLUG_DROP.sub("-", name.lower()).strip("-._")[:55].strip("-._")
    return s or "integration"


def _bad(message: str, pointer: str) -> ApiError:
    return ApiError(Code.INVALID_INTEGRATION_DATA, message, pointer=pointer)


def check_map(items: list[tuple[str, Any]], vendor: str) -> DataMap:
    """Validate the (name, value) pairs of a PUT body; ``Link`` pairs are dropped."""
    out = DataMap()
    for name, value in items:
        ptr = "/" + name.replace("~", "~0").replace("/", "~1")
        if name == LINK:
            continue
        if not NAME_RE.match(name) or name.lower().startswith("xml"):
            raise _bad(
                f"name {name!r} must be an XML NCName ([A-Za-z_][A-Za-z0-9._-]*, not starting"
                " with 'xml') of at most 64 characters",
                ptr,
            )
        if name in out:
            raise _bad(f"name {name!r} is given twice", ptr)
        if not isinstance(value, str):
            raise _bad(
                f"{name!r} must be a string: every value is opaque text (a number or a boolean"
                " is refused so that XML and JSON stay equivalent; no nesting)",
                ptr,
            )
        if _UNWRITABLE.search(value):
            raise _bad(f"{name!r} holds a character XML 1.0 cannot carry", ptr)
        out[name] = value
    if len(out) > MAX_NAMES:
        raise _bad(f"the map has {len(out)} names; at most {MAX_NAMES} are allowed", "")
    size = len(orjson.dumps(out))
    if size > MAX_BYTES:
        raise ApiError(
            Code.BODY_TOO_LARGE,
            f"the map is {size} bytes as JSON; the limit is {MAX_BYTES}",
            status=413,
        )
    _known(out, vendor)
    return out


def _known(m: DataMap, vendor: str) -> None:
    vid = m.get("VendorID")
    if vid is not None:
        if len(vid) > MAX_VENDOR_ID:
            raise _bad(f"VendorID is at most {MAX_VENDOR_ID} characters", "/VendorID")
        if vid.lower() != vendor:
            raise ApiError(
                Code.VENDOR_MISMATCH,
                f"VendorID {vid!r} is not the URI's vendor {vendor!r}",
                status=409,
                pointer="/VendorID",
            )
    suppress = m.get("SuppressIntegration")
    if suppress is not None and suppress not in ("true", "false"):
        raise _bad("SuppressIntegration must be 'true' or 'false'", "/SuppressIntegration")
    uri = m.get("Uri")
    if uri is not None and not _absolute_http(uri):
        raise _bad(f"Uri must be an absolute http(s) URI of at most {MAX_URI} characters", "/Uri")


def _absolute_http(uri: str) -> bool:
    if len(uri) > MAX_URI or uri != uri.strip() or any(c.isspace() for c in uri):
        return False
    try:
        u = URL(uri)
    except ValueError:
        return False
    return u.scheme in ("http", "https") and bool(u.host)


def from_json(body: Any, vendor: str) -> DataMap:
    if not isinstance(body, dict):
        raise ApiError(Code.BODY_NOT_OBJECT, "the body must be a JSON object", pointer="")
    return check_map(list(body.items()), vendor)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def from_xml(body: bytes, vendor: str) -> DataMap:
    """A PUT's XML body: a root element whose name ends in ``IntegrationData`` holding one
    text-only element per name; ``<Link>`` elements are ignored."""
    try:
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except ParseError as e:
        line, col = getattr(e, "position", (0, 0))
        raise ApiError(
            Code.INVALID_XML,
            f"the body is not well-formed XML at line {line} column {col}: {e}",
        ) from e
    except defusedxml.DefusedXmlException as e:
        raise ApiError(
            Code.XML_FORBIDDEN,
            "XML with a DTD, entity declarations or external references is refused "
            f"(no entity is ever expanded): {type(e).__name__}",
        ) from e
    if not _local(root.tag).endswith("IntegrationData"):
        raise _bad(f"the root element <{_local(root.tag)}> must end in 'IntegrationData'", "")
    if (root.text or "").strip() or root.attrib:
        raise _bad("the root element holds only child elements", "")
    items: list[tuple[str, Any]] = []
    for child in root:
        name = _local(child.tag)
        if (child.tail or "").strip():
            raise _bad("text between the elements of the root element", "")
        if name == LINK:
            continue
        if len(child) or child.attrib:
            raise _bad(f"<{name}> must hold text only (no child elements, no attributes)", "")
        items.append((name, child.text or ""))
    return check_map(items, vendor)


@dataclass(frozen=True, slots=True)
class Link:
    rel: str
    href: str
    title: str | None = None
    inline: dict[str, str] | None = None  # an expanded vendor's map


def instance_json(m: dict[str, str], self_href: str) -> dict[str, Any]:
    link = {"rel": "self", "type": "application/json", "href": self_href}
    return {**m, LINK: [link]}


def collection_json(links: list[Link], self_href: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for k in links:
        entry: dict[str, Any] = {"rel": k.rel, "type": "application/json"}
        if k.title is not None:
            entry["title"] = k.title
        entry["href"] = k.href
        if k.inline is not None:
            entry["IntegrationData"] = instance_json(k.inline, k.href)
        out.append(entry)
    out.append({"rel": "self", "type": "application/json", "href": self_href})
    return {LINK: out}


def _xml_link(k: Link, body: str = "") -> str:
    title = f' title="{_attribute(k.title)}"' if k.title is not None else ""
    head = (
        f'<Link rel="{_attribute(k.rel)}" type="application/xml"{title} href="{_attribute(k.href)}"'
    )
    return f"{head}>{body}</Link>" if body else f"{head}/>"


def _instance_element(m: dict[str, str], self_href: str) -> str:
    inner = "".join(f"<{n}>{_escape(v)}</{n}>" for n, v in m.items())
    return f"<IntegrationData>{inner}{_xml_link(Link('self', self_href))}</IntegrationData>"


_DECL = '<?xml version="1.0" encoding="UTF-8"?>'


def instance_xml(m: dict[str, str], self_href: str) -> bytes:
    return (_DECL + _instance_element(m, self_href)).encode()


def collection_xml(links: list[Link], self_href: str) -> bytes:
    parts = [
        _xml_link(k, _instance_element(k.inline, k.href) if k.inline is not None else "")
        for k in links
    ]
    parts.append(_xml_link(Link("self", self_href)))
    return (
        _DECL + "<IntegrationDataCollection>" + "".join(parts) + "</IntegrationDataCollection>"
    ).encode()


def parse_etags(header: str) -> list[str]:
    """The entity tags of an ``If-Match``/``If-None-Match`` header (``["*"]`` for ``*``)."""
    return [t.strip().removeprefix("W/") for t in header.split(",") if t.strip()]
