"""Batch events, the pure part: many independent upserts decided as single events.

A batch (``POST …/batch-event/{table}``) is NOT a snapshot: nothing absent is deleted.
Each item is decided exactly as a single event of its scope would be, in array order,
against the state the items before it left (the same id twice: the later one wins and
each change is a version of its own, 1 then 2). An item at fault (schema, id, JSON that
orjson would change) is rejected alone and never rejects the others; an item lacking a
required property under ``resmo.onMissingRequired: "skip"`` is skipped.

The batch's one change carries every effect, the counts, the issues of every item at
fault (with their ``index`` and ``resourceId``; the first 1,000, ``issues_total`` counts
them all) and the per-item outcomes ``items``: ``{"index", "id", "outcome", "issues"?}``
with outcome ``created``, ``updated``, ``unchanged``, ``rejected`` or ``skipped``, for
the first :data:`MAX_ITEMS_LISTED` items (``items_total`` counts them all). Its status is
``rejected`` only when every item was rejected.
"""

from __future__ import annotations

from typing import Any

import orjson

from shared.bulk import Unsound
from shared.events import Change, RawMeta
from shared.processing import (
    MAX_ISSUES,
    MAX_REJECTED_BODIES,
    Prepared,
    ScopeState,
    apply_upsert,
    prepare_item,
    rejected_body,
)
from shared.schema_rules import MAX_ISSUES_PER_RESOURCE, CompiledSchema, Issue

#: per-item outcomes a receipt lists (the rest are counted in ``itemsTotal``)
MAX_ITEMS_LISTED = 1000


def prepare_items(items: list[Any], schema: CompiledSchema) -> list[Prepared]:
    """Shape, validate and extract every item (the part that needs no state)."""
    out = []
    for i, x in enumerate(items):
        if type(x) is Unsound:  # an integer beyond 64 bits, a key twice: refused as sent
            issues = x.fault.issues[:MAX_ISSUES_PER_RESOURCE]
            out.append(Prepared({}, None, [Issue(f.code, f.message, f.pointer, None, i)
                                           for f in issues]))  # fmt: skip
        else:
            out.append(prepare_item(x, schema, index=i))
    return out


def _resource_id(prep: Prepared) -> str | None:
    if prep.extracted is not None:
        return prep.extracted.id
    return next((i.resource_id for i in prep.issues if i.resource_id is not None), None)


def decide_batch(meta: RawMeta, prepared: list[Prepared], state: ScopeState) -> Change:
    """The batch's change: each item upserted in order against ``state`` (updated in place)."""
    change = Change(meta, "applied", items=[], items_total=len(prepared))
    listed = change.items
    assert listed is not None
    issues: list[dict[str, Any]] = []
    bodies: list[list[Any]] = []
    total = 0
    for index, prep in enumerate(prepared):
        ex = prep.extracted
        if prep.skipped:
            outcome = "skipped"
            change.skipped += 1
        elif prep.issues or ex is None:
            outcome = "rejected"
            change.rejected += 1
            if prep.data and len(bodies) < MAX_REJECTED_BODIES:  # kept for replay
                raw = orjson.dumps(prep.data)
                bodies.append(rejected_body(index, _resource_id(prep), raw))
        else:
            before = len(change.effects)
            apply_upsert(change, state, ex, prep.data)
            outcome = change.effects[-1].op if len(change.effects) > before else "unchanged"
        total += len(prep.issues)
        found = [i.as_dict() for i in prep.issues]
        if found and len(issues) < MAX_ISSUES:
            issues += found[: MAX_ISSUES - len(issues)]
        if len(listed) < MAX_ITEMS_LISTED:
            item: dict[str, Any] = {"index": index, "id": _resource_id(prep), "outcome": outcome}
            if found:
                item["issues"] = [{k: d[k] for k in ("code", "message", "pointer")} for d in found]
            listed.append(item)
    change.issues, change.issues_total = issues, total
    change.bodies = bodies or None
    if prepared and change.rejected == len(prepared):
        change.status = "rejected"
    return change
