"""Ingest keys: ``igk_<keyid>_<secret>``; only SHA-256 of the secret is stored.

The secret is 32 random bytes, so a fast hash is enough (no password
stretching needed); lookups go by the non-secret key id and compare the
digest in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "igk_"


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    plaintext: str
    secret_sha256: bytes


def new_key() -> NewKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, f"{KEY_PREFIX}{key_id}_{secret}", digest(secret))


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_key(plaintext: str) -> tuple[str, str] | None:
    if not plaintext.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = plaintext[len(KEY_PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


def matches(secret: str, stored: bytes) -> bool:
    return hmac.compare_digest(digest(secret), stored)
