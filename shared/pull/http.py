"""The HTTP client of pull sources: one :class:`Fetcher` per run.

A request either yields a 2xx :class:`Response` or raises :class:`PullError`:
429, 5xx, connection errors and timeouts are retried (exponential backoff with
full jitter, ``Retry-After`` honoured) and end in ``source_unavailable``; any
other answer ends in ``source_http_error``; redirects are followed only to the
same scheme, host and port (``redirect_refused`` otherwise). No secret ever
leaves this module unmasked: messages, ``PullError.request``, retry notices and
log lines all pass through :func:`shared.pull.model.mask`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from shared.codes import Code
from shared.pull.model import PullError, Request, mask

log = logging.getLogger("ingestd.sources.http")

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
HTTP_EXCERPT_BYTES = 500
JSON_EXCERPT_BYTES = 300
_READ_CHUNK = 64 << 10


def user_agent() -> str:
    """``ingestd/<version>`` of the installed distribution (``dev`` when not installed)."""
    try:
        return f"ingestd/{version('ingestd')}"
    except PackageNotFoundError:
        return "ingestd/dev"


@dataclass(frozen=True, slots=True)
class Response:
    """A 2xx answer, its body read whole (bounded by ``max_body_bytes``)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str  # final URL after same-host redirects
    method: str = "GET"  # of the request that got this answer (after a 303: GET)


def excerpt(body: bytes, limit: int) -> str:
    """The first ``limit`` bytes of ``body`` as text (invalid UTF-8 replaced)."""
    text = body[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(body) > limit else "")


