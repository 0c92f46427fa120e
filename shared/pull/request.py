"""The first request of a run, rendered from a spec, a source's params and the run's window.

Pure. In every string of the spec (host, path, query values, header values, body
strings) the ``@{…}`` template is rendered first (:mod:`.expr`; its text is the
spec's own, so it is URL structure), then ``${param}`` (and ``{param}`` in the host)
and ``{SCHEDULE_QUERY}`` are substituted in one pass, so a substituted value is
never read again as a placeholder or an expression. In the path and the query a
substituted value is percent-encoded (``/``, ``?``, ``&``, ``#`` cannot change the
URL's shape); in the host it must be a host label or port (ValueError otherwise);
in headers and the body it goes in as is. A rendered path may carry its own
``?query``: it is merged under ``queryParams`` (queryParams win on a name).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus, urljoin, urlsplit, urlunsplit

import orjson

from shared.pull.dotnet_time import format_time
from shared.pull.expr import Template, compile_template
from shared.pull.model import MASK, Request, RunKind, Window, mask
from shared.pull.spec import HOST_VALUE, SourceSpec, param_text
from shared.pull.spec_parts import RESERVED

RFC3339 = "yyyy-MM-ddTHH:mm:ssK"
#: characters left as they are in a path (RFC 3986 pchar, "/" and an existing escape)
_PATH_SAFE = "/%:@!$&'()*+,;=~"
_TOKENS = re.compile(r"\{SCHEDULE_QUERY\}|\$\{([^{}]*)\}")
_HOST_TOKENS = re.compile(
    r"\{SCHEDULE_QUERY\}|\$\{([^{}]*)\}|(?<![$@])\{([A-Za-z_][A-Za-z0-9_-]*)\}"
)
_TIME_TOKENS = re.compile(r"\{START_TIME\}|\{END_TIME\}|\$\{([^{}]*)\}")
#: at most this many characters of a request body go into describe()
DESCRIBE_BODY_CHARS = 2000


@lru_cache(maxsize=1024)
def _template(text: str) -> Template:
    return compile_template(text)


def _encode(value: str) -> str:
    return quote(value, safe="")


class _Render:
    def __init__(
        self, values: Mapping[str, str], start: str, end: str, schedule_query: str
    ) -> None:
        self.values = values
        self.start = start
        self.end = end
        self.schedule_query = schedule_query

    def text(self, value: str, encode: Callable[[str], str] | None, *, host: bool = False) -> str:
        rendered = _template(value).render(self.start, self.end)
        if "{" not in rendered:
            return rendered

        def sub(m: re.Match[str]) -> str:
            token = m.group(0)
            if token == "{SCHEDULE_QUERY}":
                name, out = "SCHEDULE_QUERY", self.schedule_query
            else:
                name = m.group(1) if m.group(1) is not None else m.group(2)
                if name in RESERVED:
                    return token
                if name not in self.values:
                    raise ValueError(f"param {name!r} has no value")
                out = self.values[name]
            if host and not HOST_VALUE.fullmatch(out):
                raise ValueError(f"the value of {name} cannot go into a host")
            return encode(out) if encode else out

        return (_HOST_TOKENS if host else _TOKENS).sub(sub, rendered)

    def walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value, None)
        if isinstance(value, dict):
            return {k: self.walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v) for v in value]
        return value


def render_base(
    spec: SourceSpec, params: Mapping[str, Any], kind: RunKind, window: Window
) -> Request:
    """The run's base request (before pagination adds its parameters)."""
    values = {n: param_text(params[n]) for n in spec.placeholders if params.get(n) is not None}
    backfill = kind == "backfill" or window.start is None
    start = "" if backfill or window.start is None else format_time(window.start, RFC3339)
    r = _Render(
        values, start, format_time(window.end, RFC3339), _schedule_query(spec, kind, window, values)
    )
    host = r.text(spec.host, None, host=True)
    path = r.text(spec.path, _encode)
    path, _, path_query = path.partition("?")
    pairs = parse_qsl(path_query, keep_blank_values=True)
    query = {name: r.text(v, None) for name, v in spec.query.items()}
    query.update(_window_params(spec, kind, window))
    pairs = [(k, v) for k, v in pairs if k not in query] + list(query.items())
    if path and not path.startswith("/"):
        path = "/" + path
    if host.endswith("/") and path.startswith("/"):
        host = host[:-1]
    url = host + quote(path, safe=_PATH_SAFE)
    if pairs:
        url += "?" + "&".join(f"{_encode(k)}={_encode(v)}" for k, v in pairs)
    split = urlsplit(url)
    try:
        split.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        raise ValueError("the rendered host has a port that is not a number") from None
    if split.scheme.lower() not in ("http", "https") or not split.hostname:
        raise ValueError("the rendered host is not an http:// or https:// URL with a host name")
    headers = {name: r.text(v, None) for name, v in spec.headers.items()}
    for name, v in headers.items():
        if any(c in v for c in "\r\n\x00"):
            raise ValueError(f"header {name} would hold CR, LF or NUL")
    body: bytes | None = None
    if spec.method == "POST" and spec.body is not None:
        body = orjson.dumps(r.walk(spec.body))
        if not any(n.lower() == "content-type" for n in headers):
            headers["Content-Type"] = "application/json"
    return Request(method=spec.method, url=url, headers=headers, body=body)


