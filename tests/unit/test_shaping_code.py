"""The shaping plan written as code (shared/shaping_code.py) does exactly what the
generic walk of the plan does: same record afterwards, same issues, same order, for
random records against schemas with nesting past the inline depth, arrays and
tuples, container defaults and values that cannot be normalised."""

from __future__ import annotations

import copy
import random
from typing import Any

from shared import shaping, shaping_code

LEAVES = [
    "a@EXAMPLE.com", " b@x.org ", "not an email", "2000-01-01T01:00:00+01:00",
    "2000-01-01 00:00:00", "yesterday", "HTTPS://Ex.com:443/a/../b", "https://ex.com/p",
    "::", 17, 3.5, True, None, "", "+1 (555) 123-4567",
]  # fmt: skip
FORMATS = ["email", "date-time", "uri", "date", "time", "phone", None, None]


def schema(rng: random.Random, depth: int) -> dict[str, Any]:
    if depth > 9 or rng.random() < 0.3:
        fmt = rng.choice(FORMATS)
        out: dict[str, Any] = {"type": "string"}
        if fmt:
            out["format"] = fmt
        if rng.random() < 0.3:
            out["default"] = rng.choice(["x", 1, {"k": [1]}, [], None])
        return out
    kind = rng.random()
    if kind < 0.15:
        return {"type": "array", "items": schema(rng, depth + 1)}
    if kind < 0.25:
        return {"type": "array", "prefixItems": [schema(rng, depth + 1) for _ in range(2)]}
    props = {f"p{i}": schema(rng, depth + 1) for i in range(rng.randint(1, 3))}
    out = {"type": "object", "properties": props}
    if rng.random() < 0.3:
        out["default"] = {"d": 1}
    return out


def record(rng: random.Random, s: dict[str, Any], depth: int = 0) -> Any:
    if rng.random() < 0.1:
        return rng.choice(LEAVES)  # any type anywhere: the shaper must take it
    if "properties" in s:
        return {
            k: record(rng, sub, depth + 1) for k, sub in s["properties"].items()
            if rng.random() < 0.85
        }  # fmt: skip
    if "items" in s:
        return [record(rng, s["items"], depth + 1) for _ in range(rng.randint(0, 3))]
    if "prefixItems" in s:
        return [record(rng, sub, depth + 1) for sub in s["prefixItems"]]
    return rng.choice(LEAVES)


def test_written_code_equals_the_generic_walk() -> None:
    rng = random.Random(14)
    compared = 0
    for _ in range(300):
        root = {"type": "object", "properties": {f"r{i}": schema(rng, 0) for i in range(4)}}
        plan = shaping.compile_plan({"resmo": {"defaultRegion": "US"}, **root})
        for _ in range(10):
            data = record(rng, root)
            if type(data) is not dict:
                continue
            a, b = copy.deepcopy(data), copy.deepcopy(data)
            assert plan.shape(a) == plan.shape_generic(b)
            assert a == b
            compared += 1
    assert compared > 2000


def test_deep_objects_past_the_inline_depth_are_shaped_too() -> None:
    leaf: dict[str, Any] = {"type": "string", "format": "email"}
    s: dict[str, Any] = {"type": "object", "properties": {"m": leaf, "d": {"default": 0}}}
    for _ in range(shaping_code.INLINE_DEPTH + 3):
        s = {"type": "object", "properties": {"n": s}}
    plan = shaping.compile_plan(s)
    data: dict[str, Any] = {"m": " a@EXAMPLE.com "}
    for _ in range(shaping_code.INLINE_DEPTH + 3):
        data = {"n": data}
    plan.shape(data)
    inner = data
    while "n" in inner:
        inner = inner["n"]
    assert inner == {"m": "a@example.com", "d": 0}
    assert plan._code is not None and "_walk(" in (plan._code.__doc__ or "")


def test_names_are_literals_whatever_they_hold() -> None:
    odd = "a'\"\\\n\x00}{) ; import os"
    plan = shaping.compile_plan(
        {"type": "object", "properties": {odd: {"type": "string", "format": "email"}}}
    )
    data = {odd: " X@EXAMPLE.com"}
    assert plan.shape(data) == []
    assert data == {odd: "X@example.com"}
