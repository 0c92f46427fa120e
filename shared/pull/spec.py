"""A ``sourceSpec`` (seed 004) parsed and checked, and a source's params checked against it.

Pure. :func:`parse_spec` takes the seed appendix's ``sourceSpec`` object exactly as
printed there and returns a :class:`SourceSpec`, or raises ``ApiError(
invalid_source_spec)`` (400) whose pointer names the offending member. Everything
that can be refused is refused here, at spec creation, so a run never meets a spec
it cannot execute: the pagination type and the fields it needs, every JSONPath,
every ``@{…}`` expression (:mod:`.expr`), every .NET date format
(:mod:`.dotnet_time`), every ``${name}`` placeholder (declared in ``spec``), the
``spec`` JSON Schema itself (draft-07 or 2020-12). :func:`check_params` checks a
source's params (400 ``invalid_source_params``); its messages never carry a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonpath
import orjson

from shared import pointer as jp
from shared.codes import Code
from shared.errors import ApiError
from shared.pull.dotnet_time import check_format
from shared.pull.model import mask
from shared.pull.spec_parts import (
    HOST_PLACEHOLDER,
    PLACEHOLDER,
    SCHEDULE_QUERY,
    Scan,
    candidates,
    err,
    get_int,
    get_obj,
    get_str,
    get_str_list,
    json_equal,
    params_schema,
    scalar_map,
)
from shared.schema_rules import normalise_path

PAGINATION_TYPES = ("OFFSET", "POINTER", "CONTINUATION_TOKEN", "PAGE", "NONE")
PARAMETER_TYPES = ("QUERYPARAM", "HEADERPARAM")
DEFAULT_TIME_FORMAT = "yyyy-MM-ddTHH:mm:ssK"
DEFAULT_MAXIMUM_REQUEST = 10_000
#: what a value substituted into the host may hold: host labels and dots, or a port
#: (no ":": "evil.example:1" in "https://{domain}.api.x.com" would move the host)
HOST_VALUE = re.compile(r"[A-Za-z0-9._-]+")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
Path = jsonpath.JSONPath | jsonpath.CompoundJSONPath


def compile_path(path: str) -> Path:
    """A JSONPath (``paging.next`` means ``$.paging.next``); JSONPathError if it does not parse."""
    return jsonpath.compile(normalise_path(path))


@dataclass(frozen=True, slots=True)
class Extract:
    """contentPath or explodeEntityPath: where the records are and how each is shaped."""

    path: str
    skip: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    wrapper: str | None = None
    compiled: Path = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", compile_path(self.path))


@dataclass(frozen=True, slots=True)
class EndCondition:
    """``endConditionName`` / ``endConditionValue``: the run ends when a page holds the value."""

    path: str
    value: Any
    compiled: Path = field(init=False, repr=False, compare=False)
    candidates: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", compile_path(self.path))
        object.__setattr__(self, "candidates", candidates(self.value))

    def met(self, data: Any) -> bool:
        return any(
            json_equal(m.obj, c) for m in self.compiled.finditer(data) for c in self.candidates
        )


@dataclass(frozen=True, slots=True)
class Paging:
    type: str
    limit_name: str | None = None
    limit_value: int | None = None
    offset_name: str | None = None
    end_condition: EndCondition | None = None
    pointer_path: str | None = None
    token_path: str | None = None
    parameter_type: str = "QUERYPARAM"
    parameter_name: str | None = None
    initial_page: int = 0
    end_page: int | str | None = None  # str: a response header's name ("headers.x-pagecount")
    page_param: str | None = None
    delay_ms: int = 0
    maximum_request: int = DEFAULT_MAXIMUM_REQUEST
    pointer: Path | None = field(init=False, repr=False, compare=False)
    token: Path | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        p, t = self.pointer_path, self.token_path
        object.__setattr__(self, "pointer", compile_path(p) if p else None)
        object.__setattr__(self, "token", compile_path(t) if t else None)


@dataclass(frozen=True, slots=True)
class Schedule:
    start_name: str | None = None
    end_name: str | None = None
    start_format: str = DEFAULT_TIME_FORMAT
    end_format: str = DEFAULT_TIME_FORMAT
    advance: bool = False
    param_format: str = DEFAULT_TIME_FORMAT
    incremental: str | None = None
    backfill: str | None = None


@dataclass(frozen=True, slots=True)
class SourceSpec:
    raw: dict[str, Any]
    ui: dict[str, Any]
    host: str
    path: str
    method: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    content: Extract
    explode: Extract | None
    paging: Paging
    schedule: Schedule | None
    params_schema: dict[str, Any]
    placeholders: frozenset[str]
    secrets: frozenset[str]
    #: the placeholders that land in the host / in a header (their values are checked)
    host_placeholders: frozenset[str] = frozenset()
    header_placeholders: frozenset[str] = frozenset()
    #: host ``{name}`` placeholders that spec.properties does not declare (the seed's
    #: ``{domain}``): required params all the same, checked as host values
    implicit_params: frozenset[str] = frozenset()
    validator: Any = field(default=None, repr=False, compare=False)


def parse_spec(obj: Any, pointer: str = "/sourceSpec") -> SourceSpec:
    """The checked form of a ``sourceSpec`` object; ApiError(invalid_source_spec) if any
    part is missing, mistyped or unsupported."""
    if not isinstance(obj, dict):
        raise err("sourceSpec must be a JSON object", pointer)
    schema, validator, declared, secrets = params_schema(obj.get("spec"), pointer + "/spec")
    ap = pointer + "/attributes"
    attrs = get_obj(obj, "attributes", pointer, required=True)
    assert attrs is not None
    scan = Scan(declared)
    host, path, method, query = _url(attrs, ap, scan)
    headers = _headers(attrs, ap, scan)
    body = attrs.get("bodyParams")
    if body is not None and body != {} and method == "GET":
        raise err("bodyParams needs method POST", ap + "/bodyParams")
    scan.walk(body, ap + "/bodyParams")
    content = _extract(attrs, "contentPath", ap, required=True)
    assert content is not None
    explode = _extract(attrs, "explodeEntityPath", ap, required=False)
    paging = _paging(attrs, ap)
    schedule = _schedule(attrs, ap, scan)
    if scan.schedule_query_at and (schedule is None or not schedule.advance):
        raise err(
            "{SCHEDULE_QUERY} is filled only by scheduleParams of type ADVANCE",
            scan.schedule_query_at[0],
        )
    ui = attrs.get("uiAttributes", {})
    if not isinstance(ui, dict):
        raise err("uiAttributes must be a JSON object", ap + "/uiAttributes")
    return SourceSpec(
        raw=obj,
        ui=ui,
        host=host,
        path=path,
        method=method,
        query=query,
        headers=headers,
        body=body,
        content=content,
        explode=explode,
        paging=paging,
        schedule=schedule,
        params_schema=schema,
        placeholders=frozenset(scan.used),
        secrets=secrets,
        host_placeholders=frozenset(scan.host_used),
        header_placeholders=frozenset(scan.header_used),
        implicit_params=frozenset(scan.implicit),
        validator=validator,
    )


def _url(attrs: dict[str, Any], ap: str, scan: Scan) -> tuple[str, str, str, dict[str, str]]:
    """urlParams: (host, path, method in upper case, queryParams)."""
    url_ptr = ap + "/urlParams"
    url = get_obj(attrs, "urlParams", ap, required=True)
    assert url is not None
    host = _host(url, url_ptr, scan)
    path = get_str(url, "path", url_ptr, required=True)
    method = get_str(url, "method", url_ptr, required=True)
    assert path is not None and method is not None
    scan.text(path, url_ptr + "/path")
    if method.upper() not in ("GET", "POST"):
        raise err(f"method must be GET or POST, got {method!r}", url_ptr + "/method")
    query = scalar_map(url, "queryParams", url_ptr)
    for name, value in query.items():
        scan.text(value, f"{url_ptr}/queryParams/{jp.escape(name)}")
    return host, path, method.upper(), query


def _host(url: dict[str, Any], ptr: str, scan: Scan) -> str:
    host = get_str(url, "host", ptr, required=True)
    assert host is not None
    if not host:
        raise err("host must not be empty", ptr + "/host")
    scan.text(host, ptr + "/host", host=True)
    lower = host.lower()
    if not lower.startswith(("http://", "https://", "${", "{", "@")):
        raise err(f"host must start with http:// or https://, got {host!r}", ptr + "/host")
    return host


def _headers(attrs: dict[str, Any], ap: str, scan: Scan) -> dict[str, str]:
    headers = scalar_map(attrs, "headerParams", ap)
    for name, value in headers.items():
        hp = f"{ap}/headerParams/{jp.escape(name)}"
        if not HEADER_NAME.fullmatch(name):
            raise err(f"{name!r} is not a valid header name", hp)
        if any(c in value for c in "\r\n\x00"):
            raise err("a header value must not hold CR, LF or NUL", hp)
        scan.text(value, hp, header=True)
    return headers


def _check_path(text: str, ptr: str) -> None:
    if not text.strip():
        raise err("must be a non-empty JSONPath", ptr)
    try:
        compile_path(text)
    except jsonpath.JSONPathError as e:
        first = str(e).splitlines()[0]
        raise err(f"{text!r} is not a valid JSONPath: {first}", ptr) from e


def _extract(attrs: dict[str, Any], key: str, ap: str, *, required: bool) -> Extract | None:
    part = get_obj(attrs, key, ap, required=required)
    if part is None:
        return None
    ptr = f"{ap}/{key}"
    path = get_str(part, "path", ptr, required=True)
    assert path is not None
    _check_path(path, ptr + "/path")
    wrapper = get_str(part, "overrideWrapperAttribute", ptr, required=False)
    if wrapper == "":
        raise err("overrideWrapperAttribute must not be empty", ptr + "/overrideWrapperAttribute")
    return Extract(
        path=path,
        skip=get_str_list(part, "skipAttributes", ptr),
        keep=get_str_list(part, "keepAttributes", ptr),
        wrapper=wrapper,
    )


#: what each pagination type needs (the offset key is checked under either spelling)
_NEEDS: dict[str, tuple[str, ...]] = {
    "OFFSET": ("limitName", "limitValue", "offsetName"),
    "POINTER": ("pointerPath",),
    "CONTINUATION_TOKEN": ("continuationTokenPath", "parameterName"),
    "PAGE": ("pageParamName",),
    "NONE": (),
}


def _paging(attrs: dict[str, Any], ap: str) -> Paging:
    p = get_obj(attrs, "paginationParams", ap, required=True)
    assert p is not None
    pp = ap + "/paginationParams"
    kind = get_str(p, "type", pp, required=True)
    assert kind is not None
    if kind.upper() not in PAGINATION_TYPES:
        raise err(
            f"unknown pagination type {kind!r} (one of {', '.join(PAGINATION_TYPES)})", pp + "/type"
        )
    kind = kind.upper()
    offset_key = "offSetName" if "offsetName" not in p and "offSetName" in p else "offsetName"
    values: dict[str, Any] = {
        "limitName": get_str(p, "limitName", pp),
        "limitValue": get_int(p, "limitValue", pp, minimum=1),
        "offsetName": get_str(p, offset_key, pp),
        "pointerPath": get_str(p, "pointerPath", pp),
        "continuationTokenPath": get_str(p, "continuationTokenPath", pp),
        "parameterName": get_str(p, "parameterName", pp),
        "pageParamName": get_str(p, "pageParamName", pp),
    }
    for need in _NEEDS[kind]:
        if values[need] is None or values[need] == "":
            key = offset_key if need == "offsetName" else need
            raise err(f"pagination type {kind} needs {key}", f"{pp}/{key}")
    if (values["limitName"] is None) != (values["limitValue"] is None):
        missing = "limitValue" if values["limitValue"] is None else "limitName"
        raise err("limitName and limitValue go together", f"{pp}/{missing}")
    for key in ("pointerPath", "continuationTokenPath"):
        if values[key] is not None:
            _check_path(values[key], f"{pp}/{key}")
    parameter_type = (get_str(p, "parameterType", pp) or "QUERYPARAM").upper()
    if parameter_type not in PARAMETER_TYPES:
        raise err("parameterType must be QUERYPARAM or HEADERPARAM", pp + "/parameterType")
    return Paging(
        type=kind,
        limit_name=values["limitName"],
        limit_value=values["limitValue"],
        offset_name=values["offsetName"],
        end_condition=_end_condition(p, pp),
        pointer_path=values["pointerPath"],
        token_path=values["continuationTokenPath"],
        parameter_type=parameter_type,
        parameter_name=values["parameterName"],
        initial_page=get_int(p, "initialPageIndex", pp, minimum=0) or 0,
        end_page=_end_page(p, pp),
        page_param=values["pageParamName"],
        delay_ms=get_int(p, "delayRequestMillis", pp, minimum=0) or 0,
        maximum_request=get_int(p, "maximumRequest", pp, minimum=1) or DEFAULT_MAXIMUM_REQUEST,
    )


def _end_condition(p: dict[str, Any], pp: str) -> EndCondition | None:
    name = get_str(p, "endConditionName", pp)
    has_value = p.get("endConditionValue") is not None
    if name is None:
        if has_value:
            raise err("endConditionValue needs endConditionName", pp + "/endConditionName")
        return None
    _check_path(name, pp + "/endConditionName")
    if not has_value:
        raise err("endConditionName needs endConditionValue", pp + "/endConditionValue")
    return EndCondition(name, p["endConditionValue"])


def _end_page(p: dict[str, Any], pp: str) -> int | str | None:
    value = p.get("endPageIndex")
    if isinstance(value, str) and value.strip().lower().startswith("headers."):
        header = value.strip()[len("headers.") :]
        if not HEADER_NAME.fullmatch(header):
            raise err(f"{header!r} is not a valid header name", pp + "/endPageIndex")
        return header
    try:
        return get_int(p, "endPageIndex", pp, minimum=0)
    except ApiError as e:
        e.message = "endPageIndex must be a page number or headers.<response header name>"
        raise


def _schedule(attrs: dict[str, Any], ap: str, scan: Scan) -> Schedule | None:
    s = get_obj(attrs, "scheduleParams", ap, required=False)
    if s is None:
        return None
    sp = ap + "/scheduleParams"
    kind = (get_str(s, "type", sp) or "STANDARD").upper()
    if kind not in ("STANDARD", "ADVANCE"):
        raise err(f"scheduleParams.type must be ADVANCE (or absent), got {kind!r}", sp + "/type")
    formats: dict[str, str] = {}
    for key in ("scheduleStartParamFormat", "scheduleEndParamFormat", "paramFormat"):
        fmt = get_str(s, key, sp) or DEFAULT_TIME_FORMAT
        try:
            check_format(fmt)
        except ValueError as e:
            raise err(str(e), f"{sp}/{key}") from e
        formats[key] = fmt
    queries: dict[str, str | None] = {}
    for key in ("incremental", "backfill"):
        queries[key] = get_str(s, key, sp)
        if kind == "ADVANCE" and queries[key] is None:
            raise err(f"scheduleParams of type ADVANCE needs {key}", f"{sp}/{key}")
        if queries[key] is not None:
            scan.text(queries[key] or "", f"{sp}/{key}", template=False)
    schedule = Schedule(
        start_name=get_str(s, "scheduleStartParamName", sp) or None,
        end_name=get_str(s, "scheduleEndParamName", sp) or None,
        start_format=formats["scheduleStartParamFormat"],
        end_format=formats["scheduleEndParamFormat"],
        advance=kind == "ADVANCE",
        param_format=formats["paramFormat"],
        incremental=queries["incremental"],
        backfill=queries["backfill"],
    )
    if not schedule.advance and not schedule.start_name and not schedule.end_name:
        return None
    return schedule


def param_text(value: Any) -> str:
    """A param value as it is substituted (JSON text for numbers and booleans)."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def secret_values(spec: SourceSpec, params: Mapping[str, Any]) -> list[str]:
    """The texts of the params the spec marks secret: what every log line, run record,
    error and preview must mask (:func:`shared.pull.model.mask`)."""
    return [param_text(params[n]) for n in sorted(spec.secrets) if params.get(n) is not None]


