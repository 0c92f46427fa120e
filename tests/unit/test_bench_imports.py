"""``make bench`` is not part of ``make test``, so at least every bench module must import
(a refactor once broke figure 7 silently: its child script imported a moved name)."""

from __future__ import annotations

import importlib
import pkgutil

import tests.bench


def test_every_bench_module_imports() -> None:
    names = [m.name for m in pkgutil.iter_modules(tests.bench.__path__)]
    assert "bulk_diff" in names
    for name in names:
        importlib.import_module(f"tests.bench.{name}")
