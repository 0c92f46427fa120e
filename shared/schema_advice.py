"""Schema advice (seed 003): what a schema is accepted without, but should have.

Pure. :func:`advise` walks a submitted schema from the root through ``properties``,
``items``, ``prefixItems`` and ``$defs`` and returns one warning per finding:

* ``object_without_properties``: a ``"type": "object"`` schema with no ``properties``
  (its members are not described, so nothing in them is validated or shaped);
* ``array_without_items``: a ``"type": "array"`` schema with neither ``items`` nor
  ``prefixItems``;
* ``undescribed_attribute``: a property without a ``title`` or without a
  ``description`` (the message says which it lacks).

A warning is ``{"code", "message", "pointer"}``, the pointer into the request body
(``/schema/properties/…``). At most :data:`MAX_WARNINGS` are listed; a last one says
how many more there were.
"""

from __future__ import annotations

from typing import Any

from shared import pointer
from shared.codes import Advice

MAX_WARNINGS = 100
MAX_DEPTH = 64


def advise(schema: dict[str, Any], base: str = "/schema") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    _walk(schema, base, found, 0)
    if len(found) > MAX_WARNINGS:
        more = len(found) - MAX_WARNINGS
        found = found[:MAX_WARNINGS]
        found[-1] = _warning(
            found[-1]["code"], found[-1]["message"] + f" ({more} more warnings not listed)",
            found[-1]["pointer"],
        )  # fmt: skip
    return found


def _warning(code: str, message: str, at: str) -> dict[str, Any]:
    return {"code": code, "message": message, "pointer": at}


def _types(s: dict[str, Any]) -> set[str]:
    t = s.get("type")
    if isinstance(t, str):
        return {t}
    return {x for x in t if isinstance(x, str)} if isinstance(t, list) else set()


def _walk(s: Any, at: str, found: list[dict[str, Any]], depth: int) -> None:
    if not isinstance(s, dict) or depth > MAX_DEPTH:
        return
    types = _types(s)
    props = s.get("properties")
    if "object" in types and not isinstance(props, dict):
        found.append(_warning(
            Advice.OBJECT_WITHOUT_PROPERTIES,
            "an object schema without properties: its members are neither described, "
            "validated nor normalised (seed 003: objects should list their properties)", at,
        ))  # fmt: skip
    if "array" in types and "items" not in s and "prefixItems" not in s:
        found.append(_warning(
            Advice.ARRAY_WITHOUT_ITEMS,
            "an array schema without items: its elements are neither described, validated "
            "nor normalised (seed 003: arrays should say what their items are)", at,
        ))  # fmt: skip
    if isinstance(props, dict):
        for key, sub in props.items():
            where = pointer.join(["properties", key], at)
            _attribute(sub, where, found)
            _walk(sub, where, found, depth + 1)
    if isinstance(s.get("items"), dict):
        _walk(s["items"], f"{at}/items", found, depth + 1)
    prefix = s.get("prefixItems")
    for i, sub in enumerate(prefix if isinstance(prefix, list) else []):
        _walk(sub, f"{at}/prefixItems/{i}", found, depth + 1)
    defs = s.get("$defs")
    if isinstance(defs, dict):
        for key, sub in defs.items():
            _walk(sub, pointer.join(["$defs", key], at), found, depth + 1)


def _attribute(sub: Any, at: str, found: list[dict[str, Any]]) -> None:
    if not isinstance(sub, dict):
        return
    lacking = [k for k in ("title", "description") if not isinstance(sub.get(k), str)]
    if lacking:
        found.append(_warning(
            Advice.UNDESCRIBED_ATTRIBUTE,
            f"the attribute has no {' and no '.join(lacking)}: seed 003 recommends both, "
            "as a human-readable name and description of the field", at,
        ))  # fmt: skip