def _json_forms(values: list[str]) -> list[str]:
    return values + [orjson.dumps(v).decode()[1:-1] for v in values]


def check_params(spec: SourceSpec, params: Any, pointer: str = "/params") -> None:
    """ApiError(invalid_source_params) unless ``params`` fits the spec's schema and gives a
    string, number or boolean to every placeholder the spec uses. Messages never carry a
    secret value."""
    if not isinstance(params, dict):
        raise ApiError(Code.INVALID_SOURCE_PARAMS, "params must be a JSON object", pointer=pointer)
    secrets = _json_forms(secret_values(spec, params))
    validator = spec.validator
    if validator is None:
        validator = params_schema(spec.params_schema, "/sourceSpec/spec")[1]
    for e in validator.iter_errors(params):
        raise ApiError(
            Code.INVALID_SOURCE_PARAMS,
            mask(str(e.message), secrets),
            pointer=jp.join(e.instance_path, pointer),
        )
    for name in sorted(spec.placeholders):
        _check_value(spec, name, params.get(name), f"{pointer}/{jp.escape(name)}")


def _check_value(spec: SourceSpec, name: str, value: Any, ptr: str) -> None:
    def refuse(message: str) -> ApiError:
        return ApiError(Code.INVALID_SOURCE_PARAMS, message, pointer=ptr)

    if value is None or not isinstance(value, str | int | float | bool):
        raise refuse(f"the spec uses the param {name!r}: give it a string, number or boolean value")
    text = param_text(value)
    if name in spec.host_placeholders and not HOST_VALUE.fullmatch(text):
        raise refuse(
            f"{name} goes into the host: only letters, digits, '.', '-' and '_' are allowed"
        )
    if name in spec.header_placeholders and any(c in text for c in "\r\n\x00"):
        raise refuse(f"{name} goes into a header: it must not hold CR, LF or NUL")


__all__ = [
    "HOST_PLACEHOLDER",
    "PLACEHOLDER",
    "SCHEDULE_QUERY",
    "EndCondition",
    "Extract",
    "Paging",
    "Schedule",
    "SourceSpec",
    "check_params",
    "param_text",
    "parse_spec",
    "secret_values",
]
