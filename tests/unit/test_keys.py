"""Ingest key format, parsing and constant-time comparison (pure functions)."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from shared import keys

KEY_FORMAT = re.compile(r"^igk_([0-9a-f]{16})_([A-Za-z0-9_-]{43,})$")


def test_new_key_format_and_entropy() -> None:
    k = keys.new_key()
    m = KEY_FORMAT.match(k.plaintext)
    assert m, k.plaintext
    assert m.group(1) == k.key_id
    secret = m.group(2)
    raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    assert len(raw) >= 32
    assert k.secret_sha256 == hashlib.sha256(secret.encode()).digest()
    assert secret.encode() not in k.secret_sha256


def test_new_keys_are_unique() -> None:
    made = [keys.new_key() for _ in range(200)]
    assert len({k.key_id for k in made}) == 200
    assert len({k.plaintext for k in made}) == 200


def test_split_key_round_trip() -> None:
    k = keys.new_key()
    parts = keys.split_key(k.plaintext)
    assert parts is not None
    key_id, secret = parts
    assert key_id == k.key_id
    assert k.plaintext == f"igk_{key_id}_{secret}"


@pytest.mark.parametrize(
    "value",
    ["", "igk_", "igk__secret", "igk_abc", "igk_abc_", "xyz_abc_secret", "IGK_abc_secret"],
)
def test_split_key_refuses_malformed(value: str) -> None:
    assert keys.split_key(value) is None


def test_matches_only_the_right_secret() -> None:
    k = keys.new_key()
    parts = keys.split_key(k.plaintext)
    assert parts is not None
    assert keys.matches(parts[1], k.secret_sha256)
    assert not keys.matches(parts[1] + "x", k.secret_sha256)
    assert not keys.matches(parts[1][:-1], k.secret_sha256)
    assert not keys.matches("", k.secret_sha256)
