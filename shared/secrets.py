"""Secret source parameters at rest: sealed with Fernet (AES-128-CBC + HMAC-SHA256).

``INGESTD_SECRET_KEY`` holds one or more comma-separated Fernet keys: the first seals,
every one opens (:class:`~cryptography.fernet.MultiFernet`), so a key is rotated by
putting the new one first and keeping the old one after it until every source has been
written again.
"""

from __future__ import annotations

from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shared.codes import Code
from shared.errors import ApiError, ConfigError


class SecretError(ApiError):
    """A sealed blob none of the configured keys opens (a key was removed too early):
    503 ``unavailable`` to an HTTP client, naming the setting to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNAVAILABLE, message, status=503)


class SecretBox:
    """Seals and opens a dict of secret values (JSON inside a Fernet token)."""

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise ConfigError("INGESTD_SECRET_KEY must hold at least one key")
        try:
            fernets = [Fernet(k.encode()) for k in parts]
        except ValueError as e:  # never echo the key itself
            raise ConfigError(
                "INGESTD_SECRET_KEY must be comma-separated Fernet keys (32 url-safe "
                "base64-encoded bytes each; `ingestd dev` generates one)"
            ) from e
        self._box = MultiFernet(fernets)

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def seal(self, values: dict[str, Any]) -> bytes:
        return self._box.encrypt(orjson.dumps(values))

    def open(self, blob: bytes) -> dict[str, Any]:
        try:
            data = orjson.loads(self._box.decrypt(bytes(blob)))
        except InvalidToken as e:
            raise SecretError(
                "a source's secret parameters cannot be decrypted with INGESTD_SECRET_KEY "
                "(was the key that sealed them removed?)"
            ) from e
        if not isinstance(data, dict):
            raise SecretError("a source's sealed secret parameters are not an object")
        return data
