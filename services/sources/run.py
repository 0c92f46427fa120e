"""One source run: fetch page after page, hand the records to the pipeline, record progress.

The run holds its row in ``source_runs`` as a lease (owner + heartbeat, see
:class:`shared.pg.sources.SourceStore`): every progress update is conditional on
this stage still owning a ``running`` run, and a heartbeat task keeps it fresh
while a request waits (a long ``Retry-After``). When an update finds the run no
longer ours — cancelled through the API, or failed ``run_abandoned`` by another
stage because this one stalled past ``INGESTD_SOURCE_STALE_S`` — the run stops at
once and its snapshot session is aborted, so a run is never carried on by two
stages and a cut-off snapshot never deletes anything.

Full mode: the records go into one snapshot session (:class:`SnapshotWriter`),
completed only when pagination ended by an end condition; any failure, a cancel
or ``maximumRequest`` reached first aborts it (error ``max_requests_reached``).
Incremental mode: each page is an upsert batch (:class:`UpsertWriter`); a run cut by
``maximumRequest`` keeps what it fetched and says ``truncated`` (its window does
not advance, so the next run fetches the rest again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from shared import tasks
from shared.codes import Code
from shared.pg.sources import RunRow, SourceRow, SourceStore
from shared.pull.http import Fetcher, parse_json
from shared.pull.model import Page, PullError, Request, RunKind, Window, mask
from shared.pull.paging import Pager
from shared.pull.records import extract
from shared.pull.request import render_base
from shared.pull.spec import SourceSpec, parse_spec, secret_values
from shared.redis.durable import Guard
from shared.redis.intake import SessionGone, SnapshotWriter, UpsertWriter
from shared.registry import TableInfo

log = logging.getLogger("ingestd.sources")


@dataclass(frozen=True, slots=True)
class RunContext:
    """What every run of one stage shares."""

    redis: Redis
    store: SourceStore
    owner: str
    partitions: int
    session_ttl: int
    receipt_ttl: int
    retries: int
    connect_timeout_s: float
    read_timeout_s: float
    heartbeat_s: float
    guard: Guard | None = None  # strict durability: the writers confirm each append


class Stopped(Exception):
    """The run is no longer this stage's (cancelled, or taken over after a stall)."""


