"""The demo API's routes, each paginating the way the seed describes its source."""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from tests.demo_api.state import DemoState, parse_time

DEMO = web.AppKey("demo_state", DemoState)

MAILCHIMP_MAX_COUNT = 1000
ZENDESK_MAX_SIZE = 1000
_UPDATED = re.compile(r"updated\s*(>=|<=|>|<|:)\s*(\S+)")


def _json(
    data: Any, *, status: int = 200, z: bool = False, headers: dict[str, str] | None = None
) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_UTC_Z if z else 0)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _int(request: web.Request, name: str, default: int, lo: int = 0, hi: int = 1 << 31) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise _problem(400, "Invalid Resource", f"{name} must be an integer in [{lo}, {hi}]")
    return value


class Refused(Exception):
    """An error answer a handler gives (the app's middleware returns ``response``)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.response = _json(body, status=status)


def _problem(status: int, title: str, detail: str) -> Refused:
    """A Mailchimp-style problem document."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return Refused(status, body)


def _key_of(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def _check_key(request: web.Request) -> None:
    """Bearer <key>, or Basic with any user and the key as password."""
    given = _key_of(request.headers.get("Authorization", ""))
    key = request.app[DEMO].api_key
    if given is None or not hmac.compare_digest(given.encode(), key.encode()):
        raise _problem(401, "API Key Invalid", "Your API key may be invalid, or missing.")


def _time_param(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return parse_time(raw)
    except ValueError:
        raise _problem(400, "Invalid Resource", f"{name}: {raw!r} is not a timestamp") from None


async def members(request: web.Request) -> web.Response:
    """Mailchimp ``GET /3.0/lists/{listId}/members`` (OFFSET; last_changed window)."""
    _check_key(request)
    state = request.app[DEMO]
    list_id = request.match_info["listId"]
    if list_id not in state.lists:
        raise _problem(404, "Resource Not Found", "The requested resource could not be found.")
    count = _int(request, "count", 10, 1, MAILCHIMP_MAX_COUNT)
    offset = _int(request, "offset", 0)
    since = _time_param(request, "since_last_changed")
    before = _time_param(request, "before_last_changed")
    status = request.query.get("status")
    chosen = [
        m
        for m in state.lists[list_id].values()
        if (since is None or m["last_changed"] >= since)
        and (before is None or m["last_changed"] < before)
        and (status is None or m["status"] == status)
    ]
    links = [
        {"rel": "self", "href": f"/3.0/lists/{list_id}/members", "method": "GET"},
        {"rel": "parent", "href": f"/3.0/lists/{list_id}", "method": "GET"},
    ]
    return _json(
        {
            "members": chosen[offset : offset + count],
            "list_id": list_id,
            "total_items": len(chosen),
            "_links": links,
        }
    )


async def email_activity(request: web.Request) -> web.Response:
    """Mailchimp ``GET /3.0/reports/{campaignId}/email-activity`` (OFFSET; to explode)."""
    _check_key(request)
    state = request.app[DEMO]
    campaign = request.match_info["campaignId"]
    if campaign not in state.campaigns:
        raise _problem(404, "Resource Not Found", "The requested resource could not be found.")
    count = _int(request, "count", 10, 1, MAILCHIMP_MAX_COUNT)
    offset = _int(request, "offset", 0)
    emails = state.campaigns[campaign]
    return _json(
        {
            "emails": emails[offset : offset + count],
            "campaign_id": campaign,
            "total_items": len(emails),
            "_links": [],
        }
    )


def _cursor(user_id: int) -> str:
    raw = orjson.dumps({"field": "id", "desc": False, "value": user_id})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after_id(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return int(orjson.loads(raw)["value"])
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise _zendesk_error("InvalidPaginationParameter", "page[after] is invalid") from None


def _zendesk_error(error: str, description: str) -> Refused:
    return Refused(400, {"error": error, "description": description})


def _user_filter(query: str) -> Callable[[dict[str, Any]], bool]:
    """``type:user``, ``updated>X`` / ``updated > X`` / ``updated<X`` (X: yyyy-MM-ddTHH:mm:ssK)."""
    tests: list[Callable[[datetime], bool]] = []
    for op, raw in _UPDATED.findall(query):
        try:
            at = parse_time(raw)
        except ValueError:
            raise _zendesk_error("InvalidQuery", f"updated{op}{raw}: not a time") from None
        tests.append(_compare(op, at))
    types = re.findall(r"type:(\w+)", query)
    wrong_type = any(t != "user" for t in types)
    return lambda u: not wrong_type and all(t(u["updated_at"]) for t in tests)


def _compare(op: str, at: datetime) -> Callable[[datetime], bool]:
    ops: dict[str, Callable[[datetime], bool]] = {
        ">": lambda v: v > at,
        ">=": lambda v: v >= at,
        "<": lambda v: v < at,
        "<=": lambda v: v <= at,
        ":": lambda v: v == at,
    }
    return ops[op]


async def search_export(request: web.Request) -> web.Response:
    """Zendesk ``GET /api/v2/search/export`` (CONTINUATION_TOKEN). The last page says
    ``has_more: false`` and still carries an ``after_cursor`` (the seed's trap)."""
    state = request.app[DEMO]
    if request.query.get("filter[type]") != "user":
        raise _zendesk_error("InvalidPaginationParameter", "filter[type] must be user")
    size = _int(request, "page[size]", 100, 1, ZENDESK_MAX_SIZE)
    after = request.query.get("page[after]")
    after_id = _after_id(after) if after else -1
    keep = _user_filter(" ".join(request.query.getall("query", [])))
    chosen = [u for uid, u in sorted(state.users.items()) if uid > after_id and keep(u)]
    page = chosen[:size]
    cursor = _cursor(page[-1]["id"]) if page else None
    next_url = str(request.url.update_query({"page[after]": cursor})) if cursor else None
    body = {
        "results": page,
        "facets": None,
        "meta": {"has_more": len(chosen) > size, "after_cursor": cursor, "before_cursor": None},
        "links": {"prev": None, "next": next_url},
    }
    return _json(body, z=True)


def _sorted_items(state: DemoState) -> list[dict[str, Any]]:
    return [state.items[k] for k in sorted(state.items)]


async def paged_items(request: web.Request) -> web.Response:
    """``GET /paged/items?pageNumber=&pageSize=`` (PAGE, from 1, ``x-pagecount``)."""
    size = _int(request, "pageSize", 10, 1, 10_000)
    number = _int(request, "pageNumber", 1, 1)
    items = _sorted_items(request.app[DEMO])
    pages = math.ceil(len(items) / size)
    chunk = items[(number - 1) * size : number * size]
    return _json({"items": chunk}, headers={"x-pagecount": str(pages)})


async def pointer_items(request: web.Request) -> web.Response:
    """``GET /pointer/items?limit=&after=`` (POINTER at ``$.paging.next``; null at the end)."""
    state = request.app[DEMO]
    limit = _int(request, "limit", 10, 1, 10_000)
    after = request.query.get("after", "")
    rest = [i for i in _sorted_items(state) if i["id"] > after]
    page = rest[:limit]
    next_url: str | None = None
    if len(rest) > limit:
        rel = str(URL("/pointer/items").with_query({"after": page[-1]["id"], "limit": limit}))
        next_url = str(request.url.origin()) + rel if state.absolute_pointers else rel
    return _json({"items": page, "paging": {"next": next_url}})


async def all_items(request: web.Request) -> web.Response:
    """``GET /all/items`` (NONE: everything in one answer)."""
    return _json({"items": _sorted_items(request.app[DEMO])})


def bulk_records(start: int, stop: int) -> Iterator[dict[str, Any]]:
    """Records start..stop-1 of the bench collection, generated on demand."""
    for i in range(start, stop):
        yield {"id": f"r{i:06d}", "name": f"record {i}", "n": i}


async def bulk_items(request: web.Request) -> web.Response:
    """``GET /bulk/items?limit=&offset=`` (OFFSET over ``bulk_count`` generated records)."""
    total = request.app[DEMO].bulk_count
    limit = _int(request, "limit", 1000, 1, 100_000)
    offset = _int(request, "offset", 0)
    stop = min(total, offset + limit)
    return _json({"items": list(bulk_records(min(offset, stop), stop)), "total": total})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/3.0/lists/{listId}/members", members)
    app.router.add_get("/3.0/reports/{campaignId}/email-activity", email_activity)
    app.router.add_get("/api/v2/search/export", search_export)
    app.router.add_get("/paged/items", paged_items)
    app.router.add_get("/pointer/items", pointer_items)
    app.router.add_get("/all/items", all_items)
    app.router.add_post("/all/items", all_items)
    app.router.add_get("/bulk/items", bulk_items)