def _schedule_query(
    spec: SourceSpec, kind: RunKind, window: Window, values: Mapping[str, str]
) -> str:
    """ADVANCE: the incremental (or, without a start, the backfill) expression."""
    s = spec.schedule
    if s is None or not s.advance:
        return ""
    backfill = kind == "backfill" or window.start is None
    expression = (s.backfill if backfill else s.incremental) or ""
    start = "" if backfill or window.start is None else format_time(window.start, s.param_format)
    end = format_time(window.end, s.param_format)

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "{START_TIME}":
            return start
        if m.group(0) == "{END_TIME}":
            return end
        name = m.group(1)
        if name in RESERVED:
            return m.group(0)
        if name not in values:
            raise ValueError(f"param {name!r} has no value")
        return values[name]

    return _TIME_TOKENS.sub(sub, expression)


def _window_params(spec: SourceSpec, kind: RunKind, window: Window) -> dict[str, str]:
    """Standard schedule: the window as scheduleStartParamName / scheduleEndParamName."""
    s = spec.schedule
    out: dict[str, str] = {}
    if s is None or s.advance:
        return out
    if s.start_name and window.start is not None and kind != "backfill":
        out[s.start_name] = format_time(window.start, s.start_format)
    if s.end_name:
        out[s.end_name] = format_time(window.end, s.end_format)
    return out


def with_query(req: Request, extra: Mapping[str, str]) -> Request:
    """``req`` with the ``extra`` query parameters added or replaced; every other
    parameter of its URL is kept byte for byte (a next-page URL stays as the API wrote it)."""
    if not extra:
        return req
    parts = urlsplit(req.url)
    kept = [
        raw
        for raw in parts.query.split("&")
        if raw and unquote_plus(raw.partition("=")[0]) not in extra
    ]
    kept += [f"{_encode(k)}={_encode(v)}" for k, v in extra.items()]
    return replace(req, url=urlunsplit(parts._replace(query="&".join(kept))))


def with_header(req: Request, name: str, value: str) -> Request:
    """``req`` with header ``name`` set to ``value`` (replacing it, case-insensitively)."""
    if any(c in value for c in "\r\n\x00"):
        raise ValueError(f"header {name} would hold CR, LF or NUL")
    headers = {k: v for k, v in req.headers.items() if k.lower() != name.lower()}
    headers[name] = value
    return replace(req, headers=headers)


def resolve(req: Request, url: str) -> str:
    """A next-page URL: absolute as it is, else relative to ``req`` (``/x`` to its host)."""
    return urljoin(req.url, url.strip())


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the port made explicit."""
    s = urlsplit(url)
    scheme = s.scheme.lower()
    return scheme, (s.hostname or "").lower(), s.port or {"http": 80, "https": 443}.get(scheme)


def secret_forms(secrets: Iterable[str]) -> list[str]:
    """Each secret as given and as it reads inside a JSON string (a body, a message);
    :func:`shared.pull.model.mask` adds the percent-encoded forms."""
    forms: list[str] = []
    for s in secrets:
        if s:
            forms.append(s)
            escaped = orjson.dumps(s).decode()[1:-1]
            if escaped != s:
                forms.append(escaped)
    return forms


def describe(req: Request, secrets: Iterable[str]) -> dict[str, Any]:
    """``{"method", "url", "headers"}`` (and ``"body"``, cut to 2,000 characters) with
    every secret value masked: for previews, run records and error messages."""
    values = secret_forms(secrets)
    out: dict[str, Any] = {
        "method": req.method,
        "url": mask(req.url, values),
        "headers": {k: mask(v, values) for k, v in req.headers.items()},
    }
    if req.body is not None:
        body = mask(req.body.decode("utf-8", "replace"), values)
        out["body"] = body[:DESCRIBE_BODY_CHARS]
    return out


__all__ = [
    "MASK",
    "describe",
    "origin",
    "render_base",
    "resolve",
    "secret_forms",
    "with_header",
    "with_query",
]
