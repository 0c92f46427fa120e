"""The gateway's bounds on Redis and on slow connections come from the environment."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.errors import ConfigError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.redis_timeout_ms, s.http_idle_timeout_ms, s.http_body_timeout_ms) == (
        2000,
        15_000,
        30_000,
    )


def test_read_and_passed_to_child_processes() -> None:
    env = {
        "INGESTD_REDIS_TIMEOUT_MS": "250",
        "INGESTD_HTTP_IDLE_TIMEOUT_MS": "5000",
        "INGESTD_HTTP_BODY_TIMEOUT_MS": "7000",
    }
    s = Settings.from_env(env)
    assert (s.redis_timeout_ms, s.http_idle_timeout_ms, s.http_body_timeout_ms) == (
        250,
        5000,
        7000,
    )
    assert env.items() <= s.server_env().items()  # `ingestd dev` hands them to its stages


@pytest.mark.parametrize(
    "name",
    ["INGESTD_REDIS_TIMEOUT_MS", "INGESTD_HTTP_IDLE_TIMEOUT_MS", "INGESTD_HTTP_BODY_TIMEOUT_MS"],
)
@pytest.mark.parametrize("value", ["0", "-5", "soon", "1.5"])
def test_bad_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
