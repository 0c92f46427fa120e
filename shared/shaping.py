"""Shaping a record before it is validated and hashed (issue 14): defaults, normalisation.

Pure. :func:`compile_plan` walks a schema once, from the root through ``properties``,
``items`` and ``prefixItems`` (not through ``$ref``, ``oneOf``/``anyOf``/``allOf``,
``if``/``then``, ``additionalProperties`` or ``patternProperties``: a format there is
validated as JSON Schema says, never rewritten), and records:

* every property with a ``default``, under the object that holds it;
* every subschema with a supported ``format`` (:data:`shared.formats.FORMATS`), unless
  ``resmo.normalize`` is false.

The result is a tree of :class:`Node` holding only the paths that lead to some work, so
a record costs a walk of those paths. :meth:`Plan.shape` fills absent properties with
their defaults (in present objects, at any depth) and then puts each formatted value in
its canonical form, in place, returning the values it could not normalise. Shaping is
idempotent: a shaped record shapes to itself.

:attr:`Plan.validation_body` is the schema to validate with: the stored body with the
``format`` keyword removed where a normaliser runs, because the normaliser is the format
check there and JSON Schema's assertion would refuse canonical forms such as
``2000-01-01 00:00:00``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from shared import formats, pointer, shaping_code
from shared.codes import Code
from shared.errors import SchemaRuleError
from shared.formats import NotNormalisable, Options

MAX_DEPTH = 64  # schema nesting followed; deeper properties are validated, not shaped
OnMissing = Literal["reject", "skip"]
RESMO_SHAPING_KEYS = ("normalize", "defaultRegion", "dateOrder", "onMissingRequired")


@dataclass(slots=True)
class Node:
    """What to do with one value: normalise it (``fmt``), fill its absent properties
    (``defaults``), and descend into its properties and array items."""

    fmt: tuple[str, formats.Normaliser] | None = None
    defaults: tuple[tuple[str, Any], ...] = ()
    props: tuple[tuple[str, Node], ...] = ()
    prefix: tuple[Node | None, ...] = ()
    items: Node | None = None
    flat: Any = None  # set by _compiled on first use

    @property
    def empty(self) -> bool:
        return not (self.fmt or self.defaults or self.props or self.items or any(self.prefix))


@dataclass(frozen=True, slots=True)
class Bad:
    """A value that could not be normalised."""

    pointer: str
    fmt: str
    message: str


@dataclass(slots=True)
class Plan:
    root: Node | None
    validation_body: dict[str, Any]
    on_missing_required: OnMissing = "reject"
    has_defaults: bool = False
    normalised: list[str] = field(default_factory=list)  # schema pointers, for the docs/tests
    _code: shaping_code.Shaper | None = None  # the plan as straight-line code, on first use

    def shape(self, data: dict[str, Any]) -> list[Bad]:
        """Fill defaults and normalise ``data`` in place; the values left unnormalised."""
        bad: list[Bad] = []
        if self.root is not None:
            if self._code is None:
                self._code = shaping_code.shaper_of(self.root, _shape, _bad)
            if type(data) is dict:
                self._code(data, bad)
            else:
                _shape(self.root, data, (), bad)
        return bad

    def shape_generic(self, data: dict[str, Any]) -> list[Bad]:
        """:meth:`shape` by the generic walk of the plan (what the written code must equal)."""
        bad: list[Bad] = []
        if self.root is not None:
            _shape(self.root, data, (), bad)
        return bad

    def with_defaults(self, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """A stored resource as the current schema's defaults complete it (for reads):
        a copy with every absent defaulted property filled, and their pointers."""
        if self.root is None or not self.has_defaults:
            return data, []
        applied: list[str] = []
        out = copy.deepcopy(data)
        _fill(self.root, out, (), applied)
        return (out, applied) if applied else (data, [])


def resmo_options(body: dict[str, Any]) -> tuple[bool, Options, OnMissing]:
    resmo = body.get("resmo") if isinstance(body.get("resmo"), dict) else {}
    assert isinstance(resmo, dict)
    on_missing: OnMissing = "skip" if resmo.get("onMissingRequired") == "skip" else "reject"
    opts = Options(resmo.get("defaultRegion"), resmo.get("dateOrder"))
    return resmo.get("normalize", True) is not False, opts, on_missing


def compile_plan(body: dict[str, Any]) -> Plan:
    normalize, opts, on_missing = resmo_options(body)
    state = _Compiling(normalize, opts)
    node, validation = state.value(body, "", 0)
    return Plan(
        None if node is None or node.empty else node,
        validation,
        on_missing,
        state.defaults,
        state.normalised,
    )


@dataclass(slots=True)
class _Compiling:
    normalize: bool
    opts: Options
    defaults: bool = False
    normalised: list[str] = field(default_factory=list)

    def value(self, s: Any, at: str, depth: int) -> tuple[Node | None, Any]:
        """The plan of subschema ``s`` and the copy of it to validate with."""
        if not isinstance(s, dict) or depth > MAX_DEPTH:
            return None, s
        node = Node()
        out = s
        fmt = s.get("format")
        if self.normalize and isinstance(fmt, str) and fmt in formats.FORMATS:
            node.fmt = (fmt, formats.normaliser(fmt, self.opts))
            out = {k: v for k, v in s.items() if k != "format"}
            self.normalised.append(at)
        props = s.get("properties")
        if isinstance(props, dict):
            out = self._properties(node, out, props, at, depth)
        prefix = s.get("prefixItems")
        if isinstance(prefix, list):
            nodes, subs = [], []
            for i, sub in enumerate(prefix):
                n, c = self.value(sub, f"{at}/prefixItems/{i}", depth + 1)
                nodes.append(None if n is None or n.empty else n)
                subs.append(c)
            if any(nodes):
                node.prefix = tuple(nodes)
                out = {**out, "prefixItems": subs}
        items = s.get("items")
        if isinstance(items, dict):
            n, c = self.value(items, f"{at}/items", depth + 1)
            if n is not None and not n.empty:
                node.items = n
                out = {**out, "items": c}
        return node, out

    def _properties(
        self, node: Node, out: dict[str, Any], props: dict[str, Any], at: str, depth: int
    ) -> dict[str, Any]:
        children, defaults, subs = [], [], dict(props)
        changed = False
        for key, sub in props.items():
            where = pointer.join(["properties", key], at)
            if isinstance(sub, dict) and "default" in sub:
                defaults.append((key, sub["default"]))
            n, c = self.value(sub, where, depth + 1)
            if n is not None and not n.empty:
                children.append((key, n))
            if c is not sub:
                subs[key] = c
                changed = True
        node.props, node.defaults = tuple(children), tuple(defaults)
        self.defaults = self.defaults or bool(defaults)
        return {**out, "properties": subs} if changed else out


_ABSENT: Any = object()
# (key, default, is a container) and (key, format, normaliser or None, container node or None)
_Fill = tuple[str, Any, bool]
_Entry = tuple[str, str, formats.Normaliser | None, "Node | None"]


def _compiled(node: Node) -> tuple[tuple[_Fill, ...], tuple[_Entry, ...]]:
    """The flat form :func:`_shape` walks: a leaf property is normalised in its parent's
    loop (no call per level), and only containers with work below are descended into."""
    if node.flat is None:
        fills = tuple((k, v, isinstance(v, dict | list)) for k, v in node.defaults)
        entries = tuple(
            (key, *(child.fmt or ("", None)), _container(child)) for key, child in node.props
        )
        node.flat = (fills, entries)
    flat: tuple[tuple[_Fill, ...], tuple[_Entry, ...]] = node.flat
    return flat


def _container(node: Node) -> Node | None:
    return node if node.defaults or node.props or node.items or any(node.prefix) else None


def _shape(node: Node, value: Any, at: tuple[Any, ...], bad: list[Bad]) -> None:
    """Shape the container ``value`` (a dict or a list) by ``node``, in place."""
    if type(value) is dict:
        fills, entries = node.flat or _compiled(node)
        for key, default, container in fills:
            if key not in value:
                # a record must never share (and so mutate) the schema's value
                value[key] = copy.deepcopy(default) if container else default
        for key, fmt, fn, child in entries:
            v = value.get(key, _ABSENT)
            if v is _ABSENT:
                continue
            if child is not None and (type(v) is dict or type(v) is list):
                _shape(child, v, (*at, key), bad)
            if fn is not None:
                try:
                    new = fn(v)
                except NotNormalisable as e:
                    bad.append(_bad(at, key, fmt, v, e))
                    continue
                if new is not v:
                    value[key] = new
    elif type(value) is list:
        for i, v in enumerate(value):
            child = node.prefix[i] if i < len(node.prefix) else node.items
            if child is not None:
                new = _element(child, v, at, i, bad)
                if new is not v:
                    value[i] = new


def _element(node: Node, v: Any, at: tuple[Any, ...], i: int, bad: list[Bad]) -> Any:
    if _container(node) is not None and (type(v) is dict or type(v) is list):
        _shape(node, v, (*at, i), bad)
    if node.fmt is None:
        return v
    try:
        return node.fmt[1](v)
    except NotNormalisable as e:
        bad.append(_bad(at, i, node.fmt[0], v, e))
        return v


def _bad(at: tuple[Any, ...], key: Any, fmt: str, v: Any, e: Exception) -> Bad:
    return Bad(pointer.join((*at, key)), fmt, f"{_show(v)} is not a valid {fmt}: {e}")


def _fill(node: Node, value: Any, at: tuple[Any, ...], applied: list[str]) -> None:
    """Only the defaults of :func:`_shape`, recording where they went."""
    if type(value) is dict:
        for key, default in node.defaults:
            if key not in value:
                value[key] = copy.deepcopy(default)
                applied.append(pointer.join((*at, key)))
        for key, child in node.props:
            if key in value:
                _fill(child, value[key], (*at, key), applied)
    elif type(value) is list:
        for i, v in enumerate(value):
            sub = node.prefix[i] if i < len(node.prefix) else node.items
            if sub is not None:
                _fill(sub, v, (*at, i), applied)


def _show(value: Any) -> str:
    """A value as JSON text, shortened, to show it in a message."""
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_options(resmo: dict[str, Any], base: str) -> None:
    """The shaping settings of a schema's ``resmo`` block (400 ``invalid_resmo``)."""
    at = f"{base}/resmo"
    normalize = resmo.get("normalize", True)
    if not isinstance(normalize, bool):
        raise SchemaRuleError(
            Code.INVALID_RESMO, "resmo.normalize must be true or false", pointer=f"{at}/normalize"
        )
    region = resmo.get("defaultRegion")
    if region is not None and not formats.known_region(region):
        raise SchemaRuleError(
            Code.INVALID_RESMO,
            f"resmo.defaultRegion must be an ISO 3166 alpha-2 region code in upper case "
            f"(such as US or NL) known to the phone number library; {region!r} is not",
            pointer=f"{at}/defaultRegion",
        )
    order = resmo.get("dateOrder")
    if order is not None and order not in formats.DATE_ORDERS:
        raise SchemaRuleError(
            Code.INVALID_RESMO,
            f"resmo.dateOrder must be one of {', '.join(formats.DATE_ORDERS)}; {order!r} is not",
            pointer=f"{at}/dateOrder",
        )
    on_missing = resmo.get("onMissingRequired", "reject")
    if on_missing not in ("reject", "skip"):
        raise SchemaRuleError(
            Code.INVALID_RESMO,
            f'resmo.onMissingRequired must be "reject" or "skip"; {on_missing!r} is not',
            pointer=f"{at}/onMissingRequired",
        )
