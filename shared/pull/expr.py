"""The Azure-Data-Factory expression subset the seed's specs use (``@{…}`` in a string).

Pure. ``compile_template(text)`` parses once and refuses, with a ValueError naming
the function or character and its offset, anything outside the subset:

- ``@{expr}`` interpolates ``expr`` into the string; ``@@`` is a literal ``@``; a
  string that starts with ``@`` followed by a name is one whole expression (ADF's
  ``"@concat(…)"`` form). Any other ``@`` is literal text (``user@example.com``).
- functions (names case-insensitive, as in ADF): ``if(c, a, b)``, ``empty(x)`` (null
  or ``''``), ``coalesce(a, …)`` (first non-null), ``equals(a, b)``, ``concat(a, …)``,
  ``formatDateTime(ts[, fmt])`` (``ts`` RFC 3339, ``fmt`` .NET custom tokens or the
  standard ``o``/``s``/``u``; an empty ``ts`` gives ``''``);
- ``'string'`` literals (``''`` is a quote), integers, ``true`` / ``false``;
- ``pipeline()?.parameters?.ingestionStart`` / ``ingestionEnd`` (``?`` optional). An
  empty ingestionStart (a backfill run, or no window start) is null, as a missing
  ADF parameter is, so ``empty(coalesce(…ingestionStart, ''))`` is true then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from shared.pull.dotnet_time import format_time

Value = str | int | bool | None
Env = Mapping[str, Value]

PARAMETERS = ("ingestionStart", "ingestionEnd")
#: the .NET standard formats formatDateTime accepts besides custom ones
_STANDARD = {
    "o": "yyyy-MM-ddTHH:mm:ss.fffffffK",
    "O": "yyyy-MM-ddTHH:mm:ss.fffffffK",
    "s": "yyyy-MM-ddTHH:mm:ss",
    "u": "yyyy-MM-dd HH:mm:ssZ",
}
MAX_DEPTH = 32
_SAMPLE_START = "2024-01-02T03:04:05Z"
_SAMPLE_END = "2024-01-03T03:04:05Z"


@dataclass(frozen=True, slots=True)
class _Lit:
    value: Value

    def eval(self, env: Env) -> Value:
        return self.value


@dataclass(frozen=True, slots=True)
class _Param:
    name: str

    def eval(self, env: Env) -> Value:
        return env.get(self.name)


@dataclass(frozen=True, slots=True)
class _Call:
    name: str
    args: tuple[_Node, ...]
    offset: int

    def eval(self, env: Env) -> Value:
        if self.name == "if":  # lazy: only the chosen branch is evaluated
            cond = self.args[0].eval(env)
            return self.args[1 if _truth(cond) else 2].eval(env)
        values = [a.eval(env) for a in self.args]
        try:
            return _FUNCS[self.name][2](values)
        except ValueError as e:
            raise ValueError(f"{_FUNCS[self.name][0]}() at offset {self.offset}: {e}") from e


_Node = _Lit | _Param | _Call


def _truth(v: Value) -> bool:
    if isinstance(v, str):
        return v.lower() == "true"
    return v is True


def as_text(v: Value) -> str:
    """A value as ADF interpolates it into a string."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "True" if v else "False"
    return str(v)


def _equals(a: Value, b: Value) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _format_datetime(args: list[Value]) -> Value:
    ts = args[0]
    if ts is None or ts == "":
        return ""
    if not isinstance(ts, str):
        raise ValueError(f"the timestamp must be a string, got {as_text(ts)!r}")
    fmt = args[1] if len(args) > 1 else "o"
    if not isinstance(fmt, str):
        raise ValueError("the format must be a string")
    fmt = _STANDARD.get(fmt, fmt)
    if len(fmt) == 1:
        raise ValueError(f"standard format {fmt!r} is not supported (use o, s, u or a custom one)")
    try:
        dt = datetime.fromisoformat(ts)
    except ValueError as e:
        raise ValueError(f"{ts!r} is not an RFC 3339 timestamp") from e
    return format_time(dt, fmt)


#: name (lower case) -> (canonical name, (min, max) arity, implementation)
_FUNCS: dict[str, tuple[str, tuple[int, int], Callable[[list[Value]], Value]]] = {
    "if": ("if", (3, 3), lambda a: None),  # evaluated lazily in _Call.eval
    "empty": ("empty", (1, 1), lambda a: a[0] is None or a[0] == ""),
    "coalesce": ("coalesce", (1, 64), lambda a: next((x for x in a if x is not None), None)),
    "equals": ("equals", (2, 2), lambda a: _equals(a[0], a[1])),
    "concat": ("concat", (1, 64), lambda a: "".join(as_text(x) for x in a)),
    "formatdatetime": ("formatDateTime", (1, 2), _format_datetime),
}


