"""The compatibility check of a candidate schema version (``POST …/schemas/{table}/check``,
and ``PUT …/schemas/{table}?mode=strict`` before it stores a version).

The table's live resources (every groupKey) are read from PostgreSQL in batches
(:class:`~shared.pg.live.LiveResourceStore`) and each batch is checked in a worker
thread (:class:`~shared.compat.CompatReport`), so the event loop keeps serving while a
large table is checked. Nothing is stored.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from services.gateway.state import PG
from shared.compat import CompatReport, LiveRow
from shared.pg.live import LiveResourceStore
from shared.pg.registry import Schema
from shared.schema_diff import diff
from shared.schema_rules import CompiledSchema


async def report(
    request: web.Request, current: Schema, candidate: dict[str, Any]
) -> dict[str, Any]:
    """What storing ``candidate`` (a body :func:`~shared.schema_rules.prepare_schema`
    returned) as the next version of ``current``'s table would refuse, and how it differs."""
    compiled = await asyncio.to_thread(CompiledSchema, candidate)
    checked = CompatReport(compiled)

    async def consume(rows: list[LiveRow]) -> None:
        await asyncio.to_thread(checked.check, rows)

    await LiveResourceStore(request.app[PG]).scan(current.resource_type, consume)
    return {
        "table": current.table,
        "title": current.title,
        "resourceType": current.resource_type,
        "version": current.version,
        **checked.as_dict(diff(current.body, candidate)),
    }
