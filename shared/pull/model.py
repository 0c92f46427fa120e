"""The values every part of the pull path passes around."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote, quote_plus

from shared.codes import Code

RunKind = Literal["incremental", "backfill"]


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request of a run, fully rendered (placeholders substituted)."""

    method: str  # "GET" | "POST"
    url: str  # absolute, query included, percent-encoded
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """The time window of a run: [start, end). ``start`` None: from the beginning
    (a backfill run, or an incremental run without a previous success or startTime).
    Both are timezone-aware UTC datetimes."""

    start: datetime | None
    end: datetime


@dataclass(frozen=True, slots=True)
class Page:
    """One answer of the remote API, parsed."""

    data: Any  # the JSON body
    headers: Mapping[str, str]  # case-insensitive lookup (a CIMultiDict from aiohttp)
    count: int  # records found at contentPath (before any explode)


class PullError(Exception):
    """A run (or a preview) cannot go on: ``code`` is one of the 502 codes of
    :class:`shared.codes.Code`; ``request`` is the masked method + URL it concerns."""

    def __init__(self, code: Code, message: str, request: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request = request

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "request": self.request}


MASK = "******"


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced by ``******``: as given, and in the
    percent-encoded forms a URL carries (``quote`` and ``quote_plus``). Longest first,
    so a secret that contains another is masked whole."""
    forms: set[str] = set()
    for s in secrets:
        if s:
            forms.update((s, quote(s, safe=""), quote_plus(s, safe=""), quote(s)))
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text