class _Parser:
    def __init__(self, src: str, pos: int) -> None:
        self.src = src
        self.pos = pos
        self.depth = 0

    def fail(self, what: str, at: int | None = None) -> ValueError:
        return ValueError(f"expression: {what} at offset {self.pos if at is None else at}")

    def peek(self) -> str:
        self.skip_ws()
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def skip_ws(self) -> None:
        while self.pos < len(self.src) and self.src[self.pos] in " \t\r\n":
            self.pos += 1

    def expect(self, c: str) -> None:
        got = self.peek()
        if got != c:
            raise self.fail(f"expected {c!r}, got {got!r}" if got else f"expected {c!r}, got end")
        self.pos += 1

    def expr(self) -> _Node:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.fail(f"expression nested deeper than {MAX_DEPTH} calls")
            return self._expr()
        finally:
            self.depth -= 1

    def _expr(self) -> _Node:
        c = self.peek()
        start = self.pos
        if c == "'":
            return _Lit(self.string())
        if c.isdigit() or (c == "-" and self.src[self.pos + 1 : self.pos + 2].isdigit()):
            return self.number()
        if c.isalpha() or c == "_":
            name = self.ident()
            if self.peek() != "(":
                if name in ("true", "false"):
                    return _Lit(name == "true")
                raise self.fail(f"unknown name {name!r} (only function calls are supported)", start)
            return self.call(name, start)
        raise self.fail(f"unexpected character {c!r}" if c else "unexpected end")

    def string(self) -> str:
        self.pos += 1  # the opening quote
        out: list[str] = []
        while True:
            end = self.src.find("'", self.pos)
            if end < 0:
                raise self.fail("unterminated string literal")
            out.append(self.src[self.pos : end])
            self.pos = end + 1
            if self.src.startswith("'", self.pos):  # '' is an escaped quote
                out.append("'")
                self.pos += 1
                continue
            return "".join(out)

    def number(self) -> _Lit:
        start = self.pos
        self.pos += 1
        while self.pos < len(self.src) and self.src[self.pos].isdigit():
            self.pos += 1
        return _Lit(int(self.src[start : self.pos]))

    def ident(self) -> str:
        start = self.pos
        while self.pos < len(self.src) and (
            self.src[self.pos].isalnum() or self.src[self.pos] == "_"
        ):
            self.pos += 1
        return self.src[start : self.pos]

    def call(self, name: str, start: int) -> _Node:
        self.expect("(")
        args: list[_Node] = []
        if self.peek() != ")":
            args.append(self.expr())
            while self.peek() == ",":
                self.pos += 1
                args.append(self.expr())
        self.expect(")")
        if name == "pipeline":
            if args:
                raise self.fail("pipeline() takes no arguments", start)
            return self.pipeline_parameter(start)
        known = _FUNCS.get(name.lower())
        if known is None:
            raise self.fail(
                f"unsupported function {name!r} (supported: if, empty, coalesce, equals, "
                "concat, formatDateTime, pipeline()?.parameters?.ingestionStart|ingestionEnd)",
                start,
            )
        canonical, (lo, hi), _ = known
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}" if hi < 64 else f"at least {lo}"
            raise self.fail(f"{canonical}() takes {want} arguments, got {len(args)}", start)
        if self.peek() in ("?", ".", "["):
            raise self.fail(f"property access on {canonical}() is not supported")
        return _Call(name.lower(), tuple(args), start)

    def member(self) -> str:
        if self.peek() == "?":
            self.pos += 1
        self.expect(".")
        self.skip_ws()
        at = self.pos
        name = self.ident()
        if not name:
            raise self.fail("expected a property name", at)
        return name

    def pipeline_parameter(self, start: int) -> _Param:
        at = self.pos
        if self.peek() not in ("?", "."):
            raise self.fail("pipeline() must be followed by ?.parameters?.<name>", at)
        if self.member() != "parameters":
            raise self.fail("only pipeline()?.parameters is supported", at)
        at = self.pos
        name = self.member()
        if name not in PARAMETERS:
            raise self.fail(
                f"unknown pipeline parameter {name!r} (supported: {', '.join(PARAMETERS)})", at
            )
        if self.peek() in ("?", ".", "["):
            raise self.fail(f"property access on {name} is not supported")
        return _Param(name)


@dataclass(frozen=True, slots=True)
class Template:
    """A string with ``@{…}`` interpolations, parsed."""

    source: str
    parts: tuple[str | _Node, ...]

    @property
    def is_static(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    def render(self, ingestion_start: str, ingestion_end: str) -> str:
        env: dict[str, Value] = {
            "ingestionStart": ingestion_start or None,
            "ingestionEnd": ingestion_end or None,
        }
        return "".join(p if isinstance(p, str) else as_text(p.eval(env)) for p in self.parts)


def compile_template(text: str) -> Template:
    """Parse ``text``; ValueError (with the offset) for anything outside the subset."""
    parts: list[str | _Node] = []
    if text.startswith("@") and text[1:2].isalpha():
        parser = _Parser(text, 1)
        try:
            parts.append(parser.expr())
            if parser.peek():
                raise parser.fail(f"unexpected {parser.peek()!r} after the expression")
        except ValueError as e:
            raise ValueError(
                f"{e} (a string starting with @ is one expression; @@ is a literal @)"
            ) from e
    else:
        _interpolations(text, parts)
    template = Template(text, tuple(parts))
    if not template.is_static:  # a literal argument that cannot work fails now, not mid-run
        template.render(_SAMPLE_START, _SAMPLE_END)
        template.render("", _SAMPLE_END)
    return template


def _interpolations(text: str, parts: list[str | _Node]) -> None:
    buf: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("@@", i):
            buf.append("@")
            i += 2
        elif text.startswith("@{", i):
            if buf:
                parts.append("".join(buf))
                buf = []
            parser = _Parser(text, i + 2)
            parts.append(parser.expr())
            parser.expect("}")
            i = parser.pos
        else:
            buf.append(text[i])
            i += 1
    if buf:
        parts.append("".join(buf))
