"""The worker's pure step: raw event + current hashes in, a :class:`Change` out.

No I/O here. The caller supplies a :class:`ScopeState` (current content hash
and version of the ids involved, prefetched from the write model) and applies
the returned state updates together with the change entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.codes import Code
from shared.events import Change, Effect, RawMeta
from shared.jsontext import document_issues
from shared.schema_rules import MAX_ISSUES_PER_RESOURCE, CompiledSchema, Extracted, Issue

MAX_ISSUES = 1000
MAX_REJECTED_BODIES = 1000  # rejected items of one bulk whose bodies are kept for replay


@dataclass(slots=True)
class ScopeState:
    """id -> (content hash, version); hash '' marks a deleted id (tombstone keeps the version).

    ``live_delta`` and ``dead_delta`` are how the scope's counts of live and of deleted
    ids change with ``dirty``: the write model keeps those counts, so a snapshot that
    mentions every live id knows it deletes nothing without scanning the scope."""

    known: dict[str, tuple[str, int]] = field(default_factory=dict)
    dirty: dict[str, tuple[str, int]] = field(default_factory=dict)
    live_delta: int = 0
    dead_delta: int = 0

    def get(self, rid: str) -> tuple[str, int] | None:
        return self.known.get(rid)

    def put(self, rid: str, content_hash: str, version: int) -> None:
        old = self.known.get(rid)
        if old is not None:
            if old[0]:
                self.live_delta -= 1
            else:
                self.dead_delta -= 1
        if content_hash:
            self.live_delta += 1
        else:
            self.dead_delta += 1
        self.known[rid] = self.dirty[rid] = (content_hash, version)


@dataclass(slots=True)
class Prepared:
    """A single resource after validation and extraction (the part that needs no state)."""

    data: dict[str, Any]
    extracted: Extracted | None
    issues: list[Issue]
    skipped: bool = False  # lacks a required property, and the schema skips such records


def prepare_single(body: bytes, schema: CompiledSchema) -> Prepared:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:  # the gateway checked; defend anyway
        return Prepared({}, None, [Issue(Code.INVALID_JSON, str(e), "")])
    lossy = document_issues(body, data)  # the gateway refuses these too; defend anyway
    if lossy:
        return Prepared({}, None, lossy[:MAX_ISSUES_PER_RESOURCE])
    return prepare_item(data, schema)


def prepare_item(data: Any, schema: CompiledSchema, index: int | None = None) -> Prepared:
    """Shape (defaults, normalisation), then validate and extract ``data``."""
    issues = schema.shape(data)
    skipped = schema.missing_required(data)
    if skipped is not None:
        return _skipped(data, schema, skipped, index)
    issues += schema.validate(data)
    extracted: Extracted | None = None
    if isinstance(data, dict):
        ex = schema.extract(data)
        if isinstance(ex, Issue):
            issues.insert(0, ex)
        else:
            extracted = ex
    rid = extracted.id if extracted else None
    if issues and (rid is not None or index is not None):
        issues = [Issue(i.code, i.message, i.pointer, rid, index) for i in issues]
    return Prepared(data if isinstance(data, dict) else {}, extracted, issues)


def _skipped(
    data: dict[str, Any], schema: CompiledSchema, issues: list[Issue], index: int | None
) -> Prepared:
    ex = schema.extract(data)
    rid = ex.id if isinstance(ex, Extracted) else None
    issues = [Issue(i.code, i.message, i.pointer, rid, index) for i in issues]
    return Prepared(data, None, issues, skipped=True)


def decide_single(meta: RawMeta, prep: Prepared, state: ScopeState) -> Change:
    if prep.skipped:  # changes nothing; the receipt counts it and its issue says why
        issues = [i.as_dict() for i in prep.issues[:MAX_ISSUES]]
        return Change(meta, "applied", issues=issues, issues_total=len(prep.issues), skipped=1)
    if prep.issues or prep.extracted is None:
        issues = [i.as_dict() for i in prep.issues[:MAX_ISSUES]]
        return Change(meta, "rejected", rejected=1, issues=issues, issues_total=len(prep.issues))
    ex = prep.extracted
    change = Change(meta, "applied")
    apply_upsert(change, state, ex, prep.data)
    return change


def apply_upsert(change: Change, state: ScopeState, ex: Extracted, data: dict[str, Any]) -> None:
    cur = state.get(ex.id)
    if cur is not None and cur[0] == ex.content_hash:
        change.unchanged += 1
        return
    if cur is None or cur[0] == "":
        op = "created"
        version = 1 if cur is None else cur[1] + 1
    else:
        op = "updated"
        version = cur[1] + 1
    state.put(ex.id, ex.content_hash, version)
    change.effects.append(
        Effect(op, ex.id, version, ex.content_hash, ex.name, ex.important, data)  # type: ignore[arg-type]
    )


def apply_delete(change: Change, state: ScopeState, rid: str) -> bool:
    cur = state.get(rid)
    if cur is None or cur[0] == "":
        return False
    state.put(rid, "", cur[1] + 1)
    change.effects.append(Effect("deleted", rid, cur[1] + 1))
    return True


def decide_delete(meta: RawMeta, state: ScopeState) -> Change:
    change = Change(meta, "applied")
    for rid in dict.fromkeys(meta.ids or []):
        if not apply_delete(change, state, rid):
            change.ignored.append(rid)
    return change


def rejected_body(index: int | None, rid: str | None, body: bytes) -> list[Any]:
    """A rejected event's (or item's) entry in :attr:`Change.bodies`: its index (None:
    a single event), the resource id when it was taken, and its body as text."""
    return [index, rid, body.decode("utf-8", "replace")]


def issues_resource_id(issues: list[dict[str, Any]]) -> str | None:
    """The resource id a rejected single event's issues name, if any."""
    return next((i["resourceId"] for i in issues if i.get("resourceId") is not None), None)
