"""Admin API of pull sources: source specs, sources, pause/resume and runs.

Bodies are checked here with pointers into them (the spec by
:func:`shared.pull.spec.parse_spec`, params by :func:`shared.pull.spec.check_params`,
the schedule by :func:`shared.pull.schedule.parse_schedule`) before the
:class:`~shared.pg.sources.SourceStore` sees them. Secret params are sealed by the
store and answered as ``******``; a PUT giving ``******`` keeps the stored value. No
param value is ever logged. Without ``INGESTD_SECRET_KEY`` every route here answers 503.
A run asked for here is ``queued`` until a sources stage claims it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from services.gateway.admin import BASE, admin, admin_body, name_of
from services.gateway.http import parse_json, query_text, read_body, respond
from services.gateway.ingest import MAX_GROUP_KEY
from services.gateway.source_views import run_view, source_view, spec_view
from services.gateway.state import REGISTRY_STORE, SETTINGS, SOURCES
from shared.codes import Code
from shared.errors import ApiError, NotFoundError
from shared.pg.sources import SourceInput, SourceRow, SourceStore, default_kind
from shared.pull.model import MASK
from shared.pull.schedule import parse_schedule
from shared.pull.spec import SourceSpec, check_params, parse_spec

SPEC_LIMIT = 1 << 20
MAX_RUNS_PAGE = 500
routes = web.RouteTableDef()
SPECS = f"{BASE}/source-specs"
SOURCES_PATH = f"{BASE}/sources"
MODES = ("full", "incremental")
KINDS = ("incremental", "backfill")


def store(request: web.Request) -> SourceStore:
    """The admin token checked, and the secret key configured (else 503)."""
    admin(request)
    if not request.app[SETTINGS].secret_key:
        raise ApiError(
            Code.UNAVAILABLE,
            "pull sources need INGESTD_SECRET_KEY (a Fernet key sealing their secret"
            " params): set it on the gateway and restart it",
            status=503,
        )
    return request.app[SOURCES]


def _invalid(message: str, pointer: str) -> ApiError:
    return ApiError(Code.INVALID_SOURCE, message, pointer=pointer)


# ---- source specs -------------------------------------------------------------------------


@routes.post(SPECS)
async def create_spec(request: web.Request) -> web.Response:
    s = store(request)
    body = await admin_body(request, SPEC_LIMIT)
    name = name_of(body.get("name"))
    spec = parse_spec(body.get("sourceSpec"))
    return respond(request, spec_view(await s.create_spec(name, spec.raw)), 201, root="sourceSpec")


@routes.get(SPECS)
async def list_specs(request: web.Request) -> web.Response:
    items = await store(request).list_specs()
    return respond(request, {"items": [spec_view(s) for s in items]}, root="sourceSpecs")


@routes.get(f"{SPECS}/{{id}}")
async def get_spec(request: web.Request) -> web.Response:
    spec = await store(request).get_spec(request.match_info["id"])
    return respond(request, spec_view(spec), root="sourceSpec")


@routes.put(f"{SPECS}/{{id}}")
async def update_spec(request: web.Request) -> web.Response:
    """A new revision; the sources using it must still fit it (their params are checked,
    and re-sealed when the set of secret params changed). Runs claimed from now on use it."""
    s = store(request)
    body = await admin_body(request, SPEC_LIMIT)
    spec = parse_spec(body.get("sourceSpec"))
    current = await s.get_spec(request.match_info["id"])
    users = [u for u in await s.list_sources() if u.spec_id == current.id]
    for u in users:
        _still_fits(spec, u)
    out = await s.update_spec(current.id, spec.raw)
    for u in users:
        if secret_names(spec, u.params) != u.secret_names:
            await s.update_source(u.id, _input_of(u, spec))
    return respond(request, spec_view(out), root="sourceSpec")


def _still_fits(spec: SourceSpec, src: SourceRow) -> None:
    try:
        check_params(spec, src.params)
    except ApiError as e:
        raise ApiError(
            Code.INVALID_SOURCE_PARAMS,
            f"source {src.name!r} would no longer fit this spec ({e.pointer}: {e.message}):"
            " change its params first",
            pointer="/sourceSpec/spec",
        ) from None


@routes.delete(f"{SPECS}/{{id}}")
async def delete_spec(request: web.Request) -> web.Response:
    await store(request).delete_spec(request.match_info["id"])
    return web.Response(status=204)


# ---- sources ------------------------------------------------------------------------------


def secret_names(spec: SourceSpec, params: dict[str, Any]) -> frozenset[str]:
    return frozenset(n for n in spec.secrets if n in params)


def _input_of(src: SourceRow, spec: SourceSpec) -> SourceInput:
    return SourceInput(
        src.name, src.spec_id, src.params, secret_names(spec, src.params), src.integration_id,
        src.table_name, src.group_key, src.mode, parse_schedule(src.schedule), src.start_time,
    )  # fmt: skip


def _group_key(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_GROUP_KEY:
        raise _invalid(
            f"groupKey must be a string of at most {MAX_GROUP_KEY} characters", "/groupKey"
        )
    return value


def _mode(value: Any) -> str:
    if value not in MODES:
        raise _invalid('mode must be "full" or "incremental"', "/mode")
    assert isinstance(value, str)
    return value


def _start_time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value) if isinstance(value, str) and "T" in value else None
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        raise _invalid(
            'startTime must be an RFC 3339 date-time with an offset, e.g. "2024-05-01T00:00:00Z"',
            "/startTime",
        )
    return t


async def _spec_of(s: SourceStore, ref: Any) -> tuple[str, SourceSpec]:
    if not isinstance(ref, str) or not ref:
        raise _invalid("sourceSpec must be the id or the name of a source spec", "/sourceSpec")
    try:
        row = await s.get_spec(ref)
    except NotFoundError as e:
        raise ApiError(e.code, e.message, status=404, pointer="/sourceSpec") from None
    return row.id, parse_spec(row.spec)


async def _table_of(request: web.Request, integration: Any, table: Any) -> tuple[str, str]:
    if not isinstance(integration, str) or not integration:
        raise _invalid("integration must be an integration id", "/integration")
    registry = request.app[REGISTRY_STORE]
    try:
        found = await registry.get_integration(integration)
    except NotFoundError as e:
        raise ApiError(e.code, e.message, status=404, pointer="/integration") from None
    if not isinstance(table, str) or not table:
        raise _invalid(
            "table must be the name or the title of a table of the integration", "/table"
        )
    try:  # a title is kept as the table's name: retitling a table keeps its sources
        schema = await registry.get_schema(found.group_id, table)
    except NotFoundError:
        raise _invalid(
            f"no table named or titled {table!r} in the schema group of integration {found.name!r}",
            "/table",
        ) from None
    return found.id, schema.table


def _keep_masked(spec: SourceSpec, params: Any, current: SourceRow | None) -> Any:
    """On PUT, a secret given as ``******`` is the stored value."""
    if not isinstance(params, dict):
        return params
    out = dict(params)
    for name in spec.secrets:
        if out.get(name) != MASK:
            continue
        if current is None or name not in current.params:
            raise ApiError(
                Code.INVALID_SOURCE_PARAMS,
                f"{name} is {MASK!r} but this source has no stored value to keep: give it",
                pointer=f"/params/{name}",
            )
        out[name] = current.params[name]
    return out


async def _source_input(
    request: web.Request, s: SourceStore, body: dict[str, Any], current: SourceRow | None
) -> SourceInput:
    name = name_of(body.get("name"))
    spec_id, spec = await _spec_of(s, body.get("sourceSpec"))
    params = _keep_masked(spec, body.get("params", {}), current)
    check_params(spec, params)
    integration, table = await _table_of(request, body.get("integration"), body.get("table"))
    return SourceInput(
        name=name,
        spec_id=spec_id,
        params=params,
        secret_names=secret_names(spec, params),
        integration_id=integration,
        table_name=table,
        group_key=_group_key(body.get("groupKey")),
        mode=_mode(body.get("mode")),
        schedule=parse_schedule(body.get("schedule")),
        start_time=_start_time(body.get("startTime")),
    )


@routes.post(SOURCES_PATH)
async def create_source(request: web.Request) -> web.Response:
    s = store(request)
    body = await admin_body(request)
    src = await s.create_source(await _source_input(request, s, body, None))
    return respond(request, source_view(src), 201, root="source")


@routes.get(SOURCES_PATH)
async def list_sources(request: web.Request) -> web.Response:
    items = await store(request).list_sources()
    return respond(request, {"items": [source_view(s) for s in items]}, root="sources")


@routes.get(f"{SOURCES_PATH}/{{id}}")
async def get_source(request: web.Request) -> web.Response:
    src = await store(request).get_source(request.match_info["id"])
    return respond(request, source_view(src), root="source")


@routes.put(f"{SOURCES_PATH}/{{id}}")
async def update_source(request: web.Request) -> web.Response:
    """Replaces the whole source (the body is the same as a create's)."""
    s = store(request)
    body = await admin_body(request)
    current = await s.get_source(request.match_info["id"])
    src = await s.update_source(current.id, await _source_input(request, s, body, current))
    return respond(request, source_view(src), root="source")


@routes.delete(f"{SOURCES_PATH}/{{id}}")
async def delete_source(request: web.Request) -> web.Response:
    s = store(request)
    current = await s.get_source(request.match_info["id"])
    await s.delete_source(current.id)
    return web.Response(status=204)


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    s = store(request)
    current = await s.get_source(request.match_info["id"])
    return respond(request, source_view(await s.set_paused(current.id, paused)), root="source")


@routes.post(f"{SOURCES_PATH}/{{id}}/pause")
async def pause(request: web.Request) -> web.Response:
    return await _set_paused(request, True)


@routes.post(f"{SOURCES_PATH}/{{id}}/resume")
async def resume(request: web.Request) -> web.Response:
    return await _set_paused(request, False)


# ---- runs ---------------------------------------------------------------------------------


async def optional_body(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request, 1 << 16)
    if not raw.strip():
        return {}
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ApiError(Code.BODY_NOT_OBJECT, "the body must be a JSON object", pointer="")
    return data


def run_kind(value: Any, src: SourceRow) -> str:
    if value is None:
        return default_kind(src.mode)
    if value not in KINDS:
        raise _invalid('kind must be "incremental" or "backfill"', "/kind")
    if value == "incremental" and src.mode == "full":
        raise _invalid(
            "a full source runs backfill only: each run is a snapshot of everything, and a"
            " windowed snapshot would delete what lies outside its window",
            "/kind",
        )
    assert isinstance(value, str)
    return value


@routes.post(f"{SOURCES_PATH}/{{id}}/runs")
async def request_run(request: web.Request) -> web.Response:
    s = store(request)
    body = await optional_body(request)
    src = await s.get_source(request.match_info["id"])
    kind = run_kind(body.get("kind"), src)
    run = await s.request_run(src.id, "incremental" if kind == "incremental" else "backfill")
    return respond(request, {"runId": run.id, "status": run.status}, 202, root="run")


def _limit(request: web.Request) -> int:
    raw = query_text(request, "limit")
    if raw is None:
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_RUNS_PAGE:
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"limit must be a whole number from 1 to {MAX_RUNS_PAGE}",
            pointer="/query/limit",
        )
    return int(raw)


@routes.get(f"{SOURCES_PATH}/{{id}}/runs")
async def list_runs(request: web.Request) -> web.Response:
    """Newest first; ``next`` (when more may follow) goes in ``before=`` for the next page."""
    s = store(request)
    limit = _limit(request)
    before = query_text(request, "before")
    src = await s.get_source(request.match_info["id"])
    runs = await s.list_runs(src.id, limit, before)
    nxt = runs[-1].id if len(runs) == limit else None
    return respond(request, {"items": [run_view(r) for r in runs], "next": nxt}, root="runs")


@routes.get(f"{SOURCES_PATH}/{{id}}/runs/{{runId}}")
async def get_run(request: web.Request) -> web.Response:
    s = store(request)
    src = await s.get_source(request.match_info["id"])
    run = await s.get_run(request.match_info["runId"], src.id)
    return respond(request, run_view(run), root="run")


@routes.delete(f"{SOURCES_PATH}/{{id}}/runs/{{runId}}")
async def cancel_run(request: web.Request) -> web.Response:
    s = store(request)
    src = await s.get_source(request.match_info["id"])
    run = await s.cancel_run(request.match_info["runId"], src.id)
    return respond(request, run_view(run), root="run")
