"""The pull sources' HTTP client (shared/pull/http.py) against the local demo API."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

from shared.codes import Code
from shared.embedded import free_port
from shared.pull.http import Fetcher, Response, parse_json, retry_after_s, user_agent
from shared.pull.model import MASK, PullError, Request
from tests.demo_api import LIST_ID, DemoServer, DemoState, running

FAST = {"backoff_base_s": 0.01, "backoff_cap_s": 0.05}
SECRET = "s3cr+t/kÉy&x=1"
SECRET_FORMS = (SECRET, quote(SECRET, safe=""), quote_plus(SECRET, safe=""), quote(SECRET))


@pytest.fixture
async def demo() -> AsyncIterator[DemoServer]:
    async with running(DemoState.sample()) as server:
        yield server


def get(url: str, **headers: str) -> Request:
    return Request("GET", url, headers)


def gaps(server: DemoServer) -> list[float]:
    at = [r.at for r in server.state.requests]
    return [b - a for a, b in itertools.pairwise(at)]


def assert_no_secret(*texts: str | None) -> None:
    for text in texts:
        assert text is not None
        for form in SECRET_FORMS:
            assert form not in text, text


async def test_ok_answer_with_user_agent(demo: DemoServer) -> None:
    async with Fetcher() as f:
        resp = await f.fetch(get(f"{demo.url}/all/items"))
    assert resp.status == 200
    assert resp.url == f"{demo.url}/all/items"
    assert len(parse_json(resp)["items"]) == 25
    assert resp.headers["Content-Type"].startswith("application/json")
    ua = demo.state.requests[0].headers["User-Agent"]
    assert ua == user_agent() and ua.startswith("ingestd/") and ua != "ingestd/"
    assert (f.requests, f.retries_done) == (1, 0)


async def test_429_waits_for_retry_after(demo: DemoServer) -> None:
    demo.state.fail_next = [(429, {"Retry-After": "1"})]
    notes: list[str] = []
    async with Fetcher(on_retry=notes.append, **FAST) as f:
        resp = await f.fetch(get(f"{demo.url}/all/items"))
    assert resp.status == 200
    assert (f.requests, f.retries_done) == (2, 1)
    assert gaps(demo)[0] >= 1.0
    assert len(notes) == 1 and "HTTP 429" in notes[0] and "retry 1/5" in notes[0]


async def test_retry_after_is_bounded(demo: DemoServer) -> None:
    demo.state.fail_next = [(429, {"Retry-After": "3600"})]
    async with Fetcher(max_retry_after_s=0.2, **FAST) as f:
        await f.fetch(get(f"{demo.url}/all/items"))
    assert 0.2 <= gaps(demo)[0] < 2


def test_retry_after_forms() -> None:
    now = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert retry_after_s("120") == 120
    assert retry_after_s(" 2.5 ") == 2.5
    assert retry_after_s(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert retry_after_s(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None


async def test_503_retried_with_exponential_backoff(demo: DemoServer) -> None:
    demo.state.fail_next = [(503, {}), (502, {}), (500, {})]
    async with Fetcher(backoff_base_s=0.05, backoff_cap_s=0.1) as f:
        resp = await f.fetch(get(f"{demo.url}/all/items"))
    assert resp.status == 200
    assert (f.requests, f.retries_done) == (4, 3)
    # full jitter: wait n is uniform in [0, min(cap, base * 2**(n-1))]
    for gap, bound in zip(gaps(demo), (0.05, 0.1, 0.1), strict=True):
        assert gap <= bound + 0.05


async def test_503_until_the_retries_run_out(demo: DemoServer) -> None:
    demo.state.fail_next = [(503, {})] * 5
    async with Fetcher(retries=2, **FAST) as f:
        with pytest.raises(PullError) as e:
            await f.fetch(get(f"{demo.url}/all/items"))
    assert e.value.code is Code.SOURCE_UNAVAILABLE
    assert "after 3 attempts: HTTP 503" in e.value.message
    assert e.value.request == f"GET {demo.url}/all/items"
    assert len(demo.state.requests) == 3 and f.requests == 3


async def test_connection_refused_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}/x?key={quote(SECRET, safe='')}"
    notes: list[str] = []
    async with Fetcher(retries=3, secrets=[SECRET], on_retry=notes.append, **FAST) as f:
        with pytest.raises(PullError) as e:
            await f.fetch(get(url, Authorization=f"Bearer {SECRET}"))
    assert e.value.code is Code.SOURCE_UNAVAILABLE
    assert "after 4 attempts" in e.value.message
    assert f.requests == 4 and len(notes) == 3
    assert_no_secret(e.value.message, e.value.request, *notes)
    assert MASK in (e.value.request or "")


async def test_read_timeout_is_retried(demo: DemoServer) -> None:
    demo.state.latency_s = 0.5
    async with Fetcher(read_timeout_s=0.1, retries=1, **FAST) as f:
        with pytest.raises(PullError) as e:
            await f.fetch(get(f"{demo.url}/all/items"))
    assert e.value.code is Code.SOURCE_UNAVAILABLE
    assert "after 2 attempts: timeout" in e.value.message


async def test_404_fails_with_status_and_body(demo: DemoServer) -> None:
    url = f"{demo.url}/3.0/lists/nope/members?count=10"
    async with Fetcher(**FAST) as f:
        with pytest.raises(PullError) as e:
            await f.fetch(get(url, Authorization=f"Bearer {demo.state.api_key}"))
    assert e.value.code is Code.SOURCE_HTTP_ERROR
    assert e.value.message.startswith(f"HTTP 404 from GET {url}: ")
    assert "Resource Not Found" in e.value.message
    assert f.requests == 1  # a 4xx is not retried


async def test_error_body_excerpt_is_bounded(demo: DemoServer) -> None:
    demo.state.fail_next = [(400, {})]
    async with Fetcher() as f:
        with pytest.raises(PullError) as e:
            await f.fetch(get(f"{demo.url}/all/items"))
    assert e.value.code is Code.SOURCE_HTTP_ERROR and "HTTP 400" in e.value.message
    assert "injected by the demo API" in e.value.message


async def test_same_host_redirect_followed(demo: DemoServer) -> None:
    demo.state.fail_next = [(301, {"Location": "/all/items?from=301"})]
    async with Fetcher() as f:
        resp = await f.fetch(get(f"{demo.url}/pointer/items"))
        assert resp.url == f"{demo.url}/all/items?from=301"
        assert len(parse_json(resp)["items"]) == 25
        demo.state.redirect = demo.url  # absolute, same scheme, host and port
        resp = await f.fetch(get(f"{demo.url}/paged/items?pageSize=5"))
    assert resp.url == f"{demo.url}/paged/items?pageSize=5"
    assert [r.path for r in demo.state.requests] == ["/pointer/items", "/all/items"] + [
        "/paged/items"
    ] * 2
    assert f.requests == 4 and f.retries_done == 0


async def test_307_keeps_method_and_body_303_turns_to_get(demo: DemoServer) -> None:
    async with Fetcher() as f:
        demo.state.fail_next = [(307, {"Location": "/all/items"})]
        await f.fetch(Request("POST", f"{demo.url}/all/items?a=1", {}, b'{"q": 1}'))
        demo.state.fail_next = [(303, {"Location": "/all/items"})]
        await f.fetch(Request("POST", f"{demo.url}/all/items?a=2", {}, b'{"q": 2}'))
    seen = [(r.method, r.query, r.body) for r in demo.state.requests]
    assert seen == [
        ("POST", {"a": "1"}, b'{"q": 1}'),
        ("POST", {}, b'{"q": 1}'),
        ("POST", {"a": "2"}, b'{"q": 2}'),
        ("GET", {}, b""),
    ]


async def test_cross_host_redirect_refused(demo: DemoServer) -> None:
    async with running(DemoState.sample()) as other:
        demo.state.redirect = other.url
        url = f"{demo.url}/all/items?key={quote(SECRET, safe='')}"
        async with Fetcher(secrets=[SECRET]) as f:
            with pytest.raises(PullError) as e:
                await f.fetch(get(url))
        assert e.value.code is Code.REDIRECT_REFUSED
        assert other.url in e.value.message and "another host" in e.value.message
        assert other.state.requests == []
        assert_no_secret(e.value.message, e.value.request)


async def test_too_many_redirects_refused(demo: DemoServer) -> None:
    demo.state.fail_next = [(302, {"Location": "/all/items"})] * 6
    async with Fetcher() as f:
        with pytest.raises(PullError) as e:
            await f.fetch(get(f"{demo.url}/all/items"))
    assert e.value.code is Code.REDIRECT_REFUSED and "more than 5 redirects" in e.value.message
    assert len(demo.state.requests) == 6


async def test_304_is_an_http_error(demo: DemoServer) -> None:
    demo.state.fail_next = [(304, {})]
    async with Fetcher() as f:
        with pytest.raises(PullError) as e:
            await f.fetch(get(f"{demo.url}/all/items"))
    assert e.value.code is Code.SOURCE_HTTP_ERROR and "HTTP 304" in e.value.message


async def test_delay_ms_spaces_every_request_retries_included(demo: DemoServer) -> None:
    demo.state.fail_next = [(503, {})]
    async with Fetcher(delay_ms=150, backoff_base_s=0.001, backoff_cap_s=0.001) as f:
        for _ in range(3):
            await f.fetch(get(f"{demo.url}/all/items"))
    assert f.requests == 4 and len(demo.state.requests) == 4
    assert min(gaps(demo)) >= 0.14


async def test_secrets_never_in_messages_notes_or_logs(
    demo: DemoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"{demo.url}/3.0/lists/nope/members?apikey={quote(SECRET, safe='')}"
    demo.state.fail_next = [(503, {}), (429, {"Retry-After": "0"})]
    notes: list[str] = []
    async with Fetcher(secrets=[SECRET], on_retry=notes.append, **FAST) as f:
        with pytest.raises(PullError) as e:
            await f.fetch(get(url, Authorization=f"Bearer {SECRET}", **{"X-Key": SECRET}))
    assert e.value.code is Code.SOURCE_HTTP_ERROR and len(notes) == 2
    assert demo.state.requests[-1].headers["X-Key"] == SECRET  # it was sent
    assert_no_secret(e.value.message, e.value.request, str(e.value), *notes, caplog.text)
    assert f"apikey={MASK}" in e.value.message and MASK in caplog.text


async def test_non_json_body_is_invalid_response(demo: DemoServer) -> None:
    demo.state.fail_next = [(200, {})]
    url = f"{demo.url}/all/items?token={quote(SECRET, safe='')}"
    async with Fetcher(secrets=[SECRET]) as f:
        resp = await f.fetch(get(url))
    with pytest.raises(PullError) as e:
        parse_json(resp, [SECRET])
    assert e.value.code is Code.INVALID_RESPONSE
    assert "is not JSON" in e.value.message and "<html><body><h1>200</h1>" in e.value.message
    assert_no_secret(e.value.message, e.value.request)
    long = Response(200, resp.headers, b"x" * 1000, "http://h/p")
    with pytest.raises(PullError) as e2:
        parse_json(long)
    assert "x" * 300 + "…" in e2.value.message and "x" * 301 not in e2.value.message


async def test_oversized_body_refused(demo: DemoServer) -> None:
    demo.state.bulk_count = 1000
    async with Fetcher(max_body_bytes=4096) as f:
        ok = await f.fetch(get(f"{demo.url}/bulk/items?limit=10"))
        with pytest.raises(PullError) as e:
            await f.fetch(get(f"{demo.url}/bulk/items?limit=1000"))
    assert len(ok.body) <= 4096
    assert e.value.code is Code.INVALID_RESPONSE and "larger than 4096 bytes" in e.value.message


async def test_oversized_chunked_body_refused() -> None:
    """No Content-Length: the limit holds while the body streams in."""

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b"[" + b"0," * 8192 + b"0]")
        return resp

    app = web.Application()
    app.router.add_get("/big", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with Fetcher(max_body_bytes=100_000) as f:
            with pytest.raises(PullError) as e:
                await f.fetch(get(f"http://127.0.0.1:{port}/big"))
        assert e.value.code is Code.INVALID_RESPONSE
    finally:
        await runner.cleanup()


async def test_members_with_key_via_fetcher(demo: DemoServer) -> None:
    url = f"{demo.url}/3.0/lists/{LIST_ID}/members?count=100&offset=0"
    async with Fetcher(secrets=[demo.state.api_key]) as f:
        with pytest.raises(PullError) as e:
            await f.fetch(get(url, Authorization="Bearer wrong"))
        resp = await f.fetch(get(url, Authorization=f"Bearer {demo.state.api_key}"))
    assert e.value.code is Code.SOURCE_HTTP_ERROR and "HTTP 401" in e.value.message
    assert parse_json(resp)["total_items"] == 25


async def test_unusable_url_is_not_retried() -> None:
    async with Fetcher(secrets=[SECRET], **FAST) as f:
        with pytest.raises(PullError) as e:
            await f.fetch(get(f"ftp://example.invalid/{quote(SECRET, safe='')}"))
    assert e.value.code is Code.SOURCE_HTTP_ERROR and "invalid URL" in e.value.message
    assert f.retries_done == 0
    assert_no_secret(e.value.message, e.value.request)
