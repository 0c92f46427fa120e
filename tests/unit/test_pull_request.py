"""Rendering a run's base request (shared.pull.request): placeholders, encoding, the
schedule window (standard and ADVANCE), bodies, query and header edits, masking."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from shared.pull.model import MASK, Request, Window
from shared.pull.request import (
    describe,
    render_base,
    resolve,
    secret_forms,
    with_header,
    with_query,
)
from shared.pull.spec import parse_spec, secret_values
from tests.unit.pull_examples import mailchimp_members, minimal, zendesk_users

START = datetime(2024, 5, 1, 10, 20, 30, 123456, tzinfo=UTC)
END = datetime(2024, 5, 2, 0, 0, 0, tzinfo=UTC)
WINDOW = Window(START, END)


def query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def test_mailchimp_members_incremental() -> None:
    spec = parse_spec(mailchimp_members())
    req = render_base(spec, {"listId": "a1b2", "domain": "us6"}, "incremental", WINDOW)
    assert req.method == "GET" and req.body is None and dict(req.headers) == {}
    split = urlsplit(req.url)
    assert (split.scheme, split.netloc, split.path) == (
        "https",
        "us6.api.mailchimp.com",
        "/3.0/lists/a1b2/members",
    )
    assert query(req.url) == [
        ("since_last_changed", "2024-05-01T10:20:30:1234560Z"),
        ("before_last_changed", "2024-05-02T00:00:00:0000000Z"),
    ]


def test_backfill_and_no_start_send_only_the_end() -> None:
    spec = parse_spec(mailchimp_members())
    params = {"listId": "a1b2", "domain": "us6"}
    for kind, window in (("backfill", WINDOW), ("incremental", Window(None, END))):
        req = render_base(spec, params, kind, window)  # type: ignore[arg-type]
        assert query(req.url) == [("before_last_changed", "2024-05-02T00:00:00:0000000Z")]


def test_placeholder_values_are_percent_encoded_in_path_and_query_only() -> None:
    obj = minimal(
        urlParams={
            "host": "https://api.example.com",
            "path": "/lists/${id}/members",
            "method": "GET",
            "queryParams": {"q": "name=${id}", "filter[type]": "user"},
        },
        headerParams={"X-Id": "${id}", "X-Key": "k ${key}"},
    )
    spec = parse_spec(obj)
    value = "a/b?c=d&e#f g%"
    req = render_base(spec, {"id": value, "key": "s3cr&t"}, "incremental", WINDOW)
    split = urlsplit(req.url)
    assert split.path == "/lists/a%2Fb%3Fc%3Dd%26e%23f%20g%25/members"
    assert split.fragment == ""
    assert query(req.url) == [("q", "name=" + value), ("filter[type]", "user")]
    assert "filter%5Btype%5D=user" in req.url
    assert req.headers == {"X-Id": value, "X-Key": "k s3cr&t"}


def test_host_placeholders() -> None:
    spec = parse_spec(mailchimp_members())
    req = render_base(spec, {"listId": "x", "domain": "us6"}, "incremental", WINDOW)
    assert req.url.startswith("https://us6.api.mailchimp.com/3.0/")
    with pytest.raises(ValueError, match="host"):
        render_base(spec, {"listId": "x", "domain": "evil.com/x?"}, "incremental", WINDOW)
    for bad in ("a@evil.com", "evil.example:443", "evil.example/"):
        with pytest.raises(ValueError, match="host"):
            render_base(spec, {"listId": "x", "domain": bad}, "incremental", WINDOW)
    obj = minimal(urlParams={"host": "${base}", "path": "/x", "method": "GET"})
    obj["spec"]["properties"]["base"] = {"type": "string"}
    with pytest.raises(ValueError, match="host"):  # a scheme is not a host label
        render_base(parse_spec(obj), {"base": "https://x"}, "incremental", WINDOW)
    obj["attributes"]["urlParams"]["host"] = "http://${base}:${port}/"
    obj["spec"]["properties"]["port"] = {"type": "integer"}
    req = render_base(parse_spec(obj), {"base": "127.0.0.1", "port": 8080}, "incremental", WINDOW)
    assert req.url == "http://127.0.0.1:8080/x"
    with pytest.raises(ValueError, match="port"):
        render_base(parse_spec(obj), {"base": "127.0.0.1", "port": "8o"}, "incremental", WINDOW)


ZENDESK_PARAMS = {"subdomain": "acme", "token": "t0p-secret"}


def test_zendesk_advance_schedule_incremental() -> None:
    spec = parse_spec(zendesk_users())
    req = render_base(spec, ZENDESK_PARAMS, "incremental", WINDOW)
    split = urlsplit(req.url)
    assert (split.netloc, split.path) == ("acme.zendesk.com", "/api/v2/search/export")
    assert query(req.url) == [
        ("query", "type:user updated > 2024-05-01T10:20:30Z updated < 2024-05-02T00:00:00Z"),
        ("filter[type]", "user"),
    ]
    assert "query=type%3Auser%20updated%20%3E%202024" in req.url
    assert req.headers == {"Authorization": "Bearer t0p-secret"}


def test_zendesk_advance_schedule_backfill() -> None:
    spec = parse_spec(zendesk_users())
    for kind, window in (("backfill", WINDOW), ("incremental", Window(None, END))):
        req = render_base(spec, ZENDESK_PARAMS, kind, window)  # type: ignore[arg-type]
        # the @{…} path adds ?query=type:user&filter[type]=user&; queryParams win
        assert urlsplit(req.url).path == "/api/v2/search/export"
        assert query(req.url) == [
            ("query", "type:user updated < 2024-05-02T00:00:00Z"),
            ("filter[type]", "user"),
        ]


def test_the_path_query_is_kept_when_query_params_do_not_name_it() -> None:
    obj = minimal(
        urlParams={
            "host": "https://api.example.com/",
            "path": "v2/x@{if(empty(pipeline()?.parameters?.ingestionStart),'?full=1&q=a+b','')}",
            "method": "GET",
            "queryParams": {"limit": 5},
        }
    )
    spec = parse_spec(obj)
    req = render_base(spec, {}, "backfill", WINDOW)
    assert req.url == "https://api.example.com/v2/x?full=1&q=a%20b&limit=5"
    assert (
        render_base(spec, {}, "incremental", WINDOW).url == "https://api.example.com/v2/x?limit=5"
    )


def test_schedule_query_in_headers_and_body_goes_in_raw() -> None:
    obj = zendesk_users()
    attrs = obj["attributes"]
    attrs["urlParams"] = {
        "host": "https://${subdomain}.zendesk.com",
        "path": "/search",
        "method": "POST",
    }
    attrs["headerParams"] = {"X-Query": "{SCHEDULE_QUERY}"}
    attrs["bodyParams"] = {"query": "{SCHEDULE_QUERY}", "n": 5, "tags": ["${subdomain}", True]}
    req = render_base(parse_spec(obj), ZENDESK_PARAMS, "incremental", WINDOW)
    q = "type:user updated > 2024-05-01T10:20:30Z updated < 2024-05-02T00:00:00Z"
    assert req.headers == {"X-Query": q, "Content-Type": "application/json"}
    assert req.body is not None
    assert orjson.loads(req.body) == {"query": q, "n": 5, "tags": ["acme", True]}
    assert req.url == "https://acme.zendesk.com/search"


def test_post_body_keeps_a_given_content_type_and_templates_render_in_body() -> None:
    obj = minimal(
        headerParams={"content-type": "application/vnd.api+json"},
        bodyParams={
            "since": "@{coalesce(pipeline()?.parameters?.ingestionStart, 'always')}",
            "id": "${id}",
        },
    )
    obj["attributes"]["urlParams"]["method"] = "POST"
    spec = parse_spec(obj)
    req = render_base(spec, {"id": "7"}, "incremental", WINDOW)
    assert req.headers == {"content-type": "application/vnd.api+json"}
    assert orjson.loads(req.body or b"") == {"since": "2024-05-01T10:20:30Z", "id": "7"}
    req = render_base(spec, {"id": "7"}, "backfill", WINDOW)
    assert orjson.loads(req.body or b"") == {"since": "always", "id": "7"}


def test_a_substituted_value_is_not_read_again() -> None:
    obj = minimal(
        urlParams={"host": "https://api.example.com", "path": "/x/${id}", "method": "GET"}
    )
    obj["attributes"]["headerParams"] = {"X": "${id}"}
    req = render_base(
        parse_spec(obj),
        {"id": "${key}@{utcNow()}{SCHEDULE_QUERY}", "key": "k"},
        "incremental",
        WINDOW,
    )
    assert req.headers["X"] == "${key}@{utcNow()}{SCHEDULE_QUERY}"
    assert "%24%7Bkey%7D%40%7ButcNow%28%29%7D" in req.url


def test_numbers_and_booleans_render_as_json_text() -> None:
    obj = minimal(
        urlParams={
            "host": "https://api.example.com",
            "path": "/x/${n}",
            "method": "GET",
            "queryParams": {"b": "${b}", "c": 3},
        }
    )
    obj["spec"]["properties"] = {"n": {"type": "integer"}, "b": {"type": "boolean"}}
    req = render_base(parse_spec(obj), {"n": 5, "b": False}, "incremental", WINDOW)
    assert req.url == "https://api.example.com/x/5?b=false&c=3"


def test_with_query_keeps_the_other_parameters_byte_for_byte() -> None:
    req = Request("GET", "https://h.example/x?filter%5Btype%5D=user&a=1+2&page%5Bafter%5D=old")
    out = with_query(req, {"page[after]": "new/tok=", "limit": "10"})
    assert (
        out.url
        == "https://h.example/x?filter%5Btype%5D=user&a=1+2&page%5Bafter%5D=new%2Ftok%3D&limit=10"
    )
    assert with_query(req, {}) is req
    assert (
        with_query(Request("GET", "https://h.example/x"), {"a": "b c"}).url
        == "https://h.example/x?a=b%20c"
    )


def test_with_header_replaces_case_insensitively() -> None:
    req = Request("GET", "https://h.example/", {"Authorization": "a", "X": "1"})
    out = with_header(req, "x", "2")
    assert out.headers == {"Authorization": "a", "x": "2"}
    assert req.headers == {"Authorization": "a", "X": "1"}
    with pytest.raises(ValueError):
        with_header(req, "X", "a\r\nInjected: 1")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://other.example/p?x=1", "https://other.example/p?x=1"),
        ("/3.0/next?offset=10", "https://h.example/3.0/next?offset=10"),
        ("next?offset=10", "https://h.example/3.0/next?offset=10"),
        ("?page=2", "https://h.example/3.0/items?page=2"),
    ],
)
def test_resolve(url: str, expected: str) -> None:
    assert resolve(Request("GET", "https://h.example/3.0/items?page=1"), url) == expected


def test_describe_masks_every_secret() -> None:
    obj = zendesk_users()
    obj["attributes"]["urlParams"]["queryParams"]["key"] = "${token}"
    obj["attributes"]["urlParams"]["method"] = "POST"
    obj["attributes"]["bodyParams"] = {"auth": "${token}"}
    secret = "p@ss word/&="
    req = render_base(
        parse_spec(obj), {"subdomain": "acme", "token": secret}, "incremental", WINDOW
    )
    assert "p%40ss%20word%2F%26%3D" in req.url
    d: dict[str, Any] = describe(req, [secret])
    assert set(d) == {"method", "url", "headers", "body"}
    text = orjson.dumps(d).decode()
    assert "p@ss" not in text and "p%40ss" not in text and "word" not in text
    assert d["headers"]["Authorization"] == f"Bearer {MASK}"
    assert f"key={MASK}" in d["url"]
    assert orjson.loads(d["body"]) == {"auth": MASK}
    plain = describe(Request("GET", "https://h.example/x"), [])
    assert plain == {"method": "GET", "url": "https://h.example/x", "headers": {}}


def test_secrets_are_masked_in_their_json_form_too() -> None:
    obj = minimal(bodyParams={"auth": "${key}"})
    obj["attributes"]["urlParams"]["method"] = "POST"
    spec = parse_spec(obj)
    secret = 'a"b\\c'
    params = {"key": secret}
    assert secret_values(spec, params) == [secret]
    req = render_base(spec, params, "incremental", WINDOW)
    assert req.body == b'{"auth":"a\\"b\\\\c"}'
    assert describe(req, secret_values(spec, params))["body"] == '{"auth":"' + MASK + '"}'
    assert secret_forms(["", "x"]) == ["x"]


def test_literal_path_text_is_encoded_and_at_at_is_one_at() -> None:
    obj = minimal(
        urlParams={
            "host": "https://api.example.com",
            "path": "/v1/caf\u00e9 menu/@@me/${id}",
            "method": "GET",
            "queryParams": {"sort": "@@timestamp"},
        }
    )
    req = render_base(parse_spec(obj), {"id": "x y"}, "incremental", WINDOW)
    assert req.url == "https://api.example.com/v1/caf%C3%A9%20menu/@me/x%20y?sort=%40timestamp"
