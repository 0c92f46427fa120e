"""The webhooks admin API: create (a secret shown once), list, get, PUT, DELETE,
rotate-secret, deliveries; URL refusals and bad bodies, each with its code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from shared.config import Settings
from shared.webhooks import SECRET_PREFIX
from tests.conftest import ADMIN

W = "/admin/v1/webhooks"
GOOD = {"url": "https://93.184.215.14/hook"}  # a public address literal: no DNS needed


@pytest.fixture
async def strict(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """A gateway with INGESTD_WEBHOOK_ALLOW_PRIVATE off (the default)."""
    async with TestClient(TestServer(create_app(settings))) as c:
        yield c


async def _create(c: Any, body: dict[str, Any]) -> dict[str, Any]:
    r = await c.post(W, json=body, headers=ADMIN)
    assert r.status == 201, await r.text()
    return dict(await r.json())


async def test_create_shows_the_secret_once_then_get_list_put_delete(
    strict: TestClient[Any, Any],
) -> None:
    made = await _create(
        strict, {**GOOD, "resourceTypes": ["_x_y"], "events": ["deleted"], "description": "d"}
    )
    secret = made["secret"]
    assert secret.startswith(SECRET_PREFIX) and len(secret) == len(SECRET_PREFIX) + 32
    assert (made["resourceTypes"], made["events"], made["enabled"]) == (["_x_y"], ["deleted"], True)
    one = await (await strict.get(f"{W}/{made['id']}", headers=ADMIN)).json()
    assert "secret" not in one and one["description"] == "d"
    listed = await (await strict.get(W, headers=ADMIN)).json()
    assert [w["id"] for w in listed["items"]] == [made["id"]]
    r = await strict.put(f"{W}/{made['id']}", json={"url": "http://93.184.215.15/"}, headers=ADMIN)
    assert r.status == 200
    put = await r.json()
    assert (put["url"], put["resourceTypes"], put["events"]) == (
        "http://93.184.215.15/",
        None,
        None,
    )
    assert (await strict.delete(f"{W}/{made['id']}", headers=ADMIN)).status == 204
    r = await strict.get(f"{W}/{made['id']}", headers=ADMIN)
    assert r.status == 404 and (await r.json())["code"] == "webhook_not_found"
    r = await strict.get(f"{W}/not-a-uuid/deliveries", headers=ADMIN)
    assert r.status == 404 and (await r.json())["code"] == "webhook_not_found"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://93.184.215.14/", "invalid_webhook_url"),
        ("/relative", "invalid_webhook_url"),
        (42, "invalid_webhook_url"),
        ("http://127.0.0.1:9/", "webhook_url_private"),
        ("http://[::1]/", "webhook_url_private"),
        ("http://10.1.2.3/", "webhook_url_private"),
        ("http://192.168.0.1/", "webhook_url_private"),
        ("http://169.254.169.254/latest/meta-data", "webhook_url_private"),
        ("http://[::ffff:127.0.0.1]/", "webhook_url_private"),
        ("http://localhost:8080/", "webhook_url_private"),  # resolved: a name is no escape
        ("http://no-such-host.invalid/", "invalid_webhook_url"),
    ],
)
async def test_url_refusals(strict: TestClient[Any, Any], url: Any, code: str) -> None:
    r = await strict.post(W, json={"url": url}, headers=ADMIN)
    body = await r.json()
    assert (r.status, body["code"], body["pointer"]) == (400, code, "/url"), body
    assert (await (await strict.get(W, headers=ADMIN)).json())["items"] == []


async def test_private_addresses_allowed_when_the_setting_says_so(settings: Settings) -> None:
    app = create_app(replace(settings, webhook_allow_private=True))
    async with TestClient(TestServer(app)) as c:
        await _create(c, {"url": "http://127.0.0.1:9/hook"})


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({**GOOD, "events": ["exploded"]}, "/events/0"),
        ({**GOOD, "events": []}, "/events"),
        ({**GOOD, "resourceTypes": "x"}, "/resourceTypes"),
        ({**GOOD, "resourceTypes": [""]}, "/resourceTypes/0"),
        ({**GOOD, "description": 5}, "/description"),
    ],
)
async def test_bad_bodies(strict: TestClient[Any, Any], body: dict[str, Any], pointer: str) -> None:
    r = await strict.post(W, json=body, headers=ADMIN)
    out = await r.json()
    assert (r.status, out["code"], out["pointer"]) == (400, "invalid_webhook", pointer), out


async def test_admin_token_and_secret_key_are_required(settings: Settings) -> None:
    async with TestClient(TestServer(create_app(settings))) as c:
        r = await c.get(W)
        assert r.status == 401
    async with TestClient(TestServer(create_app(replace(settings, secret_key=None)))) as c:
        r = await c.post(W, json=GOOD, headers=ADMIN)
        assert r.status == 503 and (await r.json())["code"] == "unavailable"


async def test_rotate_secret_shows_a_new_one(strict: TestClient[Any, Any]) -> None:
    made = await _create(strict, GOOD)
    r = await strict.post(f"{W}/{made['id']}/rotate-secret", headers=ADMIN)
    assert r.status == 200
    rotated = await r.json()
    assert rotated["secret"].startswith(SECRET_PREFIX) and rotated["secret"] != made["secret"]


async def test_deliveries_page_parameters(strict: TestClient[Any, Any]) -> None:
    made = await _create(strict, GOOD)
    r = await strict.get(f"{W}/{made['id']}/deliveries", headers=ADMIN)
    assert (r.status, await r.json()) == (200, {"items": [], "next": None})
    r = await strict.get(f"{W}/{made['id']}/deliveries?before=x", headers=ADMIN)
    assert r.status == 400 and (await r.json())["pointer"] == "/query/before"
