"""A shaping plan as straight-line Python (pure): the same work as
:func:`shared.shaping._shape`, without its per-record loops over the plan.

:func:`shaper_of` writes one function per plan, at compile time of the schema, with
every property name, default and normaliser bound as a constant: a record costs a
``dict.get`` and a type check per planned property and one call per normalised value,
nothing else. It runs exactly the steps of the generic walk, in its order (a node's
defaults, then each planned property: its contents first, then its own format), so the
two are interchangeable; the unit tests run both on the same records. Objects nested
deeper than :data:`INLINE_DEPTH` and every array are handed to the generic walk.

Only constants the plan holds reach the generated source, and never as text: names are
written with :func:`repr` of a ``str`` (a valid literal for any string), and defaults,
normalisers and paths are passed in the function's namespace.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from shared.formats import NotNormalisable

# shared.shaping's Node and Bad, by duck type: that module imports this one
Node = Any
Bad = Any

INLINE_DEPTH = 6  # object levels written inline; deeper ones call the generic walk

Shaper = Callable[[dict[str, Any], list[Any]], None]


class _Writer:
    def __init__(self, walk: Callable[..., None], bad: Callable[..., Bad]) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {
            "_A": object(), "_walk": walk, "_bad": bad, "_copy": copy.deepcopy,
            "NotNormalisable": NotNormalisable,
        }  # fmt: skip
        self.n = 0

    def const(self, value: Any) -> str:
        self.n += 1
        name = f"_c{self.n}"
        self.names[name] = value
        return name

    def var(self) -> str:
        self.n += 1
        return f"v{self.n}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def node(self, node: Node, obj: str, at: tuple[Any, ...], indent: int, depth: int) -> None:
        """Code shaping the dict in variable ``obj`` by ``node``."""
        for key, default in node.defaults:
            k = repr(key)
            value = self.const(default)
            fill = f"_copy({value})" if isinstance(default, dict | list) else value
            self.emit(indent, f"if {k} not in {obj}: {obj}[{k}] = {fill}")
        for key, child in node.props:
            k, v = repr(key), self.var()
            self.emit(indent, f"{v} = {obj}.get({k}, _A)")
            self.emit(indent, f"if {v} is not _A:")
            body = len(self.lines)
            here = (*at, key)
            if child.defaults or child.props or child.items or any(child.prefix):
                if depth < INLINE_DEPTH and not (child.items or any(child.prefix)):
                    self.emit(indent + 1, f"if type({v}) is dict:")
                    mark = len(self.lines)
                    self.node(child, v, here, indent + 2, depth + 1)
                    if len(self.lines) == mark:
                        self.emit(indent + 2, "pass")
                else:
                    c, p = self.const(child), self.const(here)
                    self.emit(indent + 1, f"if type({v}) is dict or type({v}) is list:")
                    self.emit(indent + 2, f"_walk({c}, {v}, {p}, bad)")
            if child.fmt is not None:
                fmt, fn = child.fmt
                f, p, fname, out = self.const(fn), self.const(at), self.const(fmt), self.var()
                self.emit(indent + 1, "try:")
                self.emit(indent + 2, f"{out} = {f}({v})")
                self.emit(indent + 1, "except NotNormalisable as e:")
                self.emit(indent + 2, f"bad.append(_bad({p}, {k}, {fname}, {v}, e))")
                self.emit(indent + 1, "else:")
                self.emit(indent + 2, f"if {out} is not {v}: {obj}[{k}] = {out}")
            if len(self.lines) == body:
                self.emit(indent + 1, "pass")


def shaper_of(root: Node, walk: Callable[..., None], bad: Callable[..., Bad]) -> Shaper:
    """The function shaping a record (a dict) by ``root``, in place, appending to
    ``bad`` the values it could not normalise. ``walk`` is the generic
    :func:`shared.shaping._shape`, ``bad`` its :func:`shared.shaping._bad`."""
    w = _Writer(walk, bad)
    w.emit(0, "def shape(d, bad):")
    mark = len(w.lines)
    w.node(root, "d", (), 1, 0)
    if len(w.lines) == mark:
        w.emit(1, "pass")
    source = "\n".join(w.lines) + "\n"
    namespace = dict(w.names)
    exec(compile(source, "<shaping plan>", "exec"), namespace)  # see the module doc
    fn: Shaper = namespace["shape"]
    fn.__doc__ = source  # what it runs, for a reader in a debugger
    return fn
