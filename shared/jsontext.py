"""What orjson's parse would change silently, found without slowing the common case.

orjson, the parser of every stage, reads an integer beyond 64 bits as a rounded float
(``123456789012345678901234567890`` becomes ``1.2345678901234568e+29``) and keeps the
last of duplicate keys (``{"id": "a", "id": "b"}`` becomes ``{"id": "b"}``). Neither
may pass silently: such a document (a single event, or one item of a bulk) is refused
with ``number_out_of_range`` (pointer to the number) or ``duplicate_key`` (pointer to
the object; the message names the key).

The common case costs a few C passes. orjson serialises the parsed value; if that is
the text itself (compact JSON as orjson writes it, byte for byte), nothing was lost:
a dropped key would be missing and a rounded integer would be written as a float.
Otherwise simdjson parses the text (it refuses an integer beyond 64 bits), and the
colons of the text are counted against those of orjson's serialisation. Each key has
one structural colon, and a string's colons survive the round trip (``:`` or
``\\u003a`` in the text, ``:`` in orjson's output), so the counts are equal exactly when
no key was lost; an escaped backslash before ``u003a`` can only make the text's count
larger, never hide a lost key. Only a document that fails these tests is tokenised in
Python (:func:`faults`), which says where.

Numbers with a fraction or an exponent are IEEE 754 doubles by design (RFC 8259 §6):
``1e-400`` reads as 0.0, digits past the 17th are rounded, and ``1e400`` is not JSON
orjson accepts (400 ``invalid_json``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson
import simdjson

from shared import pointer
from shared.codes import Code
from shared.errors import ApiError
from shared.schema_rules import Issue

INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1  # what orjson reads as an int

_simdjson = simdjson.Parser()
_TOKEN = re.compile(
    rb'[ \t\n\r]*(?:("[^"\\]*(?:\\.[^"\\]*)*")|(-?\d+)(\.\d+)?([eE][-+]?\d+)?|([][{},:])|[a-z]+)'
)


def lossless(raw: bytes, value: Any) -> bool:
    """Whether ``value`` (orjson's parse of ``raw``) holds every integer and key of the
    text exactly. Cheap: see the module docstring."""
    try:
        out = orjson.dumps(value)
    except orjson.JSONEncodeError:  # nested past orjson's limit: let faults() look
        return False
    if out == raw:  # compact text as orjson writes it: a lost key or a float would show
        return True
    try:
        doc = _simdjson.parse(raw)
    except (ValueError, RuntimeError):  # BIGINT_ERROR, NUMBER_ERROR (2**64), or worse
        return False
    del doc  # the parser holds one document: no proxy may outlive this call
    colons = raw.count(b":")
    if b"\\" in raw:  # memchr: most texts have no escape at all
        colons += raw.count(b"\\u003a") + raw.count(b"\\u003A")
    return colons == out.count(b":")


@dataclass(slots=True)
class Fault:
    """Why one document (or one item of an array) cannot be taken as orjson read it."""

    issues: list[Issue] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # pointers of members orjson dropped

    def touches(self, at: str | None) -> bool:
        """Whether the value at pointer ``at`` (None: unknown) may differ from the text."""
        if at is None:
            return True
        return any(p == at or at.startswith(p + "/") for p in self.lost) or any(
            i.pointer == at for i in self.issues
        )


def _out_of_range(integer: bytes) -> bool:
    # 20 digits at most; never int() a longer one (Python refuses past 4,300 digits)
    if len(integer) - integer.startswith(b"-") > 20:
        return True
    return not INT_MIN <= int(integer) <= INT_MAX


def _number_issue(text: bytes, at: str) -> Issue:
    digits = text.decode()
    shown = digits if len(digits) <= 40 else f"{digits[:20]}…{digits[-8:]} ({len(digits)} digits)"
    return Issue(
        Code.NUMBER_OUT_OF_RANGE,
        f"the integer {shown} is outside the 64-bit range ({INT_MIN} to {INT_MAX}); it "
        f"would be stored as the rounded float {float(text):.17g}, so it is refused "
        "(send it as a string to keep every digit)",
        at,
    )


def _duplicate_issue(key: str, at: str) -> Issue:
    shown = repr(key) if len(key) <= 100 else f"{key[:100]!r}… ({len(key)} characters)"
    return Issue(
        Code.DUPLICATE_KEY,
        f"the key {shown} occurs more than once in this object; keys must be unique "
        "(RFC 8259 §4), and keeping either value would change the input silently",
        at,
    )


class _Frame:
    __slots__ = ("child", "keys", "want_key")

    def __init__(self, is_object: bool) -> None:
        self.keys: set[str] | None = set() if is_object else None
        self.child: str | int = 0
        self.want_key = is_object


def faults(raw: bytes, items: bool = False) -> dict[int | None, Fault]:
    """Every integer beyond 64 bits and every duplicate key of ``raw`` (text orjson
    accepted), by item index when ``items`` (the text is an array of items; pointers
    are then into the item), else under None. Exact, in Python: for the rare document
    :func:`lossless` refuses."""
    found: dict[int | None, Fault] = {}
    stack: list[_Frame] = []
    pos, end = 0, len(raw)
    base = 1 if items else 0

    def fault() -> Fault:
        key = stack[0].child if items and stack else None
        return found.setdefault(key if isinstance(key, int) else None, Fault())

    def here(depth: int) -> str:
        return pointer.join(f.child for f in stack[base:depth])

    while pos < end:
        m = _TOKEN.match(raw, pos)
        if m is None:
            break
        pos = m.end()
        string, integer, frac, exp, punct = m.groups()
        top = stack[-1] if stack else None
        if punct:
            if punct in b"{[":
                stack.append(_Frame(punct == b"{"))
            elif punct in b"}]":
                stack.pop()
            elif punct == b"," and top is not None:
                if top.keys is None:
                    top.child = int(top.child) + 1
                else:
                    top.want_key = True
            continue
        if string and top is not None and top.want_key and top.keys is not None:
            key = orjson.loads(string)
            top.want_key = False
            top.child = key
            if key in top.keys:
                f = fault()
                f.issues.append(_duplicate_issue(key, here(len(stack) - 1)))
                f.lost.append(here(len(stack)))
            top.keys.add(key)
        elif integer and not frac and not exp and _out_of_range(integer):
            fault().issues.append(_number_issue(integer, here(len(stack))))
    return found


def document_issues(raw: bytes, value: Any) -> list[Issue]:
    """Why the single document ``raw`` (parsed by orjson as ``value``) cannot be taken
    as parsed: [] in the common case."""
    if lossless(raw, value):
        return []
    found = faults(raw).get(None)
    return found.issues if found else []


def refuse_lossy(raw: bytes, value: Any) -> None:
    """Raise 400 with the first reason :func:`document_issues` finds (the gateway's check
    of a single event: about a microsecond for a typical body)."""
    issues = document_issues(raw, value)
    if issues:
        first = issues[0]
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        raise ApiError(first.code, first.message + more, pointer=first.pointer)


def item_faults(raw: bytes, items: list[Any]) -> dict[int, Fault]:
    """The items of the array ``raw`` (parsed by orjson as ``items``) that cannot be
    taken as parsed, by index: {} in the common case."""
    if lossless(raw, items):
        return {}
    return {i: f for i, f in faults(raw, items=True).items() if i is not None}
