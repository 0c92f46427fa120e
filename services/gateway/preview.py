"""``POST /admin/v1/sources/{id}/preview``: one page of a source, as a run would see it.

Renders the run's first request (the source's params, the window its next run would
read), fetches that one page (with at most one retry: a preview answers quickly),
and answers with the request it made (secrets masked), the raw page excerpt, the
records after contentPath / explode / keep / skip / override, each record's id and
its validation issues against the target table, and the next request pagination
would make. Nothing is ingested and no run is recorded. A remote API that cannot be
used answers 502 with the run error code a run would have failed with.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.gateway.http import respond
from services.gateway.sources import SOURCES_PATH, optional_body, run_kind, store
from services.gateway.state import REGISTRY, SETTINGS
from shared.bulk import FastExtractor, scan_item
from shared.codes import Code
from shared.errors import ApiError
from shared.pull.http import Fetcher, excerpt, parse_json
from shared.pull.model import Page, PullError, RunKind, mask
from shared.pull.paging import Pager
from shared.pull.records import extract
from shared.pull.request import describe, render_base
from shared.pull.spec import parse_spec, secret_values

routes = web.RouteTableDef()
MAX_RECORDS = 100
EXCERPT_BYTES = 4000


def _failed(e: PullError, secrets: list[str]) -> ApiError:
    where = f" ({mask(e.request, secrets)})" if e.request else ""
    return ApiError(e.code, mask(e.message, secrets) + where, status=502)


@routes.post(f"{SOURCES_PATH}/{{id}}/preview")
async def preview(request: web.Request) -> web.Response:
    s = store(request)
    body = await optional_body(request)
    src = await s.get_source(request.match_info["id"])
    kind: RunKind = (
        "incremental" if run_kind(body.get("kind"), src) == "incremental" else "backfill"
    )
    spec = parse_spec((await s.get_spec(src.spec_id)).spec)
    secrets = secret_values(spec, src.params)
    window = await s.next_window(src.id, kind, src.start_time, datetime.now(UTC))
    try:
        pager = Pager(spec.paging, render_base(spec, src.params, kind, window), secrets=secrets)
    except ValueError as e:
        raise ApiError(
            Code.INVALID_SOURCE_PARAMS, f"cannot build the request: {e}", pointer="/params"
        ) from None
    req = pager.first()
    settings = request.app[SETTINGS]
    try:
        async with Fetcher(
            connect_timeout_s=settings.source_connect_timeout_ms / 1000,
            read_timeout_s=settings.source_read_timeout_ms / 1000,
            retries=min(1, settings.source_retries),
            secrets=secrets,
        ) as fetcher:
            resp = await fetcher.fetch(req)
        data = parse_json(resp, secrets)
        count, records = extract(data, spec.content, spec.explode)
    except PullError as e:
        raise _failed(e, secrets) from None
    registry = request.app[REGISTRY]
    await registry.refresh()
    table = registry.snapshot.tables.get((src.group_id, src.table_name))
    shown: list[dict[str, Any]] = []
    invalid = 0
    if table is not None:
        fx = FastExtractor(registry.snapshot.compiled(table))
        for i, record in enumerate(records):
            scanned = scan_item(record, i, fx)
            invalid += bool(scanned.issues)
            if i < MAX_RECORDS:
                shown.append({
                    "index": i, "id": scanned.rid, "record": record,
                    "issues": [x.as_dict() for x in scanned.issues],
                })  # fmt: skip
    try:
        nxt = pager.next(Page(data, resp.headers, count))
        next_request = describe(nxt, secrets) if nxt is not None else None
    except PullError as e:
        next_request = {"error": e.as_dict()}
    out = {
        "source": src.name,
        "kind": kind,
        "windowStart": window.start.isoformat() if window.start else None,
        "windowEnd": window.end.isoformat(),
        "request": describe(req, secrets),
        "status": resp.status,
        "excerpt": mask(excerpt(resp.body, EXCERPT_BYTES), secrets),
        "count": count,
        "recordsTotal": len(records),
        "invalid": invalid if table is not None else None,
        "records": shown,
        "next": next_request,
        "endedBy": pager.ended_by,
    }
    if table is None:
        out["tableMissing"] = f"the table {src.table_name!r} no longer exists"
    return respond(request, out, root="preview")
