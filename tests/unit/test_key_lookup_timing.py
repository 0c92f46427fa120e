"""An unknown key id costs the same work as a known id with a wrong secret.

Not a timing test: it shows that both refusals hash the secret and compare digests,
so neither answers sooner and a key id's existence cannot be told by timing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared import keys
from shared.registry import KeyInfo, RegistrySnapshot


@pytest.fixture
def compares(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, bytes]]]:
    """Every (secret, stored digest) pair ``keys.matches`` compares, each after hashing
    the secret (``keys.digest``, also recorded)."""
    seen: list[tuple[str, bytes]] = []
    hashed: list[str] = []
    real_matches, real_digest = keys.matches, keys.digest

    def matches(secret: str, stored: bytes) -> bool:
        n = len(hashed)
        ok = real_matches(secret, stored)
        assert hashed[n:] == [secret]  # the secret was hashed for this compare
        seen.append((secret, stored))
        return ok

    def digest(secret: str) -> bytes:
        hashed.append(secret)
        return real_digest(secret)

    monkeypatch.setattr(keys, "matches", matches)
    monkeypatch.setattr(keys, "digest", digest)
    yield seen


def test_a_wrong_key_id_and_a_wrong_secret_do_the_same_work(
    compares: list[tuple[str, bytes]],
) -> None:
    k = keys.new_key()
    snap = RegistrySnapshot()
    snap.add_key(KeyInfo(k.key_id, "integration", "group", k.secret_sha256))
    secret = k.plaintext.rsplit("_", 1)[1]
    wrong_secret = f"{keys.KEY_PREFIX}{k.key_id}_{'x' * len(secret)}"
    wrong_id = f"{keys.KEY_PREFIX}{'0' * len(k.key_id)}_{secret}"

    assert snap.authenticate(wrong_secret) is None
    assert snap.authenticate(wrong_id) is None
    assert [s for s, _ in compares] == ["x" * len(secret), secret]
    assert all(len(stored) == 32 for _, stored in compares)  # a SHA-256 digest each time
    assert compares[1][1] != k.secret_sha256

    assert snap.authenticate(k.plaintext) is not None  # the right key still verifies
    assert snap._verified == {k.plaintext: snap.keys[k.key_id]}  # refusals are not cached
