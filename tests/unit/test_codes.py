"""The README's code tables list exactly the codes of :mod:`shared.codes`."""

from __future__ import annotations

import re
from pathlib import Path

from shared.codes import API_ERRORS, ISSUES, Code

README = Path(__file__).resolve().parents[2] / "README.md"


def _section(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i : text.index(end, i)]


def test_error_table_lists_exactly_the_api_error_codes() -> None:
    table = _section(README.read_text(), "### Error codes", "Codes in receipts")
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| ")]
    listed = {c for row in rows[1:] for c in re.findall(r"`([a-z_]+)`", row[2])}
    assert listed == {c.value for c in API_ERRORS}


def test_issue_list_names_exactly_the_issue_codes() -> None:
    text = _section(README.read_text(), "Codes in receipts", "## Configuration")
    listed = set(re.findall(r"`([a-z_]+)`", text)) - {"sync_issues"}
    assert listed == {c.value for c in ISSUES}


def test_every_code_is_documented_somewhere() -> None:
    assert API_ERRORS | ISSUES == set(Code)
