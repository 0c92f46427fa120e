"""Opaque page cursors: signed, and bound to the query that produced them.

A cursor carries the keyset position of the last item of a page. It is signed with
a key derived from the gateways' shared admin token (any gateway accepts a cursor
another one issued), and the MAC covers the query it belongs to (the resource type,
the groupKey, the filters), so a forged cursor, or one from another query, is
refused instead of silently listing from somewhere else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

import orjson

MAC_BYTES = 16


class BadCursor(ValueError):
    """Not a cursor this service issued for this query."""


def key_for(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"ingestd page cursor", hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode((text + "=" * (-len(text) % 4)).encode("ascii"), b"-_", validate=True)


def _mac(key: bytes, query: Any, payload: bytes) -> bytes:
    bound = orjson.dumps(query, option=orjson.OPT_SORT_KEYS) + b"\x00" + payload
    return hmac.new(key, bound, hashlib.sha256).digest()[:MAC_BYTES]


def issue(key: bytes, query: Any, position: list[Any]) -> str:
    payload = orjson.dumps(position)
    return f"{_b64(payload)}.{_b64(_mac(key, query, payload))}"


def position(key: bytes, query: Any, cursor: str) -> list[Any]:
    """The position ``cursor`` holds, or :class:`BadCursor`."""
    try:
        data, _, mac = cursor.partition(".")
        payload, given = _unb64(data), _unb64(mac)
        if not hmac.compare_digest(given, _mac(key, query, payload)):
            raise BadCursor("signature")
        out = orjson.loads(payload)
    except (binascii.Error, UnicodeError, ValueError) as e:
        raise BadCursor(str(e)) from e
    if not isinstance(out, list):
        raise BadCursor("shape")
    return out
