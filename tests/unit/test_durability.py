"""Which servers can back INGESTD_DURABILITY=strict (the pure half of shared/redis/durable)."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from shared.redis.durable import Server, parse, problem


def info(version: str, name: str = "redis") -> bytes:
    return f"# Server\r\nredis_version:{version}\r\nserver_name:{name}\r\n".encode()


PERSIST_ON = b"# Persistence\r\naof_enabled:1\r\n"


@pytest.mark.parametrize(
    ("version", "appendfsync", "ok"),
    [
        ("7.0.15", "always", True),
        ("7.0.15", "everysec", False),
        ("6.2.14", "always", True),
        ("7.2.4", "everysec", True),  # WAITAOF
        ("7.4.0", "no", True),  # WAITAOF waits for the fsync itself
        ("8.0.1", "everysec", True),
    ],
)
def test_which_servers_qualify(version: str, appendfsync: str, ok: bool) -> None:
    s = parse(info(version), PERSIST_ON, [b"appendonly", b"yes"], [b"appendfsync", appendfsync])
    assert (problem(s) is None) is ok


def test_appendonly_no_never_qualifies() -> None:
    s = parse(
        info("7.2.4"), b"aof_enabled:0\r\n", [b"appendonly", b"no"], [b"appendfsync", b"always"]
    )
    assert "runs with appendonly no" in (problem(s) or "")


def test_config_refused_falls_back_to_info_persistence() -> None:
    refused = ValueError("ERR unknown command 'CONFIG'")
    s = parse(info("7.0.15"), PERSIST_ON, refused, refused)
    assert s == Server((7, 0, 15), True, None)
    assert "refuses CONFIG GET" in (problem(s) or "")
    off = parse(info("7.0.15"), b"aof_enabled:0\r\n", refused, refused)
    assert "appendonly no" in (problem(off) or "")
    new = parse(info("7.2.4", "valkey"), PERSIST_ON, refused, refused)
    assert problem(new) is None and new.shown() == "valkey 7.2.4"


def test_the_setting() -> None:
    assert Settings.from_env({}).durability == "default"
    s = Settings.from_env({"INGESTD_DURABILITY": "strict"})
    assert s.strict and s.server_env()["INGESTD_DURABILITY"] == "strict"
    with pytest.raises(ConfigError, match="INGESTD_DURABILITY must be one of default, strict"):
        Settings.from_env({"INGESTD_DURABILITY": "paranoid"})
