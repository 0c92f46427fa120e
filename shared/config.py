"""Settings: the only module that reads the environment.

Entry points call :func:`Settings.from_env` once and pass the frozen object down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from shared.errors import ConfigError
from shared.secrets import SecretBox


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from e
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DATABASE_SCHEMES = ("postgresql", "postgres")
REDIS_SCHEMES = ("redis", "rediss", "unix")


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default, minimum=0)
    if value > 65535:
        raise ConfigError(f"{name} must be a TCP port (0-65535), got {value}")
    return value


def _log_level(env: Mapping[str, str], name: str, default: str) -> str:
    value = (env.get(name) or default).strip().upper()
    if value not in LOG_LEVELS:
        raise ConfigError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value


def _shown(url: str) -> str:
    """``url`` fit for an error message: a password replaced by ``***``."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, userinfo = head.rpartition("://")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{tail}" if ":" in userinfo else url


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    """A server URL, or None when unset; its scheme must be one of ``schemes``."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
    except ValueError as e:
        raise ConfigError(f"{name} is not a valid URL ({e}): {_shown(raw)}") from e
    if parts.scheme not in schemes or "://" not in raw:
        wanted = " or ".join(f"{s}://" for s in schemes)
        raise ConfigError(f"{name} must be a URL starting with {wanted}, got {_shown(raw)}")
    db = parts.path.strip("/")
    if parts.scheme in ("redis", "rediss") and db and not db.isdigit():
        raise ConfigError(
            f"{name}'s path must be a database number (redis://host:6379/0), got {_shown(raw)}"
        )
    return raw


def _secret_key(env: Mapping[str, str]) -> str | None:
    """The Fernet key(s) sealing secret source params, checked now (a bad one is a
    configuration error at start, not a 500 at the first source written)."""
    raw = (env.get("INGESTD_SECRET_KEY") or "").strip()
    if not raw:
        return None
    SecretBox(raw)
    return raw


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(raw: str) -> int:
    """``7d``, ``12h``, ``30m``, ``45s`` or a plain number of seconds, as seconds (> 0)."""
    s = raw.strip().lower()
    unit = DURATION_UNITS.get(s[-1:]) if s else None
    digits = s[:-1] if unit else s
    if not digits.isdigit() or int(digits) < 1:
        raise ValueError(raw)
    return int(digits) * (unit or 1)


def _duration(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse_duration(raw)
    except ValueError as e:
        raise ConfigError(
            f"{name} must be a duration such as 7d, 12h, 30m, 45s (or seconds), got {raw!r}"
        ) from e


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "0").strip().lower()
    if raw not in ("0", "1", "true", "false"):
        raise ConfigError(f"{name} must be 1 or 0 (got {raw!r})")
    return raw in ("1", "true")


DURABILITY = ("default", "strict")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or choices[0]).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None
    redis_url: str | None
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    admin_token: str | None = None
    data_dir: Path = Path(".ingestd")
    partitions: int = 16
    max_backlog: int = 100_000
    session_ttl: int = 86_400
    registry_poll_ms: int = 500
    receipt_ttl: int = 7 * 86_400
    drain_batch: int = 500
    drain_slice_s: int = 30
    read_linger_ms: int = 10
    append_linger_ms: int = 2
    log_level: str = "INFO"
    redis_timeout_ms: int = 2000
    http_idle_timeout_ms: int = 15_000
    http_body_timeout_ms: int = 30_000
    secret_key: str | None = None
    source_retries: int = 5
    source_connect_timeout_ms: int = 10_000
    source_read_timeout_ms: int = 30_000
    source_stale_s: int = 60
    source_poll_ms: int = 1000
    source_concurrency: int = 4
    #: honour X-Forwarded-Proto / X-Forwarded-Host in the absolute URLs of answers
    trust_proxy: bool = False
    #: where CLI clients reach a gateway (``ingestd sources …``); None: the local one
    url: str | None = None
    #: ``strict``: a 202 only once the event is on disk (shared/redis/durable.py)
    durability: str = "default"
    #: days the raw bodies of rejected events and items are kept for replay
    rejected_retention_days: int = 30
    #: seconds after which the write model's deleted ids are compacted
    tombstone_ttl_s: int = 7 * 86_400
    #: webhooks may go to loopback/private/link-local addresses (tests, a private network)
    webhook_allow_private: bool = False
    webhook_timeout_ms: int = 10_000
    webhook_retry_window_s: int = 86_400
    webhook_retry_base_ms: int = 1000
    webhook_lease_s: int = 30
    #: days a finished delivery's row is kept for GET …/deliveries (0: for ever)
    webhook_delivery_retention_days: int = 7
    #: changes one endpoint has in flight at once (never two of one resource)
    webhook_inflight: int = 16

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=_url(env, "DATABASE_URL", DATABASE_SCHEMES),
            redis_url=_url(env, "REDIS_URL", REDIS_SCHEMES),
            http_host=env.get("INGESTD_HTTP_HOST") or "127.0.0.1",
            http_port=_port(env, "INGESTD_HTTP_PORT", 8080),
            admin_token=env.get("INGESTD_ADMIN_TOKEN") or None,
            data_dir=Path(env.get("INGESTD_DATA_DIR") or ".ingestd"),
            partitions=_int(env, "INGESTD_PARTITIONS", 16),
            max_backlog=_int(env, "INGESTD_MAX_BACKLOG", 100_000),
            session_ttl=_int(env, "INGESTD_SESSION_TTL", 86_400),
            registry_poll_ms=_int(env, "INGESTD_REGISTRY_POLL_MS", 500),
            drain_batch=_int(env, "INGESTD_DRAIN_BATCH", 500),
            drain_slice_s=_int(env, "INGESTD_DRAIN_SLICE_S", 30),
            read_linger_ms=_int(env, "INGESTD_READ_LINGER_MS", 10, minimum=0),
            append_linger_ms=_int(env, "INGESTD_APPEND_LINGER_MS", 2, minimum=0),
            log_level=_log_level(env, "INGESTD_LOG_LEVEL", "INFO"),
            redis_timeout_ms=_int(env, "INGESTD_REDIS_TIMEOUT_MS", 2000),
            http_idle_timeout_ms=_int(env, "INGESTD_HTTP_IDLE_TIMEOUT_MS", 15_000),
            http_body_timeout_ms=_int(env, "INGESTD_HTTP_BODY_TIMEOUT_MS", 30_000),
            secret_key=_secret_key(env),
            source_retries=_int(env, "INGESTD_SOURCE_RETRIES", 5, minimum=0),
            source_connect_timeout_ms=_int(env, "INGESTD_SOURCE_CONNECT_TIMEOUT_MS", 10_000),
            source_read_timeout_ms=_int(env, "INGESTD_SOURCE_READ_TIMEOUT_MS", 30_000),
            source_stale_s=_int(env, "INGESTD_SOURCE_STALE_S", 60),
            source_poll_ms=_int(env, "INGESTD_SOURCE_POLL_MS", 1000),
            source_concurrency=_int(env, "INGESTD_SOURCE_CONCURRENCY", 4),
            trust_proxy=_flag(env, "INGESTD_TRUST_PROXY"),
            url=_url(env, "INGESTD_URL", ("http", "https")),
            durability=_choice(env, "INGESTD_DURABILITY", DURABILITY),
            rejected_retention_days=_int(env, "INGESTD_REJECTED_RETENTION_DAYS", 30),
            tombstone_ttl_s=_duration(env, "INGESTD_TOMBSTONE_TTL", 7 * 86_400),
            webhook_allow_private=_flag(env, "INGESTD_WEBHOOK_ALLOW_PRIVATE"),
            webhook_timeout_ms=_int(env, "INGESTD_WEBHOOK_TIMEOUT_MS", 10_000),
            webhook_retry_window_s=_int(env, "INGESTD_WEBHOOK_RETRY_WINDOW_S", 86_400),
            webhook_retry_base_ms=_int(env, "INGESTD_WEBHOOK_RETRY_BASE_MS", 1000),
            webhook_lease_s=_int(env, "INGESTD_WEBHOOK_LEASE_S", 30),
            webhook_delivery_retention_days=_int(env, "INGESTD_WEBHOOK_DELIVERY_RETENTION_DAYS", 7),
            webhook_inflight=_int(env, "INGESTD_WEBHOOK_INFLIGHT", 16),
        )

    @property
    def strict(self) -> bool:
        return self.durability == "strict"

    def gateway_url(self) -> str:
        """``INGESTD_URL``, else the gateway this configuration starts locally."""
        if self.url:
            return self.url
        host = self.http_host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.http_port}"

    def with_servers(self, database_url: str, redis_url: str) -> Settings:
        return replace(self, database_url=database_url, redis_url=redis_url)

    def require_servers(self) -> tuple[str, str]:
        if not self.database_url or not self.redis_url:
            raise ConfigError("DATABASE_URL and REDIS_URL must be set (or use `ingestd dev`)")
        return self.database_url, self.redis_url

    def server_env(self) -> dict[str, str]:
        """Environment for child processes started by `ingestd dev`."""
        env = {
            "INGESTD_HTTP_HOST": self.http_host,
            "INGESTD_HTTP_PORT": str(self.http_port),
            "INGESTD_DATA_DIR": str(self.data_dir),
            "INGESTD_PARTITIONS": str(self.partitions),
            "INGESTD_MAX_BACKLOG": str(self.max_backlog),
            "INGESTD_SESSION_TTL": str(self.session_ttl),
            "INGESTD_LOG_LEVEL": self.log_level,
            "INGESTD_READ_LINGER_MS": str(self.read_linger_ms),
            "INGESTD_APPEND_LINGER_MS": str(self.append_linger_ms),
            "INGESTD_REDIS_TIMEOUT_MS": str(self.redis_timeout_ms),
            "INGESTD_HTTP_IDLE_TIMEOUT_MS": str(self.http_idle_timeout_ms),
            "INGESTD_HTTP_BODY_TIMEOUT_MS": str(self.http_body_timeout_ms),
            "INGESTD_SOURCE_RETRIES": str(self.source_retries),
            "INGESTD_SOURCE_CONNECT_TIMEOUT_MS": str(self.source_connect_timeout_ms),
            "INGESTD_SOURCE_READ_TIMEOUT_MS": str(self.source_read_timeout_ms),
            "INGESTD_SOURCE_STALE_S": str(self.source_stale_s),
            "INGESTD_SOURCE_POLL_MS": str(self.source_poll_ms),
            "INGESTD_SOURCE_CONCURRENCY": str(self.source_concurrency),
            "INGESTD_TRUST_PROXY": "1" if self.trust_proxy else "0",
            "INGESTD_DURABILITY": self.durability,
            "INGESTD_REJECTED_RETENTION_DAYS": str(self.rejected_retention_days),
            "INGESTD_TOMBSTONE_TTL": f"{self.tombstone_ttl_s}s",
            "INGESTD_WEBHOOK_ALLOW_PRIVATE": "1" if self.webhook_allow_private else "0",
            "INGESTD_WEBHOOK_TIMEOUT_MS": str(self.webhook_timeout_ms),
            "INGESTD_WEBHOOK_RETRY_WINDOW_S": str(self.webhook_retry_window_s),
            "INGESTD_WEBHOOK_RETRY_BASE_MS": str(self.webhook_retry_base_ms),
            "INGESTD_WEBHOOK_LEASE_S": str(self.webhook_lease_s),
            "INGESTD_WEBHOOK_DELIVERY_RETENTION_DAYS": str(self.webhook_delivery_retention_days),
            "INGESTD_WEBHOOK_INFLIGHT": str(self.webhook_inflight),
        }
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        if self.admin_token:
            env["INGESTD_ADMIN_TOKEN"] = self.admin_token
        if self.secret_key:
            env["INGESTD_SECRET_KEY"] = self.secret_key
        return env

    @staticmethod
    def process_env() -> dict[str, str]:
        return dict(os.environ)
