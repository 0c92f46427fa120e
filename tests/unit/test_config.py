"""Settings come only from the environment; bad values are refused with ConfigError."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from tests.e2e.procs import INGESTD, unconfigured_env


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.database_url is None and s.redis_url is None
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8080)
    assert s.admin_token is None
    assert s.data_dir == Path(".ingestd")
    assert s.partitions == 16
    assert s.log_level == "INFO"


def test_empty_strings_mean_defaults() -> None:
    s = Settings.from_env({"DATABASE_URL": "", "INGESTD_PARTITIONS": "", "INGESTD_ADMIN_TOKEN": ""})
    assert s.database_url is None and s.partitions == 16 and s.admin_token is None


def test_every_documented_variable_is_read() -> None:
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://db/x",
            "REDIS_URL": "redis://r:6379/2",
            "INGESTD_HTTP_HOST": "0.0.0.0",
            "INGESTD_HTTP_PORT": "9090",
            "INGESTD_ADMIN_TOKEN": "tok",
            "INGESTD_DATA_DIR": "/var/lib/ingestd",
            "INGESTD_PARTITIONS": "64",
            "INGESTD_LOG_LEVEL": "debug",
        }
    )
    assert s.require_servers() == ("postgresql://db/x", "redis://r:6379/2")
    assert (s.http_host, s.http_port, s.admin_token) == ("0.0.0.0", 9090, "tok")
    assert (s.data_dir, s.partitions, s.log_level) == (Path("/var/lib/ingestd"), 64, "DEBUG")


def test_port_zero_is_allowed() -> None:
    assert Settings.from_env({"INGESTD_HTTP_PORT": "0"}).http_port == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGESTD_HTTP_PORT", "eighty"),
        ("INGESTD_HTTP_PORT", "-1"),
        ("INGESTD_PARTITIONS", "abc"),
        ("INGESTD_PARTITIONS", "0"),
        ("INGESTD_PARTITIONS", "1.5"),
        ("INGESTD_MAX_BACKLOG", "lots"),
    ],
)
def test_bad_integers_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_servers_are_required_outside_dev() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env({"REDIS_URL": "redis://x"}).require_servers()


def test_server_env_round_trips_through_from_env() -> None:
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://db/x",
            "REDIS_URL": "redis://r",
            "INGESTD_PARTITIONS": "8",
            "INGESTD_ADMIN_TOKEN": "t",
            "INGESTD_HTTP_PORT": "1234",
        }
    )
    assert Settings.from_env(s.server_env()) == s


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["migrate"], {"INGESTD_PARTITIONS": "many"}, "INGESTD_PARTITIONS must be an integer"),
        (["migrate"], {}, "DATABASE_URL and REDIS_URL must be set"),
        (
            ["gateway"],
            {"DATABASE_URL": "postgresql://127.0.0.1:9/x", "REDIS_URL": "redis://127.0.0.1:9"},
            "INGESTD_ADMIN_TOKEN must be set",
        ),
    ],
)
def test_cli_reports_configuration_errors(
    args: list[str], env: dict[str, str], needle: str
) -> None:
    base = unconfigured_env()
    done = subprocess.run(
        [INGESTD, *args], env={**base, **env}, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert f"configuration error: {needle}" in done.stderr
