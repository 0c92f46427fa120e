"""Singular JSONPath queries walked as dicts: the fast path of id, name and important
fields (python-jsonpath's engine costs ~15 µs a query). Pure."""

from __future__ import annotations

from typing import Any

import jsonpath


def normalise_path(path: str) -> str:
    """A bare path such as ``employeeId`` or ``a.b`` means ``$.employeeId`` / ``$.a.b``."""
    p = path.strip()
    if p.startswith("$"):
        return p
    if p.startswith("["):
        return "$" + p
    return "$." + p


Step = tuple[bool, Any]  # (is_index, name or index)
MISSING: Any = object()


def path_steps(path: str) -> tuple[Step, ...] | None:
    """The name/index steps of a singular JSONPath, or None if it needs the full engine."""
    try:
        compiled = jsonpath.compile(normalise_path(path))
        steps: list[Step] = []
        for seg in compiled.segments:  # type: ignore[union-attr]
            if type(seg).__name__ != "JSONPathChildSegment" or len(seg.selectors) != 1:
                return None
            sel = seg.selectors[0]
            kind = type(sel).__name__
            if kind == "NameSelector":
                steps.append((False, getattr(sel, "name")))  # noqa: B009 - untyped
            elif kind == "IndexSelector":
                steps.append((True, getattr(sel, "index")))  # noqa: B009
            else:
                return None
    except (jsonpath.JSONPathError, AttributeError):
        return None
    return tuple(steps) if steps else None


def walk(data: Any, steps: tuple[Step, ...]) -> Any:
    """Follow steps exactly as python-jsonpath resolves a singular query."""
    cur = data
    for is_index, key in steps:
        if isinstance(cur, dict):
            cur = cur.get(str(key) if is_index else key, MISSING)
            if cur is MISSING:
                return cur
        elif is_index and isinstance(cur, list) and -len(cur) <= key < len(cur):
            cur = cur[key]
        else:
            return MISSING
    return cur
