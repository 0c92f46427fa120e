"""Fixtures of the process-level tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.devproc import data_folder


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """`INGESTD_DATA_DIR` for an `ingestd dev` of the test's own (see data_folder)."""
    with data_folder() as folder:
        yield folder
