"""Regular expressions in custom schemas (``pattern``, ``patternProperties``): bounded cost.

They run on the linear-time engine of the Rust ``regex`` crate, so checking a value
costs time linear in its length whatever the pattern. That engine has no lookaround
and no backreferences: :func:`check_patterns` refuses a pattern it cannot compile, and
one whose counted repetitions expand past :data:`MAX_PATTERN_POSITIONS` (beyond that
the engine may fall back to simulating every position at once, seconds per MB).
Schema versions stored before that rule keep validating on the backtracking engine
under :data:`BACKTRACK_LIMIT`; a value that exceeds it is rejected
(``pattern_too_costly``). Backtracking is not bounded by that limit in time (it counts
steps, and one step can compare a long backreference), which is why new schemas never
use it. Pure: values in, values out.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs

from shared import pointer
from shared.codes import Code
from shared.errors import SchemaRuleError

#: positions of a pattern once its counted repetitions are expanded (``a{1,255}`` is 255)
MAX_PATTERN_POSITIONS = 1000
#: backtracking steps per match, for schema versions stored with lookaround/backreferences
BACKTRACK_LIMIT = 10_000
LINEAR = jsonschema_rs.RegexOptions()
BACKTRACKING = jsonschema_rs.FancyRegexOptions(backtrack_limit=BACKTRACK_LIMIT)


# keywords whose values are data, not schemas: a "pattern" key inside them is not a regex
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "resmo"})
# keywords whose values map names to schemas: a key there is a name, not a keyword
_NAME_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


def check_patterns(schema: Any, base: str) -> None:
    """Refuse a ``pattern`` or ``patternProperties`` key the linear engine cannot run
    (lookaround, backreferences, invalid) or whose repetitions expand too far."""
    stack: list[tuple[Any, str, bool]] = [(schema, base, False)]  # (node, pointer, names?)
    while stack:
        node, at, names = stack.pop()
        if isinstance(node, list):
            stack.extend((v, f"{at}/{i}", False) for i, v in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            where = f"{at}/{pointer.escape(key)}"
            if names:  # a property name (or $defs name) maps to a schema
                stack.append((value, where, False))
                continue
            if key in _DATA_KEYWORDS:
                continue
            if key == "pattern" and isinstance(value, str):
                _check_pattern(value, where)
            elif key == "patternProperties" and isinstance(value, dict):
                for p in value:
                    _check_pattern(p, f"{where}/{pointer.escape(p)}")
            stack.append((value, where, key in _NAME_MAPS))


def _check_pattern(p: str, where: str) -> None:
    positions = pattern_positions(p)
    if positions > MAX_PATTERN_POSITIONS:
        raise SchemaRuleError(
            Code.INVALID_SCHEMA,
            f"pattern {p!r} expands to {positions} positions once its counted repetitions "
            f"are unrolled (at most {MAX_PATTERN_POSITIONS}: checking a long value against "
            "it could take seconds); use minLength/maxLength for lengths",
            pointer=where,
        )
    if _compiles(p, LINEAR):
        return
    if not _compiles(p, BACKTRACKING):
        raise SchemaRuleError(
            Code.INVALID_SCHEMA,
            f"not a valid JSON Schema 2020-12: pattern {p!r} is not a valid regular "
            "expression (or compiles past the size limit)",
            pointer=where,
        )
    raise SchemaRuleError(
        Code.INVALID_SCHEMA,
        f"pattern {p!r} uses lookaround ((?=, (?!, (?<=, (?<!) or a backreference (\\1, "
        "\\k<name>), which ingestd refuses: it checks patterns in linear time, which those "
        "cannot be. A lookahead rule such as ^(?=.*[A-Z])(?=.*\\d).{8,}$ can be written "
        '"allOf": [{"pattern": "[A-Z]"}, {"pattern": "\\\\d"}], "minLength": 8',
        pointer=where,
    )


def _compiles(p: str, options: Any) -> bool:
    try:
        jsonschema_rs.Draft202012Validator({"pattern": p}, pattern_options=options)
    except (jsonschema_rs.ValidationError, ValueError):
        return False
    return True


_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_FLAGS = re.compile(r"\(\?[A-Za-z-]*\)")  # (?i): flags, not a group
_GROUP = re.compile(r"\((?:\?(?:[=!]|<[=!]|P?<[A-Za-z_]\w*>|[A-Za-z-]*:))?")


def pattern_positions(p: str) -> int:
    """How many positions the pattern's automaton has once counted repetitions are
    unrolled (a class or an escape counts as one, alternatives add up): a bound of the
    threads a regex simulation may have to run at once."""
    frames: list[list[int]] = [[0, 0]]  # per open group: [total, size of the last atom]
    i = 0
    while i < len(p):
        c = p[i]
        if c == "(" and (flags := _FLAGS.match(p, i)):
            i = flags.end()
            continue
        if c == "(":
            frames.append([0, 0])
            i = _GROUP.match(p, i).end()  # type: ignore[union-attr]  # matches "(" at least
            continue
        if c == "{" and (m := _QUANTIFIER.match(p, i)):
            lo, hi = int(m.group(1)), m.group(2)
            times = lo if hi is None else lo + 1 if hi == "" else max(lo, int(hi))
            top = frames[-1]
            top[0] += top[1] * (times - 1)
            top[1] *= times
            i = m.end()
            continue
        if c in "|^$*+?":
            i += 1
            continue
        if c == ")" and len(frames) > 1:
            size, i = frames.pop()[0], i + 1
        else:
            size, i = 1, _atom_end(p, i)
        frames[-1][0] += size
        frames[-1][1] = size
    return sum(f[0] for f in frames)  # unbalanced groups: the compiler refuses them anyway


def _atom_end(p: str, i: int) -> int:
    """The index after the atom at ``i``: an escape, a character class or one character."""
    if p[i] == "\\":
        if p[i + 1 : i + 2] in ("p", "P", "x", "u") and p[i + 2 : i + 3] == "{":
            return p.find("}", i) + 1 or len(p)
        return i + 2
    if p[i] != "[":
        return i + 1
    depth, j = 0, i
    while j < len(p):
        if p[j] == "\\":
            j += 2
            continue
        if p[j] == "[":
            depth += 1
            j += 1
            j += p[j : j + 1] == "^"
            j += p[j : j + 1] == "]"  # a "]" first in a class is a literal
            continue
        if p[j] == "]":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return len(p)
