"""The README's "SQL tables for analysts" against the migrated database: each table is
listed once, exists, and its row names every column the table has (a stale or doubled
row is what an analyst would otherwise trust)."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## SQL tables for analysts"


def _rows() -> list[tuple[list[str], str]]:
    text = README.read_text()
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in body.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        tables = re.findall(r"`([a-z_]+)`", cells[0])
        rows.append((tables, cells[2] if len(cells) > 2 else ""))
    return rows


async def test_each_table_is_listed_once_and_its_row_names_every_column(
    pool: asyncpg.Pool,
) -> None:
    rows = _rows()
    listed = [t for tables, _ in rows for t in tables]
    assert len(listed) == len(set(listed)), f"listed more than once: {listed}"
    omitted: dict[str, list[str]] = {}
    async with pool.acquire() as conn:
        for tables, columns in rows:
            for table in tables:
                found = await conn.fetch(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = $1",
                    table,
                )
                assert found, f"README lists {table}, which the migrations do not create"
                if not columns:  # a registry row names its tables only
                    continue
                named = set(re.findall(r"[a-z_]+", columns))
                missing = {r["column_name"] for r in found} - named
                if missing:
                    omitted[table] = sorted(missing)
    assert not omitted, f"README's rows omit these columns: {omitted}"
