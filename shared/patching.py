"""The worker's pure step for a ``patch`` event: an admin's edit of local fields.

No I/O here. The body is a JSON Merge Patch (RFC 7396) of one resource (its id in
``meta.ids``) that may touch local fields only (:mod:`shared.ownership`). The caller
supplies the scope's write-model state and the resource as PostgreSQL holds it once
the projector has applied every change the partition emitted before (so it is the
current state). The merged result must still validate against the schema; then the
effect is ``updated`` with the merge patch as its data (the projector applies it to
the stored row), the version bumps, and the content hash, which covers external
fields only, stays: a later sync of the same external data is still ``unchanged``.
"""

from __future__ import annotations

from typing import Any

import orjson

from shared.codes import Code
from shared.events import Change, Effect, RawMeta
from shared.ownership import apply_patch
from shared.processing import MAX_ISSUES, ScopeState
from shared.schema_rules import CompiledSchema, Extracted, Issue


def _rejected(meta: RawMeta, issues: list[Issue]) -> Change:
    return Change(
        meta,
        "rejected",
        rejected=1,
        issues=[i.as_dict() for i in issues[:MAX_ISSUES]],
        issues_total=len(issues),
    )


def _body(raw: bytes) -> dict[str, Any] | Issue:
    try:
        patch = orjson.loads(raw)
    except orjson.JSONDecodeError as e:  # the gateway checked; defend anyway
        return Issue(Code.INVALID_JSON, str(e), "")
    if not isinstance(patch, dict):
        return Issue(Code.NOT_AN_OBJECT, "a merge patch of local fields is a JSON object", "")
    return patch


def decide_patch(
    meta: RawMeta,
    raw: bytes,
    schema: CompiledSchema,
    state: ScopeState,
    current: dict[str, Any] | None,
) -> Change:
    """The change of one patch event; ``current``: the resource's data in PostgreSQL."""
    rid = (meta.ids or [""])[0]
    cur = state.get(rid)
    if cur is None or cur[0] == "" or current is None:
        return _rejected(
            meta,
            [Issue(Code.RESOURCE_NOT_FOUND, f"no resource {rid!r} in this group", None, rid)],
        )
    patch = _body(raw)
    if isinstance(patch, Issue):
        return _rejected(meta, [patch])
    wrong = schema.ownership.check_patch(patch)  # the schema may have changed since the 202
    if wrong is not None:
        return _rejected(meta, [Issue(wrong.code, wrong.message, wrong.pointer, rid)])
    own = schema.ownership
    shaped = apply_patch(current, patch)  # a copy: normalised in place below
    issues = [i for i in schema.shape(shaped) if own.is_local_pointer(i.pointer or "")]
    patch = own.local_patch(current, shaped)  # the local values as normalised
    merged = apply_patch(current, patch)
    issues += schema.validate_merged(merged)
    ex = schema.extract(merged) if not issues else None
    if isinstance(ex, Issue):
        issues.append(ex)
    if issues or not isinstance(ex, Extracted):
        return _rejected(meta, [Issue(i.code, i.message, i.pointer, rid) for i in issues])
    change = Change(meta, "applied", local=own.pointers)
    if not patch:
        change.unchanged = 1
        return change
    version = cur[1] + 1
    state.put(rid, cur[0], version)
    change.effects.append(Effect("updated", rid, version, cur[0], ex.name, ex.important, patch))
    return change