def parse_json(resp: Response, secrets: Iterable[str] = ()) -> Any:
    """The JSON body of ``resp``; a body that is not JSON -> ``invalid_response``."""
    try:
        return orjson.loads(resp.body)
    except orjson.JSONDecodeError as e:
        secrets = tuple(secrets)
        request = mask(f"{resp.method} {resp.url}", secrets)
        message = (
            f"the answer of {request} is not JSON ({e.msg} at byte {e.pos}): "
            f"{excerpt(resp.body, JSON_EXCERPT_BYTES)!r}"
        )
        raise PullError(Code.INVALID_RESPONSE, mask(message, secrets), request) from None


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait per a ``Retry-After`` header: delta seconds or an HTTP date
    (a date in the past: 0). None when absent or unparseable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class _Transient(Exception):
    """An attempt that may be retried: ``what`` says why (status or error)."""

    def __init__(self, what: str, wait_hint_s: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.wait_hint_s = wait_hint_s


@dataclass(frozen=True, slots=True)
class _Hop:
    method: str
    url: URL
    headers: Mapping[str, str]
    body: bytes | None


class Fetcher:
    """Sends the requests of one run over one ``aiohttp.ClientSession``.

    ``requests`` counts every HTTP request sent (retries and redirect hops
    included), ``retries_done`` the retries among them. ``delay_ms`` spaces the
    starts of consecutive requests by at least that much. Each hop of a redirect
    chain has ``retries`` retries. A ``User-Agent`` in the request's own headers
    (a spec's headerParams) replaces the default ``ingestd/<version>``.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float = 10,
        read_timeout_s: float = 30,
        retries: int = 5,
        delay_ms: int = 0,
        max_body_bytes: int = 32 << 20,
        secrets: Iterable[str] = (),
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30,
        max_retry_after_s: float = 300,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._retries = max(0, retries)
        self._delay_s = max(0, delay_ms) / 1000
        self._max_body = max_body_bytes
        self._secrets = tuple(s for s in secrets if s)
        self._base_s = backoff_base_s
        self._cap_s = backoff_cap_s
        self._max_retry_after_s = max_retry_after_s
        self._on_retry = on_retry
        self._session: aiohttp.ClientSession | None = None
        self._pace = asyncio.Lock()
        self._last_start: float | None = None
        self.requests = 0
        self.retries_done = 0

    async def __aenter__(self) -> Fetcher:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            headers={"User-Agent": user_agent()},
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def masked(self, text: str) -> str:
        return mask(text, self._secrets)

    async def fetch(self, req: Request) -> Response:
        """The 2xx answer to ``req``, after retries and same-host redirects."""
        hop = _Hop(req.method.upper(), URL(req.url, encoded=True), req.headers, req.body)
        origin = _origin(hop.url)
        for _ in range(MAX_REDIRECTS + 1):
            status, headers, body = await self._with_retries(hop)
            if 200 <= status < 300:
                return Response(status, headers, body, str(hop.url), hop.method)
            hop = self._redirect(hop, status, headers, body, origin)
        raise self._error(
            Code.REDIRECT_REFUSED, hop, f"more than {MAX_REDIRECTS} redirects, at {self._req(hop)}"
        )

    def _redirect(
        self,
        hop: _Hop,
        status: int,
        headers: CIMultiDictProxy[str],
        body: bytes,
        origin: tuple[str, str, int | None],
    ) -> _Hop:
        location = headers.get("Location")
        if status not in REDIRECT_STATUSES or not location:
            raise self._http_error(hop, status, body)
        try:
            target = hop.url.join(URL(location, encoded=True))
        except ValueError:
            raise self._http_error(hop, status, body) from None
        if _origin(target) != origin:
            raise self._error(
                Code.REDIRECT_REFUSED,
                hop,
                f"HTTP {status} from {self._req(hop)} redirects to another host ({target}); "
                "only same scheme, host and port redirects are followed",
            )
        if status == 303 or (status in (301, 302) and hop.method == "POST"):
            return _Hop("GET", target, hop.headers, None)
        return _Hop(hop.method, target, hop.headers, hop.body)

    async def _with_retries(self, hop: _Hop) -> tuple[int, CIMultiDictProxy[str], bytes]:
        attempt = 0
        while True:
            try:
                return await self._attempt(hop)
            except _Transient as t:
                if attempt >= self._retries:
                    raise self._error(
                        Code.SOURCE_UNAVAILABLE,
                        hop,
                        f"{self._req(hop)} failed after {attempt + 1} attempts: {t.what}",
                    ) from None
                attempt += 1
                wait = self._wait_s(attempt, t.wait_hint_s)
                note = self.masked(
                    f"{hop.method} {hop.url}: {t.what}; retry {attempt}/{self._retries} "
                    f"in {wait:.3f}s"
                )
                log.info("source request retried: %s", note)
                if self._on_retry is not None:
                    self._on_retry(note)
                self.retries_done += 1
                await asyncio.sleep(wait)

    def _wait_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_retry_after_s)
        return random.uniform(0, min(self._cap_s, self._base_s * 2 ** (attempt - 1)))

    async def _attempt(self, hop: _Hop) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """One HTTP request: (status, headers, body) of any non-transient answer."""
        assert self._session is not None, "Fetcher used outside 'async with'"
        if hop.url.scheme not in ("http", "https") or not hop.url.host:
            raise self._error(
                Code.SOURCE_HTTP_ERROR, hop, f"invalid URL in {self._req(hop)}: not http(s)"
            )
        await self._paced()
        self.requests += 1
        try:
            async with self._session.request(
                hop.method,
                hop.url,
                headers=dict(hop.headers),
                data=hop.body,
                allow_redirects=False,
            ) as resp:
                if resp.status == 429 or resp.status >= 500:
                    hint = retry_after_s(resp.headers.get("Retry-After"))
                    raise _Transient(f"HTTP {resp.status}", hint)
                if 200 <= resp.status < 300:
                    return resp.status, resp.headers, await self._read(hop, resp)
                return resp.status, resp.headers, await _head(resp, HTTP_EXCERPT_BYTES + 1)
        except aiohttp.InvalidURL as e:
            raise self._error(
                Code.SOURCE_HTTP_ERROR, hop, f"invalid URL in {self._req(hop)}: {e}"
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise _Transient(_describe(e)) from None

    async def _read(self, hop: _Hop, resp: aiohttp.ClientResponse) -> bytes:
        declared = resp.content_length
        if declared is not None and declared > self._max_body:
            raise self._too_big(hop)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_READ_CHUNK):
            size += len(chunk)
            if size > self._max_body:
                raise self._too_big(hop)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _paced(self) -> None:
        if self._delay_s <= 0:
            return
        async with self._pace:
            now = time.monotonic()
            if self._last_start is not None:
                wait = self._last_start + self._delay_s - now
                if wait > 0:
                    await asyncio.sleep(wait)
            self._last_start = time.monotonic()

    def _too_big(self, hop: _Hop) -> PullError:
        return self._error(
            Code.INVALID_RESPONSE,
            hop,
            f"the answer of {self._req(hop)} is larger than {self._max_body} bytes",
        )

    def _http_error(self, hop: _Hop, status: int, body: bytes) -> PullError:
        return self._error(
            Code.SOURCE_HTTP_ERROR,
            hop,
            f"HTTP {status} from {self._req(hop)}: {excerpt(body, HTTP_EXCERPT_BYTES)}",
        )

    def _req(self, hop: _Hop) -> str:
        return f"{hop.method} {hop.url}"

    def _error(self, code: Code, hop: _Hop, message: str) -> PullError:
        return PullError(code, self.masked(message), self.masked(self._req(hop)))


async def _head(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most the first ``limit`` bytes of the body (an error answer's excerpt)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return f"timeout ({type(e).__name__})"
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}"
