"""SecretBox: sealed values round-trip, the ciphertext holds no plaintext, keys rotate."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from shared.secrets import SecretBox, SecretError

VALUES = {"apiKey": "s3cr3t-value-XYZ", "n": 5, "nested": {"a": [1, "two"]}}


def test_round_trip_and_no_plaintext() -> None:
    box = SecretBox(SecretBox.generate_key())
    blob = box.seal(VALUES)
    assert box.open(blob) == VALUES
    assert b"s3cr3t" not in blob and b"apiKey" not in blob
    assert box.seal(VALUES) != blob  # a fresh IV every time


def test_rotation_first_key_seals_all_keys_open() -> None:
    old, new = SecretBox.generate_key(), SecretBox.generate_key()
    sealed_old = SecretBox(old).seal(VALUES)
    rotated = SecretBox(f"{new}, {old}")
    assert rotated.open(sealed_old) == VALUES
    sealed_new = rotated.seal(VALUES)
    assert SecretBox(new).open(sealed_new) == VALUES
    with pytest.raises(SecretError):
        SecretBox(old).open(sealed_new)


def test_wrong_key_is_a_secret_error() -> None:
    blob = SecretBox(SecretBox.generate_key()).seal(VALUES)
    with pytest.raises(SecretError) as e:
        SecretBox(SecretBox.generate_key()).open(blob)
    assert "INGESTD_SECRET_KEY" in str(e.value)
    assert (e.value.status, e.value.code) == (503, "unavailable")


@pytest.mark.parametrize("keys", ["", " , ", "not-a-key", "short,also"])
def test_bad_keys_are_a_config_error_that_does_not_echo_them(keys: str) -> None:
    with pytest.raises(ConfigError) as e:
        SecretBox(keys)
    if keys.strip(" ,"):
        assert keys not in str(e.value)


def test_settings_read_and_check_the_key() -> None:
    key = SecretBox.generate_key()
    assert Settings.from_env({"INGESTD_SECRET_KEY": key}).secret_key == key
    assert Settings.from_env({}).secret_key is None
    with pytest.raises(ConfigError, match="INGESTD_SECRET_KEY"):
        Settings.from_env({"INGESTD_SECRET_KEY": "nope"})


def test_source_settings_defaults_and_child_env() -> None:
    s = Settings.from_env({})
    assert (
        s.source_retries,
        s.source_connect_timeout_ms,
        s.source_read_timeout_ms,
        s.source_stale_s,
        s.source_poll_ms,
    ) == (5, 10_000, 30_000, 60, 1000)
    env = {
        "INGESTD_SECRET_KEY": SecretBox.generate_key(),
        "INGESTD_SOURCE_RETRIES": "0",
        "INGESTD_SOURCE_CONNECT_TIMEOUT_MS": "500",
        "INGESTD_SOURCE_READ_TIMEOUT_MS": "700",
        "INGESTD_SOURCE_STALE_S": "5",
        "INGESTD_SOURCE_POLL_MS": "50",
    }
    s = Settings.from_env(env)
    assert env.items() <= s.server_env().items()
    assert Settings.from_env(s.server_env()) == s
    with pytest.raises(ConfigError, match="INGESTD_SOURCE_STALE_S"):
        Settings.from_env({"INGESTD_SOURCE_STALE_S": "0"})
