"""The HTTP API's JSON views (camelCase) of what the stores return: one home each."""

from __future__ import annotations

from typing import Any

from shared.pg.registry import Group, Integration, IssuedKey, KeyRecord, Schema
from shared.pg.resources import HistoryEntry, Receipt, Resource, SyncIssue


def group_view(g: Group) -> dict[str, Any]:
    return {"id": g.id, "name": g.name, "prefix": g.prefix, "createdAt": g.created_at.isoformat()}


def schema_view(s: Schema) -> dict[str, Any]:
    return {
        "id": s.id,
        "table": s.table,
        "resourceType": s.resource_type,
        "title": s.title,
        "version": s.version,
        "schema": s.body,
        "createdAt": s.created_at.isoformat(),
    }


def integration_view(i: Integration) -> dict[str, Any]:
    return {
        "id": i.id,
        "name": i.name,
        "schemaGroup": i.group_id,
        "vendorId": i.vendor_id,
        "createdAt": i.created_at.isoformat(),
    }


def new_integration_view(i: Integration, key: IssuedKey) -> dict[str, Any]:
    """A created integration with its first key: the only time the key is shown."""
    return {**integration_view(i), "ingestKey": key.plaintext, "keyId": key.key_id}


def issued_key_view(k: IssuedKey) -> dict[str, Any]:
    return {"keyId": k.key_id, "ingestKey": k.plaintext, "createdAt": k.created_at.isoformat()}


def key_view(k: KeyRecord) -> dict[str, Any]:
    return {
        "keyId": k.key_id,
        "createdAt": k.created_at.isoformat(),
        "revokedAt": k.revoked_at.isoformat() if k.revoked_at else None,
    }


def resource_view(r: Resource) -> dict[str, Any]:
    return {
        "id": r.resource_id,
        "name": r.name,
        "importantFields": r.important_fields,
        "data": r.data,
        "_meta": {
            "resourceType": r.resource_type,
            "groupKey": r.group_key,
            "version": r.version,
            "contentHash": r.content_hash,
            "createdAt": r.created_at.isoformat(),
            "updatedAt": r.updated_at.isoformat(),
            "lastEventId": r.last_event_id,
        },
    }


def history_view(h: HistoryEntry) -> dict[str, Any]:
    return {
        "version": h.version,
        "op": h.op,
        "event": h.event,
        "actor": h.actor,
        "patch": h.patch,
        "after": h.after,
        "eventId": h.event_id,
        "receivedAt": h.received_at.isoformat(),
        "appliedAt": h.applied_at.isoformat(),
    }


def sync_issue_view(i: SyncIssue) -> dict[str, Any]:
    return {
        "id": i.id,
        "eventId": i.event_id,
        "integration": i.integration_id,
        "table": i.table,
        "resourceType": i.resource_type,
        "groupKey": i.group_key,
        "resourceId": i.resource_id,
        "index": i.index,
        "code": i.code,
        "message": i.message,
        "pointer": i.pointer,
        "createdAt": i.created_at.isoformat(),
    }


def receipt_view(r: Receipt) -> dict[str, Any]:
    """An applied receipt (a pending one is built from Redis by the ingest API)."""
    out = {
        "eventId": r.event_id,
        "status": r.status,
        "kind": r.kind,
        "table": r.table,
        "groupKey": r.group_key,
        "created": r.created,
        "updated": r.updated,
        "deleted": r.deleted,
        "unchanged": r.unchanged,
        "rejected": r.rejected,
        "skipped": r.skipped,
        "ignored": r.ignored,
        "issues": r.issues,
        "issuesTotal": r.issues_total,
        "receivedAt": r.received_at.isoformat(),
        "processedAt": r.processed_at.isoformat(),
        **({"replayOf": r.replay_of} if r.replay_of else {}),
    }
    if r.items is not None:  # a batch event: every item's outcome (the first 1,000)
        out["items"] = r.items
        out["itemsTotal"] = r.items_total
    return out
