"""The rows one projector batch writes: pure, values in and values out.

:func:`build_rows` turns a batch of change entries and the previous state of the
resources they touch into the history rows, receipts (``ingest_events``), sync issues,
deletes and final upserts :class:`~shared.pg.projection.Projection` writes. Each row
tuple is in the column order :mod:`shared.pg.projection` names for its table. A bulk
snapshot with many effects arrives as consecutive entries of which only the last
(``Change.last``) yields the receipt and sync issues.

Local fields (:mod:`shared.ownership`): a sync's effect carries the external fields
only, and the resource stored (and the history's ``after``) is those plus the local
values of the previous state; a ``patch`` effect is a merge patch of the previous
state. Patches in history are computed between those merged states.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import jsonpatch

from shared.codes import Code
from shared.events import Change, Effect
from shared.ownership import apply_patch, keep_local
from shared.pointer import escape

#: (resource_type, group_key, resource_id)
Key = tuple[str, str, str]


def json_patch(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 patch from ``before`` to ``after``. Creates and deletes (one side empty)
    are built directly; jsonpatch's general diff costs ~50x more and is kept for updates."""
    if not before:
        return [{"op": "add", "path": "/" + escape(k), "value": v} for k, v in after.items()]
    if not after:
        return [{"op": "remove", "path": "/" + escape(k)} for k in before]
    patch: list[dict[str, Any]] = jsonpatch.make_patch(before, after).patch
    return patch


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(slots=True)
class BatchRows:
    """``history``, ``events``, ``issues``: rows of ``resource_changes``, ``ingest_events``
    and ``sync_issues``; ``deletes``: resources gone; ``final``: each touched resource's
    last state, (name, important fields, data, content hash, version, event id) or None
    when it ends deleted; ``new``: those of ``final``'s keys no row held before the batch
    (inserted without a conflict check); ``rejected``: rows of ``rejected_bodies``;
    ``now``: the batch's time (history's ``applied_at``, and the ``resources`` timestamps
    it sets)."""

    history: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    issues: list[tuple[Any, ...]] = field(default_factory=list)
    rejected: list[tuple[Any, ...]] = field(default_factory=list)
    now: datetime | None = None
    deletes: set[Key] = field(default_factory=set)
    final: dict[Key, tuple[Any, ...] | None] = field(default_factory=dict)
    new: set[Key] = field(default_factory=set)


def keys_of(changes: list[Change]) -> set[Key]:
    """Every resource the batch touches."""
    return {
        (c.meta.resource_type, c.meta.group_key, e.resource_id) for c in changes for e in c.effects
    }


def build_rows(changes: list[Change], prev: dict[Key, Any], now: datetime) -> BatchRows:
    """Pure: the rows one batch writes, with patches computed against the previous state.
    ``prev`` holds the stored data of EVERY key of the batch that a row holds: a key
    absent from it is inserted without a conflict check (``BatchRows.new``)."""
    out = BatchRows(now=now)
    current = dict(prev)
    for ch in changes:
        m = ch.meta
        received = _ts(m.received_ms)
        for e in ch.effects:
            key = (m.resource_type, m.group_key, e.resource_id)
            before = current.get(key) or {}
            after = e.data if e.op != "deleted" else None
            if after is not None and (ch.local or m.kind == "patch"):
                after = _with_local(ch, e, before)
            patch = json_patch(before, after or {})
            out.history.append(
                (
                    m.resource_type,
                    m.group_key,
                    e.resource_id,
                    e.version,
                    e.op,
                    m.event,
                    m.actor,
                    patch,
                    after,
                    m.id,
                    received,
                    now,
                    e.name,
                    None if after is None else (e.important or {}),
                    e.content_hash,
                )
            )
            current[key] = after
            if e.op == "deleted":
                out.deletes.add(key)
                out.final[key] = None
            else:
                out.final[key] = (e.name, e.important or {}, after, e.content_hash, e.version, m.id)
                if key not in prev:
                    out.new.add(key)
        if ch.last:
            _receipt_rows(out, ch, received, now)
        elif ch.status == "rejected":  # a refused slice: its issue, without a receipt
            out.issues += _issue_rows(ch, now)
    return out


def _with_local(ch: Change, e: Effect, before: dict[str, Any]) -> dict[str, Any]:
    """The state an effect leaves when local fields are involved (see the module doc)."""
    assert e.data is not None
    if ch.meta.kind == "patch":
        return apply_patch(before, e.data)
    return keep_local(e.data, before, ch.local or []) if before else e.data


def refusal(ch: Change, reason: str) -> Change:
    """What a change PostgreSQL refused for good becomes: nothing of its effects; for the
    last entry of an event, a rejected receipt whose issue says why; for an earlier slice
    of a snapshot, that issue alone (a receipt-less change that still records it)."""
    issue = {
        "code": Code.UNPROCESSABLE,
        "message": f"PostgreSQL refused to store this change ({len(ch.effects)} effect(s)): "
        f"{reason}",
        "pointer": None,
    }
    # without its Idempotency-Key: the refusal may be the key's unique index itself (an
    # event whose key another receipt row holds), and the refusal's row must be storable
    meta = replace(ch.meta, extra={k: v for k, v in ch.meta.extra.items() if k != "idem"},
                   raw=None)  # fmt: skip
    return Change(meta, "rejected", rejected=max(1, len(ch.effects)), issues=[issue],
                  issues_total=1, last=ch.last, totals={})  # fmt: skip


def _receipt_rows(out: BatchRows, ch: Change, received: datetime, now: datetime) -> None:
    """The ``ingest_events`` row of a change's last entry, and its sync issues."""
    m = ch.meta
    c = ch.counts()
    integration = m.integration  # asyncpg takes a uuid column's value as text
    idem_key, fingerprint = m.idempotency()
    out.events.append(
        (
            m.id,
            integration,
            m.table,
            m.resource_type,
            m.group_key,
            m.kind,
            ch.status,
            m.event,
            m.actor,
            c["created"],
            c["updated"],
            c["deleted"],
            c["unchanged"],
            c["rejected"],
            c["skipped"],
            ch.ignored,
            ch.issues,
            ch.issues_total,
            received,
            now,
            idem_key,
            fingerprint,
            ch.items,
            ch.items_total if ch.items is not None else None,
            m.extra.get("replayOf"),
            m.extra.get("replayItem"),
        )
    )
    out.issues += _issue_rows(ch, now)
    for index, rid, body in ch.bodies or ():
        out.rejected.append(
            (m.id, index, integration, m.table, m.resource_type, m.group_key, rid,
             body.encode(), now)
        )  # fmt: skip


def _issue_rows(ch: Change, now: datetime) -> list[tuple[Any, ...]]:
    m = ch.meta
    return [
        (
            m.id,
            m.integration,
            m.table,
            m.resource_type,
            m.group_key,
            i.get("resourceId"),
            i.get("index"),
            i["code"],
            i["message"],
            i.get("pointer"),
            now,
        )
        for i in ch.issues
    ]
