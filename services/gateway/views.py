"""The HTTP API's JSON views (camelCase) of what the stores return: one home each."""

from __future__ import annotations

from typing import Any

from shared.pg.registry import Group, Integration, IssuedKey, KeyRecord, Schema


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
