"""Webhooks, the pure part: endpoint URL and address rules, filters, message ids,
signing (Standard Webhooks, through the ``standardwebhooks`` library) and the retry
schedule. Values in, values out: resolving a host name is the caller's I/O.

Signing secrets follow the Standard Webhooks format: ``whsec_`` + base64 of 24 random
bytes. An endpoint holds a list of them, current first; a rotated-out secret keeps
signing (one more ``v1,…`` in ``webhook-signature``) until its ``until``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import random
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from shared.codes import Code
from shared.errors import ApiError
from shared.feed import Position

EVENTS = ("created", "updated", "deleted")
SECRET_PREFIX = "whsec_"
MAX_URL = 2000
MAX_DESCRIPTION = 1000
MAX_TYPES = 100
#: the first retry waits about this long; each next one twice as long, up to RETRY_CAP_S
RETRY_CAP_S = 3600.0
#: a rotated-out secret keeps signing this long
ROTATION_OVERLAP_S = 86_400

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


@dataclass(frozen=True, slots=True)
class SigningSecret:
    secret: str
    until: datetime | None = None  # None: the current secret

    def as_dict(self) -> dict[str, Any]:
        return {"secret": self.secret, "until": self.until.isoformat() if self.until else None}

    @staticmethod
    def of(d: dict[str, Any]) -> SigningSecret:
        until = d.get("until")
        return SigningSecret(d["secret"], datetime.fromisoformat(until) if until else None)


def active(secrets_: list[SigningSecret], now: datetime) -> list[SigningSecret]:
    """The secrets that sign at ``now``: the current one and those still in their overlap."""
    return [s for s in secrets_ if s.until is None or s.until > now]


def signature(secrets_: list[SigningSecret], msg_id: str, at: datetime, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64 HMAC-SHA256>`` per secret."""
    text = body.decode()
    return " ".join(Webhook(s.secret).sign(msg_id, at, text) for s in secrets_)


def message_id(endpoint_id: str, pos: Position) -> str:
    """The ``webhook-id`` of one change for one endpoint: the same on every attempt and
    after a restart, different for another endpoint."""
    digest = hashlib.blake2b(f"{endpoint_id}:{pos[0]}:{pos[1]}".encode(), digest_size=16)
    return "msg_" + digest.hexdigest()


def retry_delay(attempt: int, base_s: float, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``attempt`` (1 = the first retry): ``base_s`` doubled
    each time, capped at an hour, with "equal jitter" (between half and all of it)."""
    full = min(base_s * 2.0 ** min(attempt - 1, 40), RETRY_CAP_S)
    jitter: float = (rng or random.Random()).uniform(0, full / 2)
    return full / 2 + jitter


def wanted(resource_types: list[str] | None, events: list[str] | None, rt: str, op: str) -> bool:
    """Whether an endpoint with these filters gets a change of type ``rt`` and op ``op``."""
    if resource_types is not None and rt not in resource_types:
        return False
    return op in (events if events is not None else EVENTS)


# ---- checks of the admin API's input ------------------------------------------------------


def _invalid(message: str, pointer: str) -> ApiError:
    return ApiError(Code.INVALID_WEBHOOK, message, pointer=pointer)


@dataclass(frozen=True, slots=True)
class Target:
    """A checked endpoint URL: its host (an IP address literal or a name) and port."""

    url: str
    host: str
    port: int
    literal: IpAddress | None


def check_url(value: Any) -> Target:
    """An absolute http(s) URL with a host, or ``invalid_webhook_url``."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL:
        raise ApiError(
            Code.INVALID_WEBHOOK_URL,
            f"url must be an http:// or https:// URL of at most {MAX_URL} characters",
            pointer="/url",
        )
    try:
        parts = urlsplit(value)
        port = parts.port
        host = parts.hostname
    except ValueError as e:
        raise ApiError(Code.INVALID_WEBHOOK_URL, f"url is not a URL ({e})", pointer="/url") from e
    if parts.scheme not in ("http", "https") or not host or value != value.strip():
        raise ApiError(
            Code.INVALID_WEBHOOK_URL,
            "url must be an absolute http:// or https:// URL with a host",
            pointer="/url",
        )
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    try:
        literal: IpAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    return Target(value, host, port, literal)


def is_public(ip: IpAddress) -> bool:
    """Not loopback, private, link-local, shared, multicast, reserved or unspecified (an
    IPv4-mapped IPv6 address is judged as its IPv4 address)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def refused_address(addresses: list[IpAddress]) -> IpAddress | None:
    """The first address a webhook may not be sent to, if any."""
    return next((a for a in addresses if not is_public(a)), None)


def private_error(host: str, ip: IpAddress) -> ApiError:
    return ApiError(
        Code.WEBHOOK_URL_PRIVATE,
        f"url's host {host} is (or resolves to) {ip}, a loopback, private or link-local"
        " address; set INGESTD_WEBHOOK_ALLOW_PRIVATE=1 to allow that",
        pointer="/url",
    )


def check_list(value: Any, name: str, allowed: tuple[str, ...] | None) -> list[str] | None:
    """``resourceTypes`` / ``events``: absent or null is every one; else a non-empty list
    of distinct non-empty strings (for events, of ``allowed``)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > MAX_TYPES:
        raise _invalid(
            f"{name} must be a non-empty list of at most {MAX_TYPES} strings", f"/{name}"
        )
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v or len(v) > 200:
            raise _invalid(f"{name}[{i}] must be a non-empty string", f"/{name}/{i}")
        if allowed is not None and v not in allowed:
            raise _invalid(f"{name}[{i}] must be one of {', '.join(allowed)}", f"/{name}/{i}")
    return sorted(set(value))


def check_description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise _invalid(
            f"description must be a string of at most {MAX_DESCRIPTION} characters",
            "/description",
        )
    return value
