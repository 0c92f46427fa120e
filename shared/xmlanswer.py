r"""XML answers: every JSON answer of the gateway, written as XML (pure).

The reverse of the body mapping of :mod:`shared.xmlcodec`, one rule per JSON value:
an object is an element holding one child element per property, in order; an array is
one element per member, repeated under the property's name; an empty array is one empty
element marked ``array="empty"`` (never left out, and never confused with ``[""]`` or
``[{}]``); an array that is itself a member of an array is one element holding its
members as ``<item>`` elements (the same rule, one level down); null is an empty element
with ``xsi:nil="true"``; ``""`` and ``{}`` are empty elements; a scalar is its JSON text
(strings unquoted, ``true``/``false``). A property name that is not an XML name becomes
``<property name="…">``. So a reader that knows the answer's documented shape (which
properties are arrays, objects, numbers or booleans, as a body's reader knows the
table's schema) recovers the JSON exactly.

XML 1.0 cannot carry some characters at all (U+0000-U+001F but tab, newline and
carriage return; U+FFFE, U+FFFF; lone surrogates), not even as ``&#…;`` references,
yet JSON strings may hold them (a receipt echoing a key such as ``"\u0001\u001b[31m"``).
An element whose text or ``name`` holds one is marked ``escaped="true"``, and its text
and ``name`` are then written in backslash notation: ``\uXXXX`` for each such character
and ``\\`` for a backslash, so the reader recovers the exact string
(``\u0001\u001b[31m``). Unmarked elements are written as they are.
Answers carry no other attributes.
"""

from __future__ import annotations

import re
from typing import Any

XSI = "http://www.w3.org/2001/XMLSchema-instance"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")


# XML 1.0 §2.2: Char ::= #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
_UNWRITABLE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\r", "&#13;")
    )


def _attribute(text: str) -> str:
    # a parser normalises a tab or newline in an attribute value to a space
    return _escape(text).replace("\t", "&#9;").replace("\n", "&#10;")


def _backslashed(text: str) -> str:
    r"""A string XML 1.0 cannot carry, in backslash notation: ``\\`` for a backslash and
    ``\uXXXX`` for each character XML forbids (all of them are below U+10000)."""
    return _UNWRITABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text.replace("\\", "\\\\"))


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _open(name: str, escaped: bool) -> tuple[str, str]:
    """The start tag's content and the end tag's name of an element for property ``name``."""
    if _NAME.match(name) and not name.lower().startswith("xml"):
        open_, close = name, name
    else:
        shown = _backslashed(name) if escaped else name
        open_, close = f'property name="{_attribute(shown)}"', "property"
    return (open_ + ' escaped="true"', close) if escaped else (open_, close)


def _property(out: list[str], name: str, v: Any) -> None:
    """A property: an array is one element per member, all named ``name``, in order; an
    empty array is one element ``<name array="empty"/>`` (never left out)."""
    if not isinstance(v, list):
        _element(out, name, v)
    elif not v:
        out.append(f'<{_open(name, bool(_UNWRITABLE.search(name)))[0]} array="empty"/>')
    else:
        for item in v:
            _element(out, name, item)


def _element(out: list[str], name: str, v: Any) -> None:
    """One element for ``v``: an object holds a child per property; an array (a member of
    an array) holds its members as ``<item>`` properties; null is ``xsi:nil="true"``."""
    text = None if v is None or isinstance(v, dict | list) else _plain(v)
    escaped = bool(_UNWRITABLE.search(name) or (text is not None and _UNWRITABLE.search(text)))
    open_, close = _open(name, escaped)
    if v is None:
        out.append(f'<{open_} xsi:nil="true"/>')
    elif isinstance(v, dict | list):
        out.append(f"<{open_}>")
        for k, sub in v.items() if isinstance(v, dict) else [("item", v)]:
            _property(out, str(k), sub)
        out.append(f"</{close}>")
    else:
        assert text is not None
        out.append(f"<{open_}>{_escape(_backslashed(text) if escaped else text)}</{close}>")


def dumps(data: dict[str, Any], root: str = "response") -> bytes:
    """An XML document for a JSON object (an answer): see the module's docstring."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>', f'<{root} xmlns:xsi="{XSI}">']
    for k, v in data.items():
        _property(out, str(k), v)
    out.append(f"</{root}>")
    return "".join(out).encode()


#: for answers written by hand (``shared.integration_data``): text and attribute escaping
escape_text = _escape
escape_attribute = _attribute
