"""The five pagination types (shared.pull.paging), driven page by page."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from shared.codes import Code
from shared.pull.model import Page, PullError, Request
from shared.pull.paging import Pager
from shared.pull.spec import Paging, parse_spec
from tests.unit.pull_examples import ZENDESK_ANSWER, mailchimp_members, minimal, zendesk_users

BASE = Request("GET", "https://api.example.com/v1/items?fixed=1", {"Authorization": "Bearer k"})


def paging(p: dict[str, Any]) -> Paging:
    return parse_spec(minimal(p)).paging


def q(req: Request | None) -> dict[str, str]:
    assert req is not None
    return dict(parse_qsl(urlsplit(req.url).query))


def page(data: Any = None, count: int = 0, headers: dict[str, str] | None = None) -> Page:
    return Page(data if data is not None else {}, headers or {}, count)


def test_offset_the_seed_mailchimp_example() -> None:
    pager = Pager(parse_spec(mailchimp_members()).paging, BASE)
    first = pager.first()
    assert q(first) == {"fixed": "1", "count": "100", "offset": "0"}
    assert first.headers == BASE.headers
    assert q(pager.next(page(count=100))) == {"fixed": "1", "count": "100", "offset": "100"}
    assert q(pager.next(page(count=100))) == {"fixed": "1", "count": "100", "offset": "200"}
    assert pager.next(page(count=99)) is None
    assert (pager.requests, pager.ended_by, pager.truncated) == (3, "short_page", False)
    assert pager.next(page(count=100)) is None  # ended stays ended
    assert pager.requests == 3


def test_offset_ends_on_an_empty_page_and_on_the_end_condition() -> None:
    p = {
        "type": "OFFSET",
        "limitName": "limit",
        "limitValue": "4",
        "offSetName": "offset",
        "endConditionName": "$.hasMore",
        "endConditionValue": "Const:false",
    }
    pager = Pager(paging(p), BASE)
    pager.first()
    assert q(pager.next(page({"hasMore": True}, 4)))["offset"] == "4"
    assert pager.next(page({"hasMore": False}, 4)) is None
    assert pager.ended_by == "end_condition"
    pager = Pager(paging(p), BASE)
    pager.first()
    assert pager.next(page({"hasMore": True}, 0)) is None
    assert pager.ended_by == "empty_page"


@pytest.mark.parametrize("path", ["paging.next", "$.paging.next"])
def test_pointer(path: str) -> None:
    pager = Pager(
        paging({"type": "POINTER", "limitName": "limit", "limitValue": 1, "pointerPath": path}),
        BASE,
    )
    assert q(pager.first()) == {"fixed": "1", "limit": "1"}
    nxt = pager.next(page({"paging": {"next": "/v1/items?cursor=abc%2B"}}, 1))
    assert nxt is not None
    assert nxt.url == "https://api.example.com/v1/items?cursor=abc%2B"  # as given: no limit added
    assert nxt.headers == BASE.headers
    nxt = pager.next(page({"paging": {"next": "https://api.example.com:443/v1/items?cursor=d"}}, 1))
    assert nxt is not None and nxt.url.endswith("cursor=d")
    for end in ({"paging": {"next": None}}, {"paging": {"next": ""}}, {"paging": {}}, {}):
        p2 = Pager(paging({"type": "POINTER", "pointerPath": path}), BASE)
        p2.first()
        assert p2.next(page(end, 1)) is None
        assert p2.ended_by == "no_pointer"
    assert pager.next(page({"paging": {"next": None}}, 1)) is None
    assert (pager.requests, pager.ended_by) == (3, "no_pointer")


def test_pointer_to_another_host_a_loop_and_a_non_string_are_errors() -> None:
    p = paging({"type": "POINTER", "pointerPath": "$.next"})
    for nxt, code in (
        ("https://evil.example/v1/items", Code.REDIRECT_REFUSED),
        ("http://api.example.com/v1/items", Code.REDIRECT_REFUSED),
        ("//evil.example/x", Code.REDIRECT_REFUSED),
        (5, Code.INVALID_RESPONSE),
    ):
        pager = Pager(p, BASE)
        pager.first()
        with pytest.raises(PullError) as info:
            pager.next(page({"next": nxt}, 1))
        assert info.value.code == code
        assert info.value.request == "GET https://api.example.com/v1/items?fixed=1"
    pager = Pager(p, BASE)
    pager.first()
    pager.next(page({"next": "/v1/items?p=2"}, 1))
    with pytest.raises(PullError) as info:
        pager.next(page({"next": "/v1/items?p=2"}, 1))
    assert info.value.code == Code.PAGINATION_LOOP


def test_continuation_token_the_seed_zendesk_answer_ends_on_has_more_false() -> None:
    pager = Pager(parse_spec(zendesk_users()).paging, BASE)
    assert q(pager.first()) == {"fixed": "1"}
    assert pager.next(Page(ZENDESK_ANSWER, {}, 1)) is None  # has_more false WITH a cursor
    assert (pager.requests, pager.ended_by, pager.truncated) == (1, "end_condition", False)


def test_continuation_token_in_the_query() -> None:
    pager = Pager(parse_spec(zendesk_users()).paging, BASE)
    pager.first()
    more = {"meta": {"has_more": True, "after_cursor": "c1"}}
    assert q(pager.next(page(more, 1))) == {"fixed": "1", "page[after]": "c1"}
    more2 = {"meta": {"has_more": True, "after_cursor": "c2"}}
    nxt = pager.next(page(more2, 1))
    assert q(nxt) == {"fixed": "1", "page[after]": "c2"}
    assert nxt is not None and nxt.url.count("page%5Bafter%5D") == 1
    with pytest.raises(PullError) as info:
        pager.next(page({"meta": {"has_more": True, "after_cursor": "c1"}}, 1))
    assert info.value.code == Code.PAGINATION_LOOP


@pytest.mark.parametrize(
    ("data", "count", "ended_by"),
    [
        ({"meta": {"after_cursor": None}}, 1, "no_token"),
        ({"meta": {"after_cursor": ""}}, 1, "no_token"),
        ({"meta": {}}, 1, "no_token"),
        ({"meta": {"after_cursor": "c"}}, 0, "empty_page"),
    ],
)
def test_continuation_token_ends(data: Any, count: int, ended_by: str) -> None:
    p = {
        "type": "CONTINUATION_TOKEN",
        "continuationTokenPath": "$.meta.after_cursor",
        "parameterName": "cursor",
    }
    pager = Pager(paging(p), BASE)
    pager.first()
    assert pager.next(page(data, count)) is None
    assert pager.ended_by == ended_by


def test_continuation_token_in_a_header_with_a_limit() -> None:
    p = {
        "type": "CONTINUATION_TOKEN",
        "continuationTokenPath": "$.next",
        "parameterName": "X-Cursor",
        "parameterType": "HEADERPARAM",
        "limitName": "size",
        "limitValue": 50,
    }
    pager = Pager(paging(p), BASE)
    assert q(pager.first()) == {"fixed": "1", "size": "50"}
    nxt = pager.next(page({"next": 12345}, 50))
    assert nxt is not None
    assert dict(nxt.headers) == {"Authorization": "Bearer k", "X-Cursor": "12345"}
    assert q(nxt) == {"fixed": "1", "size": "50"}
    with pytest.raises(PullError) as info:
        pager.next(page({"next": {"a": 1}}, 50))
    assert info.value.code == Code.INVALID_RESPONSE


def test_page_with_the_seed_x_pagecount_header() -> None:
    p = {
        "type": "PAGE",
        "limitName": "pageSize",
        "limitValue": 100,
        "initialPageIndex": 1,
        "endPageIndex": "headers.x-pagecount",
        "pageParamName": "pageNumber",
        "maximumRequest": 10000,
    }
    pager = Pager(paging(p), BASE)
    assert q(pager.first()) == {"fixed": "1", "pageSize": "100", "pageNumber": "1"}
    assert q(pager.next(page(count=100, headers={"X-PageCount": "3"})))["pageNumber"] == "2"
    assert q(pager.next(page(count=100, headers={"x-pagecount": "3"})))["pageNumber"] == "3"
    assert pager.next(page(count=100, headers={"x-pagecount": "3"})) is None
    assert (pager.requests, pager.ended_by) == (3, "end_page")


def test_page_from_zero_ends_on_an_empty_page_or_a_numeric_end() -> None:
    pager = Pager(paging({"type": "PAGE", "pageParamName": "p"}), BASE)
    assert q(pager.first()) == {"fixed": "1", "p": "0"}
    assert q(pager.next(page(count=5)))["p"] == "1"  # no header: go on
    assert pager.next(page(count=0)) is None
    assert pager.ended_by == "empty_page"
    pager = Pager(paging({"type": "PAGE", "pageParamName": "p", "endPageIndex": 1}), BASE)
    pager.first()
    assert q(pager.next(page(count=5)))["p"] == "1"
    assert pager.next(page(count=5)) is None
    assert (pager.requests, pager.ended_by) == (2, "end_page")
    pager = Pager(
        paging({"type": "PAGE", "pageParamName": "p", "endPageIndex": "headers.x-pagecount"}), BASE
    )
    pager.first()
    with pytest.raises(PullError) as info:
        pager.next(page(count=5, headers={"x-pagecount": "many"}))
    assert info.value.code == Code.INVALID_RESPONSE


def test_none_is_one_request() -> None:
    pager = Pager(paging({"type": "NONE"}), BASE)
    assert pager.first() == BASE
    assert pager.next(page(count=1000)) is None
    assert (pager.requests, pager.ended_by, pager.truncated) == (1, "single_request", False)


@pytest.mark.parametrize(
    "p",
    [
        {
            "type": "OFFSET",
            "limitName": "l",
            "limitValue": 2,
            "offsetName": "o",
            "maximumRequest": "3",
        },
        {"type": "PAGE", "pageParamName": "p", "maximumRequest": 3},
        {"type": "POINTER", "pointerPath": "$.next", "maximumRequest": 3},
        {
            "type": "CONTINUATION_TOKEN",
            "continuationTokenPath": "$.next",
            "parameterName": "c",
            "maximumRequest": 3,
        },
    ],
)
def test_maximum_request_truncates(p: dict[str, Any]) -> None:
    pager = Pager(paging(p), BASE)
    pager.first()
    n = 0
    while True:
        n += 1
        nxt = pager.next(page({"next": f"/n{n}"}, 2))
        if nxt is None:
            break
    assert (pager.requests, pager.truncated, pager.ended_by) == (3, True, None)


def test_a_last_page_at_the_maximum_is_an_end_not_a_truncation() -> None:
    pager = Pager(
        paging(
            {
                "type": "OFFSET",
                "limitName": "l",
                "limitValue": 2,
                "offsetName": "o",
                "maximumRequest": 2,
            }
        ),
        BASE,
    )
    pager.first()
    pager.next(page(count=2))
    assert pager.next(page(count=1)) is None
    assert (pager.truncated, pager.ended_by) == (False, "short_page")


@pytest.mark.parametrize(
    "p",
    [
        {"type": "NONE"},
        {"type": "POINTER", "pointerPath": "$.next"},
        {"type": "PAGE", "pageParamName": "p"},
        {"type": "CONTINUATION_TOKEN", "continuationTokenPath": "$.next", "parameterName": "c"},
    ],
)
def test_the_end_condition_ends_every_type(p: dict[str, Any]) -> None:
    pager = Pager(
        paging({**p, "endConditionName": "$.done", "endConditionValue": "Const:true"}), BASE
    )
    pager.first()
    assert pager.next(page({"done": True, "next": "/again"}, 5)) is None
    assert pager.ended_by == "end_condition"


def test_errors_mask_secrets_in_the_request() -> None:
    base = Request("GET", "https://api.example.com/x?key=s3cret")
    pager = Pager(paging({"type": "POINTER", "pointerPath": "$.next"}), base, secrets=["s3cret"])
    pager.first()
    with pytest.raises(PullError) as info:
        pager.next(page({"next": "https://evil.example/"}, 1))
    assert info.value.request == "GET https://api.example.com/x?key=******"
    assert info.value.as_dict()["code"] == "redirect_refused"


def test_first_only_once() -> None:
    pager = Pager(paging({"type": "NONE"}), BASE)
    assert pager.next(page()) is None  # nothing issued yet
    pager.first()
    with pytest.raises(RuntimeError):
        pager.first()
