"""JSON Pointer (RFC 6901) tokens: the one home of their escaping."""

from __future__ import annotations

from collections.abc import Iterable


def escape(token: object) -> str:
    """One reference token: ``~`` is written ``~0`` and ``/`` is written ``~1``."""
    return str(token).replace("~", "~0").replace("/", "~1")


def unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def join(tokens: Iterable[object], base: str = "") -> str:
    """The pointer of ``tokens`` below ``base`` (``""`` is the whole document)."""
    return base + "".join("/" + escape(t) for t in tokens)
