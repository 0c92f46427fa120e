"""Field ownership (seed 002, Relatics): which properties a sync may carry.

Pure: values in, values out. A property annotated ``"x-ownership": "local"`` belongs to
ingestd's users, not to the syncing system (``"external"``, the default). Local
properties are found once, when a schema is compiled (:meth:`Ownership.of`):

* they are reached from the root through ``properties`` only (``/a``, ``/a/b``); an
  annotation anywhere else (``items``, ``$defs``, ``allOf`` …) is refused, since a
  merge could not say which stored value it belongs to. Inside a local property
  everything is local;
* a local property may not be ``required`` (a sync never carries it), nor hold the
  resource's id or name.

A sync's payload is validated against :meth:`Ownership.ingest_schema`, the schema with
every local property's subschema replaced by ``false``: a local property in a payload
fails there, and :meth:`Ownership.not_owned` tells that failure apart (issue
``field_not_owned``). The projector keeps the stored local values on every sync
(:func:`keep_local`); a ``PATCH`` (:func:`check_patch`, :func:`apply_patch`) edits
local values only.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import json_merge_patch  # type: ignore[import-untyped]

from shared import pointer
from shared.codes import Code
from shared.errors import SchemaRuleError

KEYWORD = "x-ownership"
LOCAL = "local"
EXTERNAL = "external"
Path = tuple[str, ...]
# keywords whose values are data, not subschemas: an "x-ownership" key in them is data
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples", "resmo"})


@dataclass(frozen=True, slots=True)
class PatchIssue:
    """Why a merge patch may not be applied: ``field_not_owned`` or ``unknown_field``."""

    code: Code
    message: str
    pointer: str


@dataclass(frozen=True, slots=True)
class Ownership:
    """The local properties of one schema (``local`` empty: every field is external)."""

    local: tuple[Path, ...]
    declared: frozenset[Path]  # every property reached through ``properties`` from the root

    @classmethod
    def of(cls, body: dict[str, Any], base: str = "") -> Ownership:
        """Find the local properties; :class:`SchemaRuleError` if one is misplaced."""
        chain: dict[int, Path] = {}
        declared: set[Path] = set()
        local: list[Path] = []
        _properties(body, (), chain, declared)
        for node, at in _annotated(body, base):
            value = node[KEYWORD]
            if value not in (LOCAL, EXTERNAL):
                raise SchemaRuleError(
                    Code.INVALID_SCHEMA,
                    f'{KEYWORD} must be "{LOCAL}" or "{EXTERNAL}", not {value!r}',
                    pointer=f"{at}/{KEYWORD}",
                )
            path = chain.get(id(node))
            if value == LOCAL and path is None:
                raise SchemaRuleError(
                    Code.INVALID_SCHEMA,
                    f'"{KEYWORD}": "{LOCAL}" is valid only on a property reached from the '
                    "root through properties (not under items, $defs, allOf and the like, "
                    "nor on the root)",
                    pointer=f"{at}/{KEYWORD}",
                )
            if value == LOCAL and path is not None:
                local.append(path)
        outer = tuple(p for p in sorted(local) if not any(_under(p, q) for q in local if q != p))
        own = cls(outer, frozenset(declared))
        own._check_required(body, base)
        return own

    @property
    def pointers(self) -> list[str]:
        return [pointer.join(p) for p in self.local]

    def is_local(self, path: Path) -> bool:
        return any(_under(path, p) for p in self.local)

    def holds_local(self, path: Path) -> bool:
        """``path`` is an (external) object some local property lies inside."""
        return any(len(p) > len(path) and p[: len(path)] == path for p in self.local)

    def _check_required(self, body: dict[str, Any], base: str) -> None:
        for path in self.local:
            parent = _subschema(body, path[:-1])
            required = parent.get("required") if isinstance(parent, dict) else None
            if isinstance(required, list) and path[-1] in required:
                at = pointer.join(_schema_path(path[:-1]), base)
                raise SchemaRuleError(
                    Code.INVALID_SCHEMA,
                    f"the local property {pointer.join(path)} cannot be required: a sync "
                    "never carries it",
                    pointer=f"{at}/required",
                )

    def check_resmo_path(self, steps: tuple[tuple[bool, Any], ...] | None, at: str) -> None:
        """The id and the name come from the synced (external) fields. ``steps``: a
        singular path's (is index, name or index) steps."""
        if steps is None or any(is_index for is_index, _ in steps):
            return
        names = tuple(str(k) for _, k in steps)
        if self.is_local(names):
            raise SchemaRuleError(
                Code.INVALID_RESMO_PATH,
                f"{pointer.join(names)} is a local property; the id and the name must be "
                "external fields (a sync never carries local ones)",
                pointer=at,
            )

    def is_local_pointer(self, where: str) -> bool:
        return self.is_local(tuple(pointer.unescape(t) for t in where.split("/")[1:]))

    def without_local_defaults(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` without the ``default`` of local properties: a sync never fills them
        in (the record would then carry a local field)."""
        return self._replace_local(body, lambda sub: _no_default(sub))

    def ingest_schema(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with every local property's subschema replaced by ``false`` (copied
        only along the way to them; the stored body is not changed)."""
        return self._replace_local(body, lambda _: False)

    def _replace_local(self, body: dict[str, Any], new: Any) -> dict[str, Any]:
        out = dict(body)
        for path in self.local:
            node = out
            for name in path[:-1]:
                props = dict(node["properties"])
                node["properties"] = props
                props[name] = node = dict(props[name])
            props = dict(node["properties"])
            props[path[-1]] = new(props[path[-1]])
            node["properties"] = props
        return out

    def local_patch(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """The merge patch that takes ``before``'s local values to ``after``'s (external
        fields untouched): what the projector applies for a PATCH."""
        out: dict[str, Any] = {}
        for path in self.local:
            old, new = _get(before, list(path)), _get(after, list(path))
            if old == new:
                continue
            node = out
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = None if new is _ABSENT else new
        return out

    def refused(self, error: Any) -> tuple[Code, str, str] | None:
        """(code, message, pointer) when a validation error of :meth:`ingest_schema` is a
        local property that a payload carried; else None."""
        if type(error.kind).__name__ != "FalseSchema":
            return None
        at = list(error.schema_path)
        if len(at) % 2 or at[::2].count("properties") * 2 != len(at):
            return None
        if tuple(str(n) for n in at[1::2]) not in self.local:
            return None
        where = pointer.join(error.instance_path)
        message = (
            f"{where} is a local field (x-ownership local): it belongs to ingestd's users "
            "and a sync may not carry it (edit it with PATCH /api/v1/resources/...)"
        )
        return Code.FIELD_NOT_OWNED, message, where

    def check_patch(self, patch: dict[str, Any]) -> PatchIssue | None:
        """The first thing wrong with a merge patch: a field that is not local (or an
        external object set to a non-object or removed), or a field the schema does not
        declare. None: it touches local fields only."""
        stack: list[tuple[Path, dict[str, Any]]] = [((), patch)]
        while stack:
            at, obj = stack.pop()
            for name, value in obj.items():
                path = (*at, name)
                if self.is_local(path):
                    continue
                where = pointer.join(path)
                if self.holds_local(path) and isinstance(value, dict):
                    stack.append((path, value))
                elif path in self.declared or self.holds_local(path):
                    return PatchIssue(
                        Code.FIELD_NOT_OWNED,
                        f"{where} is owned by the syncing system (not x-ownership local); "
                        "only local fields can be edited",
                        where,
                    )
                else:
                    return PatchIssue(
                        Code.UNKNOWN_FIELD, f"{where} is not a property of the schema", where
                    )
        return None


NONE = Ownership((), frozenset())


def _no_default(sub: Any) -> Any:
    return {k: v for k, v in sub.items() if k != "default"} if isinstance(sub, dict) else sub


def _under(path: Path, prefix: Path) -> bool:
    return path[: len(prefix)] == prefix


def _schema_path(path: Path) -> list[str]:
    return [step for name in path for step in ("properties", name)]


def _subschema(body: Any, path: Path) -> Any:
    node = body
    for name in path:
        node = node["properties"][name]
    return node


def _properties(node: Any, at: Path, chain: dict[int, Path], declared: set[Path]) -> None:
    """Every subschema reached from the root through ``properties`` (by identity)."""
    props = node.get("properties") if isinstance(node, dict) else None
    if not isinstance(props, dict):
        return
    for name, sub in props.items():
        path = (*at, name)
        declared.add(path)
        if isinstance(sub, dict):
            chain[id(sub)] = path
            _properties(sub, path, chain, declared)


def _annotated(body: Any, base: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Every subschema carrying the keyword, with its pointer (iterative: deep schemas)."""
    stack: list[tuple[Any, str]] = [(body, base)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, dict):
            if KEYWORD in node:
                yield node, at
            for k, v in node.items():
                if k not in _DATA_KEYWORDS:
                    stack.append((v, pointer.join([k], at)))
        elif isinstance(node, list):
            stack.extend((v, f"{at}/{i}") for i, v in enumerate(node))


def keep_local(data: dict[str, Any], before: dict[str, Any], local: list[str]) -> dict[str, Any]:
    """A sync's ``data`` (external fields) with the stored ``before``'s local values at
    the pointers ``local`` (parent objects created as needed; a parent the sync made
    something other than an object cannot hold them, and they go)."""
    out = data
    copied = False
    for ptr in local:
        path = [pointer.unescape(t) for t in ptr.split("/")[1:]]
        value = _get(before, path)
        if value is _ABSENT:
            continue
        if not copied:
            out, copied = dict(data), True
        node = out
        for name in path[:-1]:
            child = node.get(name, _ABSENT)
            if child is _ABSENT:
                child = {}
            elif not isinstance(child, dict):
                break
            node[name] = child = dict(child)
            node = child
        else:
            node[path[-1]] = value
    return out


_ABSENT: Any = object()


def _get(doc: Any, path: list[str]) -> Any:
    for name in path:
        if not isinstance(doc, dict) or name not in doc:
            return _ABSENT
        doc = doc[name]
    return doc


def apply_patch(before: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7396: ``before`` with the merge patch applied (``before`` is not changed)."""
    merged: dict[str, Any] = json_merge_patch.merge(copy.deepcopy(before), patch)
    return merged
