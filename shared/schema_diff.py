"""The structural differences between two versions of a custom schema: pure.

:func:`diff` walks both schemas in step, from the root through ``properties``,
``items``, ``prefixItems`` and ``$defs`` / ``definitions``, and reports, each with a
JSON pointer into the schema (the candidate's for what it adds, the current one's for
what it removes):

- ``property_added`` / ``property_removed``: a key of ``properties`` (``type``: its
  types, or null when it names none);
- ``property_retyped``: a property or an items schema whose ``type`` changed
  (``before`` / ``after``: the sorted types, null for none);
- ``required_added`` / ``required_removed``: a name of an object's ``required``
  (the pointer is that ``required`` keyword, ``property`` the name);
- ``constraints_changed``: any other keyword of a node that both have (``keywords``,
  sorted), e.g. ``format``, ``enum``, ``pattern``, ``default``, ``resmo``.

``title``, ``description``, ``$comment`` and ``examples`` change nothing a resource
must satisfy and are not reported. ``$ref`` is compared as a keyword, not followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from shared import pointer

Change = Literal[
    "property_added",
    "property_removed",
    "property_retyped",
    "required_added",
    "required_removed",
    "constraints_changed",
]
#: keywords walked into, or compared on their own (the others are constraints)
_STRUCTURE = frozenset(
    {"properties", "required", "items", "prefixItems", "type", "$defs", "definitions"}
)
_ANNOTATIONS = frozenset({"title", "description", "$comment", "examples"})


@dataclass(frozen=True, slots=True)
class Difference:
    change: Change
    pointer: str
    details: tuple[tuple[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"change": self.change, "pointer": self.pointer, **dict(self.details)}


def types_of(node: Any) -> list[str] | None:
    """The sorted types a schema node allows by its ``type`` keyword; None for none."""
    if not isinstance(node, dict) or "type" not in node:
        return None
    t = node["type"]
    if isinstance(t, str):
        return [t]
    if isinstance(t, list):
        return sorted(str(x) for x in t)
    return [str(t)]


def diff(current: Any, candidate: Any) -> list[Difference]:
    """Every difference from ``current`` to ``candidate``: a node's own (its type, its
    other keywords, its ``required``, the properties it adds or removes), then those
    below it, depth first with keys sorted. Iterative: a schema may nest deeper than
    Python's stack."""
    out: list[Difference] = []
    stack: list[tuple[Any, Any, str, bool]] = [(current, candidate, "", False)]
    while stack:
        old, new, at, typed = stack.pop()
        found: list[Difference] = []
        more: list[tuple[Any, Any, str, bool]] = []
        _node(old, new, at, typed, found, more)
        out.extend(found)
        stack.extend(reversed(more))
    return out


def _node(
    old: Any,
    new: Any,
    at: str,
    typed: bool,
    found: list[Difference],
    more: list[tuple[Any, Any, str, bool]],
) -> None:
    """Compare one pair of nodes; queue the pairs below them."""
    if not isinstance(old, dict) or not isinstance(new, dict):  # true / false schemas
        if old != new:
            found.append(Difference("constraints_changed", at, (("keywords", []),)))
        return
    if typed and types_of(old) != types_of(new):
        found.append(
            Difference(
                "property_retyped", at, (("before", types_of(old)), ("after", types_of(new)))
            )
        )
    keywords = sorted(
        k
        for k in set(old) | set(new)
        if k not in _STRUCTURE and k not in _ANNOTATIONS and old.get(k) != new.get(k)
    )
    if keywords:
        found.append(Difference("constraints_changed", at, (("keywords", keywords),)))
    _required(old, new, at, found)
    _properties(old, new, at, found, more)
    if "items" in old and "items" in new:
        more.append((old["items"], new["items"], pointer.join(["items"], at), True))
    elif ("items" in old) != ("items" in new):
        found.append(Difference("constraints_changed", at, (("keywords", ["items"]),)))
    a, b = old.get("prefixItems"), new.get("prefixItems")
    if isinstance(a, list) and isinstance(b, list):
        more.extend((a[n], b[n], f"{at}/prefixItems/{n}", True) for n in range(min(len(a), len(b))))
    if a != b and not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)):
        found.append(Difference("constraints_changed", at, (("keywords", ["prefixItems"]),)))
    for key in ("$defs", "definitions"):
        da, db = old.get(key), new.get(key)
        if isinstance(da, dict) and isinstance(db, dict):
            for name in sorted(set(da) & set(db)):
                more.append((da[name], db[name], pointer.join([key, name], at), False))


def _required(old: dict[str, Any], new: dict[str, Any], at: str, found: list[Difference]) -> None:
    a = _names(old.get("required"))
    b = _names(new.get("required"))
    where = pointer.join(["required"], at)
    for name in sorted(b - a):
        found.append(Difference("required_added", where, (("property", name),)))
    for name in sorted(a - b):
        found.append(Difference("required_removed", where, (("property", name),)))


def _properties(
    old: dict[str, Any],
    new: dict[str, Any],
    at: str,
    found: list[Difference],
    more: list[tuple[Any, Any, str, bool]],
) -> None:
    a = old.get("properties")
    b = new.get("properties")
    a = a if isinstance(a, dict) else {}
    b = b if isinstance(b, dict) else {}
    for name in sorted(set(a) | set(b)):
        where = pointer.join(["properties", name], at)
        if name not in a:
            found.append(Difference("property_added", where, (("type", types_of(b[name])),)))
        elif name not in b:
            found.append(Difference("property_removed", where, (("type", types_of(a[name])),)))
        else:
            more.append((a[name], b[name], where, True))


def _names(value: Any) -> set[str]:
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else set()
