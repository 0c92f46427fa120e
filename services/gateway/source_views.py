"""The admin API's JSON views (camelCase) of pull source specs, sources and runs.

A secret param is answered as ``******`` whatever its value: the views are the one place
a source leaves the gateway, so no answer can carry one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.pg.sources import RunRow, SourceRow, SpecRow
from shared.pull.model import MASK


def _time(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def spec_view(s: SpecRow) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "revision": s.revision,
        "sourceSpec": s.spec,
        "createdAt": s.created_at.isoformat(),
        "updatedAt": s.updated_at.isoformat(),
    }


def masked_params(s: SourceRow) -> dict[str, Any]:
    return {k: MASK if k in s.secret_names else v for k, v in s.params.items()}


def source_view(s: SourceRow) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "sourceSpec": s.spec_id,
        "sourceSpecName": s.spec_name,
        "params": masked_params(s),
        "integration": s.integration_id,
        "table": s.table_name,
        "groupKey": s.group_key,
        "mode": s.mode,
        "schedule": s.schedule,
        "startTime": _time(s.start_time),
        "paused": s.paused,
        "nextRunAt": _time(s.next_run_at),
        "createdAt": s.created_at.isoformat(),
        "updatedAt": s.updated_at.isoformat(),
    }


def run_view(r: RunRow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "runId": r.id,
        "kind": r.kind,
        "status": r.status,
        "specRevision": r.spec_revision,
        "windowStart": _time(r.window_start),
        "windowEnd": _time(r.window_end),
        "requests": r.requests,
        "pages": r.pages,
        "records": r.records,
        "created": r.created,
        "updated": r.updated,
        "deleted": r.deleted,
        "unchanged": r.unchanged,
        "rejected": r.rejected,
        "skipped": r.skipped,
        "truncated": r.truncated,
        "createdAt": r.created_at.isoformat(),
        "startedAt": _time(r.started_at),
        "finishedAt": _time(r.finished_at),
    }
    if r.error is not None:
        out["error"] = {k: r.error.get(k) for k in ("code", "message", "request")}
    return out
