"""The README's code blocks and shown outputs, for the tests that run its examples."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[tuple[str, str]]:
    """(the paragraph before it, the content) of every ```lang block of the README."""
    pattern = re.compile(rf"([^\n]*(?:\n[^\n]+)*)\n\n```{lang}\n(.*?)```\n", re.S)
    return [(m.group(1), m.group(2)) for m in pattern.finditer(README)]


def block(lang: str, *, before: str = "", containing: str = "") -> str:
    found = [c for p, c in blocks(lang) if before in p and containing in c]
    assert len(found) == 1, (lang, before, containing, len(found))
    return found[0]


def output_matches(shown: str, printed: str) -> None:
    """Every line printed is the README's line, where `…` stands for a generated id (or
    time, or rate); trailing spaces do not count (a table pads its last column)."""
    want, got = shown.splitlines(), printed.splitlines()
    assert len(got) == len(want), printed
    for w, g in zip(want, got, strict=True):
        assert re.fullmatch(re.escape(w).replace("…", r"\S+?"), g.rstrip()), (w, g)
