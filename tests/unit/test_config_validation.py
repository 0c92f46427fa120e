"""Start-up failures a new user meets end in a clean exit 2 with one clear line, never a
traceback: bad values are refused by ``shared.config`` (ConfigError), an unreachable
PostgreSQL by ``ingestd migrate`` and ``ingestd dev`` (TransientError)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from tests.e2e.procs import INGESTD, unconfigured_env

# nothing listens on port 9 (discard) of the loopback: the connection is refused at once
UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:9/ingestd"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("INGESTD_LOG_LEVEL", "verbose", "INGESTD_LOG_LEVEL must be one of DEBUG, INFO"),
        ("INGESTD_HTTP_PORT", "70000", "INGESTD_HTTP_PORT must be a TCP port (0-65535)"),
        ("INGESTD_HTTP_PORT", "65536", "INGESTD_HTTP_PORT must be a TCP port"),
        ("DATABASE_URL", "localhost:5432", "DATABASE_URL must be a URL starting with postgresql"),
        ("DATABASE_URL", "mysql://u@h/db", "DATABASE_URL must be a URL starting with"),
        ("REDIS_URL", "127.0.0.1:6379", "REDIS_URL must be a URL starting with redis://"),
        ("REDIS_URL", "redis://127.0.0.1:6379/cache", "path must be a database number"),
    ],
)
def test_bad_values_are_refused(name: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    ("name", "value", "attr", "expected"),
    [
        ("INGESTD_LOG_LEVEL", "warning", "log_level", "WARNING"),
        ("INGESTD_LOG_LEVEL", " debug ", "log_level", "DEBUG"),
        ("INGESTD_HTTP_PORT", "65535", "http_port", 65535),
        ("DATABASE_URL", "postgres://u@h/db", "database_url", "postgres://u@h/db"),
        (  # what the embedded PostgreSQL's URL looks like: a socket folder as host
            "DATABASE_URL",
            "postgresql://postgres:@/postgres?host=/tmp/x/postgres",
            "database_url",
            "postgresql://postgres:@/postgres?host=/tmp/x/postgres",
        ),
        ("DATABASE_URL", "postgresql://h1:5432,h2:5432/db", "database_url", None),
        ("REDIS_URL", "redis://r", "redis_url", "redis://r"),
        ("REDIS_URL", "rediss://r:6380/15", "redis_url", "rediss://r:6380/15"),
        ("REDIS_URL", "unix:///run/redis.sock?db=2", "redis_url", "unix:///run/redis.sock?db=2"),
    ],
)
def test_good_values_are_kept(name: str, value: str, attr: str, expected: object) -> None:
    got = getattr(Settings.from_env({name: value}), attr)
    assert got == (value if expected is None else expected)


def test_a_password_never_appears_in_the_message() -> None:
    with pytest.raises(ConfigError) as e:
        Settings.from_env({"DATABASE_URL": "mysql://alice:s3cret@db/x"})
    assert "s3cret" not in str(e.value) and "mysql://alice:***@db/x" in str(e.value)


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INGESTD, *args],
        env={**unconfigured_env(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["migrate"], {"INGESTD_LOG_LEVEL": "loud"}, "INGESTD_LOG_LEVEL must be one of"),
        (["gateway"], {"INGESTD_HTTP_PORT": "99999"}, "INGESTD_HTTP_PORT must be a TCP port"),
        (["dev"], {"INGESTD_HTTP_PORT": "99999"}, "INGESTD_HTTP_PORT must be a TCP port"),
        (["worker"], {"REDIS_URL": "localhost"}, "REDIS_URL must be a URL starting with"),
    ],
)
def test_cli_refuses_bad_values(
    args: list[str], env: dict[str, str], needle: str, tmp_path: Path
) -> None:
    done = run(args, env, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"configuration error: {needle}"), done.stderr


@pytest.mark.parametrize("command", ["migrate", "dev"])
def test_unreachable_postgresql_is_a_clean_exit_2(command: str, tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": UNREACHABLE_PG,
        "REDIS_URL": "redis://127.0.0.1:9/0",
        "INGESTD_DATA_DIR": str(tmp_path / "data"),
    }
    done = run([command], env, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cannot start: cannot reach PostgreSQL: "), done.stderr
