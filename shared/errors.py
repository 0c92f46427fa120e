"""The project's error tree. Every user-facing error has a stable ``code`` (:mod:`shared.codes`).

Driver errors are translated at the boundary that meets them (``raise … from e``):
an unreachable server becomes :class:`TransientError`, which the entry points
report as a clean exit (code 2) instead of a traceback.
"""

from __future__ import annotations

from typing import Any

from shared.codes import Code


class IngestdError(Exception):
    """Base of every error ingestd raises on purpose."""


class ConfigError(IngestdError):
    """The environment does not describe a runnable configuration."""


class TransientError(IngestdError):
    """A dependency is unavailable; retrying later may succeed."""


class ApiError(IngestdError):
    """An error answered to an HTTP client as ``{"code", "message", "pointer"?}``."""

    status = 400

    def __init__(
        self,
        code: Code,
        message: str,
        *,
        status: int | None = None,
        pointer: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.pointer = pointer
        self.headers = headers or {}
        self.extra = extra or {}  # members the body carries besides these (a report)
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.pointer is not None:
            out["pointer"] = self.pointer
        out.update(self.extra)
        return out


class SchemaRuleError(ApiError):
    """A custom schema breaks one of the registry's rules (400)."""

    def __init__(self, code: Code, message: str, pointer: str | None = None) -> None:
        super().__init__(code, message, status=400, pointer=pointer)


class ConflictError(ApiError):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(code, message, status=409)


class NotFoundError(ApiError):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(code, message, status=404)