class Run:
    def __init__(
        self, ctx: RunContext, run: RunRow, source: SourceRow, spec_raw: dict[str, Any],
        table: TableInfo,
    ) -> None:  # fmt: skip
        self.ctx = ctx
        self.run = run
        self.source = source
        self.spec_raw = spec_raw
        self.table = table
        self.requests = 0
        self.pages = 0
        self.records = 0
        self.events_recorded = 0
        self.writer: SnapshotWriter | UpsertWriter | None = None
        self.secrets: list[str] = []
        self._lost = asyncio.Event()

    # -- the whole run --------------------------------------------------------------

    async def execute(self) -> str:
        """Run to the end; the final status."""
        beat = asyncio.create_task(self._heartbeat(), name=f"heartbeat {self.run.id}")
        work = asyncio.create_task(self._work(), name=f"run {self.run.id}")
        lost = asyncio.create_task(self._lost.wait())
        try:
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
            if self._lost.is_set():  # the run was taken from us: stop fetching now
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
                await self._abort_session()
                log.info("source %s: run %s stopped (cancelled or taken over)",
                         self.source.name, self.run.id)  # fmt: skip
                return "stopped"
            return await work
        finally:  # also when this task is cancelled (the stage stops): nothing outlives it
            for t in (work, beat, lost):
                t.cancel()
            for t in (work, beat, lost):
                with contextlib.suppress(BaseException):
                    await t

    async def _work(self) -> str:
        window: Window | None = None
        truncated = False
        try:
            spec = parse_spec(self.spec_raw)
            self.secrets = secret_values(spec, self.source.params)
            window = await self._window()
            await self.ctx.store.set_window(self.run.id, self.ctx.owner, window.start, window.end)
            truncated = await self._fetch_all(spec, window)
            if self.source.mode == "full":
                if truncated:
                    raise PullError(
                        Code.MAX_REQUESTS_REACHED,
                        f"maximumRequest ({spec.paging.maximum_request}) was reached before "
                        "pagination ended: a cut-off snapshot would delete what it did not "
                        "fetch, so this full run deletes nothing",
                    )
                assert isinstance(self.writer, SnapshotWriter)
                await self.writer.complete()
            await self._record_events()
        except PullError as e:
            await self._abort_session()
            return await self._finish("failed", window, error=self._error(e))
        except ValueError as e:  # the params cannot make a request (render_base says why)
            await self._abort_session()
            err = PullError(Code.INVALID_SOURCE_PARAMS, f"cannot build the request: {e}")
            return await self._finish("failed", window, error=self._error(err))
        except SessionGone as e:
            err = PullError(
                Code.SOURCE_UNAVAILABLE,
                f"the run's snapshot session is gone ({e}): a newer snapshot of the scope "
                "was applied, or it was aborted",
            )
            return await self._finish("failed", window, error=self._error(err))
        except (asyncio.CancelledError, Stopped):
            raise
        except Exception as e:  # a defect, or a server gone: the run fails, the stage goes on
            log.exception("source %s: run %s failed", self.source.name, self.run.id)
            await self._abort_session()
            err = PullError(Code.SOURCE_UNAVAILABLE, f"{type(e).__name__}: {e}")
            return await self._finish("failed", window, error=self._error(err))
        return await self._finish("succeeded", window, truncated=truncated)

    async def _window(self) -> Window:
        end = self.run.started_at or datetime.now(UTC)
        src = self.source
        return await self.ctx.store.next_window(src.id, self.run.kind, src.start_time, end)

    def _new_writer(self) -> SnapshotWriter | UpsertWriter:
        kw: dict[str, Any] = {
            "partitions": self.ctx.partitions,
            "integration": self.source.integration_id,
            "table": self.table.table,
            "resource_type": self.table.resource_type,
            "group_key": self.source.group_key,
            "event": self.run.id,
            "actor": {"source": self.source.name, "kind": self.run.kind},
            "session_ttl": self.ctx.session_ttl,
            "receipt_ttl": self.ctx.receipt_ttl,
            "guard": self.ctx.guard,
        }
        if self.source.mode == "full":
            return SnapshotWriter(self.ctx.redis, session=f"source:{self.run.id}", **kw)
        return UpsertWriter(self.ctx.redis, **kw)

    async def _fetch_all(self, spec: SourceSpec, window: Window) -> bool:
        """Every page until an end condition; True when cut by ``maximumRequest``."""
        self.writer = self._new_writer()
        kind: RunKind = "incremental" if self.run.kind == "incremental" else "backfill"
        base = render_base(spec, self.source.params, kind, window)
        pager = Pager(spec.paging, base, secrets=self.secrets)
        async with Fetcher(
            connect_timeout_s=self.ctx.connect_timeout_s,
            read_timeout_s=self.ctx.read_timeout_s,
            retries=self.ctx.retries,
            delay_ms=spec.paging.delay_ms,
            secrets=self.secrets,
            on_retry=lambda text: log.info("source %s: %s", self.source.name, text),
        ) as fetcher:
            req: Request | None = pager.first()
            while req is not None:
                current = req
                try:
                    req = await self._page(fetcher, pager, spec, current)
                except PullError as e:
                    what = f"{current.method} {current.url}"
                    e.request = e.request or mask(what, self.secrets)
                    raise
                finally:
                    self.requests = fetcher.requests
        return pager.truncated

    async def _page(
        self, fetcher: Fetcher, pager: Pager, spec: SourceSpec, req: Request
    ) -> Request | None:
        """Fetch one page, hand its records on, record progress; the next request."""
        resp = await fetcher.fetch(req)
        self.requests = fetcher.requests
        data = parse_json(resp, self.secrets)
        count, records = extract(data, spec.content, spec.explode)
        if records:
            assert self.writer is not None
            await self.writer.add(records)
        self.pages += 1
        self.records += len(records)
        await self._progress()
        return pager.next(Page(data, resp.headers, count))

    # -- progress, lease and the end ------------------------------------------------

    async def _beat(self) -> bool:
        """Progress and liveness in one guarded write; False: the run is no longer ours."""
        return await self.ctx.store.heartbeat(
            self.run.id, self.ctx.owner, self.requests, self.pages, self.records,
            self._session(),
        )  # fmt: skip

    async def _progress(self) -> None:
        await self._record_events()
        if not await self._beat():
            self._lost.set()
            raise Stopped

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.heartbeat_s)
            try:
                ok = await self._beat()
            except Exception as e:  # PostgreSQL away: the next beat tries again
                tasks.reraise_if_cancelled()
                log.warning("source %s: heartbeat failed: %s", self.source.name, e)
                continue
            if not ok:
                self._lost.set()
                return

    def _session(self) -> str | None:
        w = self.writer
        return w.scope.session if isinstance(w, SnapshotWriter) else None

    async def _record_events(self) -> None:
        w = self.writer
        if w is not None and len(w.event_ids) > self.events_recorded:
            new = w.event_ids[self.events_recorded :]
            await self.ctx.store.add_run_events(self.run.id, new)
            self.events_recorded += len(new)

    async def _abort_session(self) -> None:
        if isinstance(self.writer, SnapshotWriter) and self.writer.parts:
            with contextlib.suppress(Exception):
                await self.writer.abort()

    def _error(self, e: PullError) -> dict[str, Any]:
        d = e.as_dict()
        d["message"] = mask(str(d["message"]), self.secrets)
        if d.get("request"):
            d["request"] = mask(str(d["request"]), self.secrets)
        return d

    async def _finish(
        self, status: str, window: Window | None, *, error: dict[str, Any] | None = None,
        truncated: bool = False,
    ) -> str:  # fmt: skip
        ok = await self.ctx.store.finish_run(
            self.run.id, self.ctx.owner, status, error=error, truncated=truncated,
            window_start=window.start if window else None,
            window_end=window.end if window else None,
            requests=self.requests, pages=self.pages, records=self.records,
        )  # fmt: skip
        if not ok:
            await self._abort_session()
            return "stopped"
        level = logging.INFO if status == "succeeded" else logging.WARNING
        log.log(
            level, "source %s: run %s %s: %d requests, %d pages, %d records%s",
            self.source.name, self.run.id, status, self.requests, self.pages, self.records,
            f" ({error['code']}: {error['message']})" if error else "",
        )  # fmt: skip
        return status
