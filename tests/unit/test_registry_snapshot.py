from __future__ import annotations

from shared import keys
from shared.registry import KeyInfo, RegistrySnapshot


def _snapshot() -> tuple[RegistrySnapshot, str]:
    k = keys.new_key()
    snap = RegistrySnapshot()
    snap.keys[k.key_id] = KeyInfo(k.key_id, "integration", "group", k.secret_sha256)
    return snap, k.plaintext


def test_verified_key_is_remembered_and_wrong_secrets_are_not() -> None:
    snap, key = _snapshot()
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert snap.authenticate(wrong) is None
    assert snap._verified == {}  # unknown keys never fill the cache
    info = snap.authenticate(key)
    assert info is not None and snap._verified == {key: info}
    assert snap.authenticate(key) is info


def test_a_new_snapshot_forgets_verified_keys() -> None:
    snap, key = _snapshot()
    assert snap.authenticate(key) is not None
    assert RegistrySnapshot().authenticate(key) is None  # e.g. after a revocation
