"""The five pagination types of seed 004 as a pure state machine.

``Pager(paging, base)``: :meth:`Pager.first` is the run's first request; after each
answer, :meth:`Pager.next` gives the following request, or None when the run ends
(``ended_by`` says why) or when ``maximumRequest`` requests were issued before any
end (``truncated``). An end condition (``endConditionName``/``endConditionValue``)
ends every type, and is checked before anything else: the seed's Zendesk answer
with ``has_more: false`` *and* a cursor ends there instead of fetching again.

- OFFSET: ``limitName=limitValue&offsetName=<offset>``, the offset from 0 growing by
  the records each page held at contentPath; ends on an empty or a short page.
- POINTER: the limit on the first request only; then the URL at ``pointerPath``
  (absolute, or relative to the base), which must stay on the base's scheme, host and
  port (``redirect_refused``: the spec's headers carry credentials); ends when it is
  missing, null or empty.
- CONTINUATION_TOKEN: the token at ``continuationTokenPath`` as ``parameterName`` in
  the query or a header; ends when it is missing, null or empty, or on an empty page.
- PAGE: ``pageParamName`` from ``initialPageIndex`` up (and the limit on each); ends
  on an empty page or after ``endPageIndex`` (a number, or a response header).
- NONE: one request.

A pointer or token seen twice raises ``PullError(pagination_loop)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from shared.codes import Code
from shared.pull.model import Page, PullError, Request, mask
from shared.pull.request import origin, resolve, with_header, with_query
from shared.pull.spec import Paging, Path

ENDS = ("empty_page", "short_page", "end_condition", "no_pointer", "no_token", "end_page")


def _first_value(path: Path | None, data: Any) -> Any:
    if path is None:
        return None
    match = path.match(data)
    return None if match is None else match.obj


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)


class Pager:
    """One run's pagination. ``secrets`` (values) are masked out of the request an error names."""

    def __init__(self, paging: Paging, base: Request, secrets: Iterable[str] = ()) -> None:
        self.paging = paging
        self.base = base
        self.secrets = [s for s in secrets if s]
        self.requests = 0
        self.ended_by: str | None = None
        self.truncated = False
        self._current = base
        self._offset = 0
        self._page = paging.initial_page
        self._seen: set[str] = set()

    def _limit(self) -> dict[str, str]:
        p = self.paging
        if p.limit_name is None or p.limit_value is None:
            return {}
        return {p.limit_name: str(p.limit_value)}

    def _issue(self, req: Request) -> Request:
        self.requests += 1
        self._current = req
        return req

    def first(self) -> Request:
        if self.requests:
            raise RuntimeError("Pager.first() is the first request only")
        p = self.paging
        extra = self._limit()
        if p.type == "OFFSET":
            assert p.offset_name is not None
            extra[p.offset_name] = "0"
        elif p.type == "PAGE":
            assert p.page_param is not None
            extra[p.page_param] = str(self._page)
        req = with_query(self.base, extra)
        if p.type == "POINTER":
            self._seen.add(req.url)
        return self._issue(req)

    def next(self, page: Page) -> Request | None:
        """The request after ``page`` (the answer to the last one), or None: the run ends."""
        if self.ended_by is not None or self.truncated or not self.requests:
            return None
        following = self._advance(page)
        if isinstance(following, str):
            self.ended_by = following
            return None
        if self.requests >= self.paging.maximum_request:
            self.truncated = True
            return None
        return self._issue(following)

    def _advance(self, page: Page) -> str | Request:
        p = self.paging
        if p.end_condition is not None and p.end_condition.met(page.data):
            return "end_condition"
        if p.type == "NONE":
            return "single_request"
        if p.type == "POINTER":
            return self._pointer(page)
        if page.count == 0:
            return "empty_page"
        if p.type == "OFFSET":
            assert p.offset_name is not None and p.limit_value is not None
            if page.count < p.limit_value:
                return "short_page"
            self._offset += page.count
            return with_query(self.base, {**self._limit(), p.offset_name: str(self._offset)})
        if p.type == "PAGE":
            assert p.page_param is not None
            last = self._last_page(page)
            if last is not None and self._page >= last:
                return "end_page"
            self._page += 1
            return with_query(self.base, {**self._limit(), p.page_param: str(self._page)})
        return self._token(page)

    def _pointer(self, page: Page) -> str | Request:
        value = _first_value(self.paging.pointer, page.data)
        if value is None or value == "":
            return "no_pointer"
        if not isinstance(value, str):
            raise self._error(
                Code.INVALID_RESPONSE,
                f"the next-page pointer at {self.paging.pointer_path} is not a string",
            )
        url = resolve(self.base, value)
        if origin(url) != origin(self.base.url):
            raise self._error(
                Code.REDIRECT_REFUSED,
                f"the next-page pointer at {self.paging.pointer_path} leads to another host",
            )
        if url in self._seen:
            raise self._error(Code.PAGINATION_LOOP, "the next-page pointer repeats an earlier one")
        self._seen.add(url)
        return replace(self.base, url=url)

    def _token(self, page: Page) -> str | Request:
        p = self.paging
        assert p.parameter_name is not None
        value = _first_value(p.token, page.data)
        if value is None or value == "":
            return "no_token"
        if isinstance(value, dict | list) or isinstance(value, bool):
            raise self._error(
                Code.INVALID_RESPONSE, f"the continuation token at {p.token_path} is not a string"
            )
        token = str(value)
        if token in self._seen:
            raise self._error(
                Code.PAGINATION_LOOP,
                f"the continuation token at {p.token_path} repeats an earlier one",
            )
        self._seen.add(token)
        base = with_query(self.base, self._limit())
        if p.parameter_type == "HEADERPARAM":
            return with_header(base, p.parameter_name, token)
        return with_query(base, {p.parameter_name: token})

    def _last_page(self, page: Page) -> int | None:
        end = self.paging.end_page
        if end is None or isinstance(end, int):
            return end
        value = _header(page.headers, end)
        if value is None:
            return None
        try:
            return int(value.strip())
        except ValueError:
            raise self._error(
                Code.INVALID_RESPONSE, f"response header {end} is not a page number"
            ) from None

    def _error(self, code: Code, message: str) -> PullError:
        req = self._current
        return PullError(code, message, mask(f"{req.method} {req.url}", self.secrets))
