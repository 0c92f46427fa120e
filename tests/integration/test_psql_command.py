"""`ingestd psql` opens psql on the configured database (the embedded one's cases, with
`ingestd dev` running and stopped, are in tests/e2e/test_walkthrough.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from shared.config import Settings
from tests.conftest import TEST_DB
from tests.e2e.procs import INGESTD, unconfigured_env


def psql(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INGESTD, "psql", *args],
        env={**unconfigured_env(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_psql_on_database_url(settings: Settings, tmp_path: Path) -> None:
    assert settings.database_url
    done = psql(
        {"DATABASE_URL": settings.database_url},
        tmp_path,
        "-At",
        "-c",
        "SELECT current_database(), count(*) FROM schema_migrations",
    )
    assert done.returncode == 0, done.stderr
    name, migrations = done.stdout.strip().split("|")
    # the run's own database: ingestd_test_<pid> on a configured server, else the embedded one's
    assert name == urlsplit(settings.database_url).path.lstrip("/") and int(migrations) >= 1
    assert name == TEST_DB or not os.environ.get("DATABASE_URL")


async def test_psql_passes_psql_errors_on(settings: Settings, tmp_path: Path) -> None:
    assert settings.database_url
    done = psql(
        {"DATABASE_URL": settings.database_url},
        tmp_path,
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "SELECT * FROM no_such_table",
    )
    assert done.returncode != 0
    assert 'relation "no_such_table" does not exist' in done.stderr


def test_psql_without_an_embedded_database_yet(tmp_path: Path) -> None:
    done = psql({"INGESTD_DATA_DIR": str(tmp_path / "data")}, tmp_path, "-c", "SELECT 1")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"configuration error: no embedded database in {(tmp_path / 'data/postgres').resolve()}"
        " yet: start `ingestd dev` (make run) once, or set DATABASE_URL"
    )
