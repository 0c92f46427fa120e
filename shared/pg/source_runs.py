"""Every statement on ``source_runs`` and ``source_run_events`` (a part of
:class:`shared.pg.sources.SourceStore`, which the gateway and the sources stage use).

Guarantees the database itself keeps, however many gateways and sources stages run:
at most one open (queued or running) run per source (a partial unique index); a queued
run is claimed by one stage only (``FOR UPDATE SKIP LOCKED``); a stage whose run was
cancelled, deleted or taken over learns it at its next heartbeat (owner and status in
the ``WHERE`` of every write it makes); a due schedule requests one run, whoever asks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.codes import Code
from shared.errors import ConflictError, NotFoundError
from shared.pg.pool import Db, connection
from shared.pull.model import RunKind, Window
from shared.pull.schedule import parse_schedule

OPEN = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
COUNTS = ("created", "updated", "deleted", "unchanged", "rejected", "skipped")

#: a run with the sums of the ingest_events rows of the raw events it appended (they
#: fill in as the pipeline applies them)
_WITH_COUNTS = (
    "SELECT r.*, " + ", ".join(f"COALESCE(c.{n}, 0) AS {n}" for n in COUNTS) + " FROM source_runs r"
    " LEFT JOIN LATERAL (SELECT "
    + ", ".join(f"sum(e.{n})::int AS {n}" for n in COUNTS)
    + " FROM source_run_events x JOIN ingest_events e ON e.event_id = x.event_id"
    " WHERE x.run_id = r.id) c ON true"
)


@dataclass(frozen=True, slots=True)
class RunRow:
    id: str
    source_id: str
    kind: str
    status: str
    spec_revision: int
    window_start: datetime | None
    window_end: datetime | None
    requests: int
    pages: int
    records: int
    truncated: bool
    error: dict[str, Any] | None
    owner: str | None
    heartbeat_at: datetime | None
    session: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    rejected: int = 0
    skipped: int = 0


def _run(r: asyncpg.Record) -> RunRow:
    keys = r.keys()
    return RunRow(
        r["id"], str(r["source_id"]), r["kind"], r["status"], r["spec_revision"],
        r["window_start"], r["window_end"], r["requests"], r["pages"], r["records"],
        r["truncated"], r["error"], r["owner"], r["heartbeat_at"], r["session"],
        r["created_at"], r["started_at"], r["finished_at"],
        *(r[n] if n in keys else 0 for n in COUNTS),
    )  # fmt: skip


def new_run_id() -> str:
    return f"run_{secrets.token_hex(12)}"


def _run_not_found(run_id: str) -> NotFoundError:
    return NotFoundError(Code.RUN_NOT_FOUND, f"no run {run_id!r} of this source")


def default_kind(mode: str) -> RunKind:
    """A full source snapshots everything (backfill); an incremental one reads its window."""
    return "incremental" if mode == "incremental" else "backfill"


class RunStore:
    """The run half of :class:`~shared.pg.sources.SourceStore`."""

    _db: Db

    # ---- requested by the admin API and by schedules -----------------------------

    async def request_run(self, source_id: str, kind: RunKind) -> RunRow:
        """A queued run; 409 ``run_in_progress`` while the source has an open one."""
        try:
            r = await self._db.fetchrow(
                "INSERT INTO source_runs (id, source_id, kind, status, spec_revision)"
                " SELECT $1, s.id, $3, 'queued', sp.revision FROM sources s"
                " JOIN source_specs sp ON sp.id = s.spec_id WHERE s.id = $2::uuid RETURNING *",
                new_run_id(),
                source_id,
                kind,
            )
        except asyncpg.UniqueViolationError as e:
            raise ConflictError(
                Code.RUN_IN_PROGRESS,
                "this source has a queued or running run: cancel it or wait for it to finish",
            ) from e
        if r is None:
            raise NotFoundError(Code.SOURCE_NOT_FOUND, f"no source {source_id!r}")
        return _run(r)

    async def list_runs(
        self, source_id: str, limit: int = 50, before: str | None = None
    ) -> list[RunRow]:
        """Newest first; ``before`` (a run id) continues after that run."""
        rows = await self._db.fetch(
            _WITH_COUNTS + " WHERE r.source_id = $1::uuid AND ($3::text IS NULL OR"
            " (r.created_at, r.id) < (SELECT created_at, id FROM source_runs WHERE id = $3))"
            " ORDER BY r.created_at DESC, r.id DESC LIMIT $2",
            source_id,
            limit,
            before,
        )
        return [_run(r) for r in rows]

    async def get_run(self, run_id: str, source_id: str | None = None) -> RunRow:
        """The run (of ``source_id`` when given) with its summed counts."""
        r = await self._db.fetchrow(
            _WITH_COUNTS + " WHERE r.id = $1 AND ($2::uuid IS NULL OR r.source_id = $2::uuid)",
            run_id,
            source_id,
        )
        if r is None:
            raise _run_not_found(run_id)
        return _run(r)

    async def cancel_run(self, run_id: str, source_id: str | None = None) -> RunRow:
        """queued/running → cancelled; a finished run → 409 ``run_finished``. A stage
        running it learns at its next heartbeat and aborts its snapshot session."""
        async with connection(self._db) as conn, conn.transaction():
            r = await conn.fetchrow(
                "SELECT status FROM source_runs WHERE id = $1"
                " AND ($2::uuid IS NULL OR source_id = $2::uuid) FOR UPDATE",
                run_id,
                source_id,
            )
            if r is None:
                raise _run_not_found(run_id)
            if r["status"] in FINISHED:
                raise ConflictError(Code.RUN_FINISHED, f"run {run_id!r} has {r['status']}")
            await conn.execute(
                "UPDATE source_runs SET status = 'cancelled', finished_at = now() WHERE id = $1",
                run_id,
            )
        return await self.get_run(run_id)

    async def schedule_due(self, now: datetime) -> int:
        """Request a run (the source's default kind) of every unpaused scheduled source
        due by ``now``, unless it has an open one, and move its next_run_at on; a
        scheduled source without next_run_at gets one. Returns the runs requested. Rows
        another caller holds are skipped: each due time yields one request."""
        requested = 0
        async with connection(self._db) as conn, conn.transaction():
            due = await conn.fetch(
                "SELECT id, mode, schedule, next_run_at FROM sources WHERE NOT paused"
                " AND schedule IS NOT NULL AND (next_run_at IS NULL OR next_run_at <= $1)"
                " FOR UPDATE SKIP LOCKED",
                now,
            )
            for s in due:
                schedule = parse_schedule(s["schedule"])
                if schedule is None:  # not written by this store
                    continue
                if s["next_run_at"] is not None:
                    made = await conn.fetchval(
                        "INSERT INTO source_runs (id, source_id, kind, status, spec_revision)"
                        " SELECT $1, s.id, $3, 'queued', sp.revision FROM sources s"
                        " JOIN source_specs sp ON sp.id = s.spec_id WHERE s.id = $2"
                        " ON CONFLICT (source_id) WHERE status IN ('queued', 'running')"
                        " DO NOTHING RETURNING id",
                        new_run_id(),
                        s["id"],
                        default_kind(s["mode"]),
                    )
                    requested += made is not None
                await conn.execute(
                    "UPDATE sources SET next_run_at = $2 WHERE id = $1",
                    s["id"],
                    schedule.next_after(now),
                )
        return requested

    # ---- the sources stage's side ---------------------------------------------------

    async def claim_run(self, owner: str) -> RunRow | None:
        """The oldest queued run, now running under ``owner`` with the spec's current
        revision; None when there is none. Two stages never claim the same run."""
        r = await self._db.fetchrow(
            "UPDATE source_runs r SET status = 'running', owner = $1, heartbeat_at = now(),"
            " started_at = now(), spec_revision = sp.revision"
            " FROM sources s JOIN source_specs sp ON sp.id = s.spec_id"
            " WHERE s.id = r.source_id AND r.id = (SELECT id FROM source_runs"
            " WHERE status = 'queued' ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " RETURNING r.*",
            owner,
        )
        return None if r is None else _run(r)

    async def heartbeat(
        self,
        run_id: str,
        owner: str,
        requests: int,
        pages: int,
        records: int,
        session: str | None = None,
    ) -> bool:
        """Progress and liveness. False: the run was cancelled, deleted or taken over,
        and the stage must stop (aborting its session)."""
        done = await self._db.fetchval(
            "UPDATE source_runs SET heartbeat_at = now(), requests = $3, pages = $4,"
            " records = $5, session = COALESCE($6, session)"
            " WHERE id = $1 AND owner = $2 AND status = 'running' RETURNING id",
            run_id, owner, requests, pages, records, session,
        )  # fmt: skip
        return done is not None

    async def set_window(
        self, run_id: str, owner: str, start: datetime | None, end: datetime
    ) -> bool:
        """The window a running run reads, shown while it runs (same guard as heartbeat)."""
        done = await self._db.fetchval(
            "UPDATE source_runs SET window_start = $3, window_end = $4"
            " WHERE id = $1 AND owner = $2 AND status = 'running' RETURNING id",
            run_id, owner, start, end,
        )  # fmt: skip
        return done is not None

    async def add_run_events(self, run_id: str, event_ids: list[str]) -> None:
        """Record raw events the run appended, in order (again: no change)."""
        if not event_ids:
            return
        await self._db.execute(
            "INSERT INTO source_run_events (run_id, event_id, seq)"
            " SELECT $1, t.e, (SELECT COALESCE(max(seq), 0) FROM source_run_events"
            " WHERE run_id = $1) + row_number() OVER (ORDER BY t.n)"
            " FROM unnest($2::text[]) WITH ORDINALITY AS t(e, n) WHERE NOT EXISTS"
            " (SELECT 1 FROM source_run_events x WHERE x.run_id = $1 AND x.event_id = t.e)"
            " ON CONFLICT DO NOTHING",
            run_id,
            event_ids,
        )

    async def finish_run(
        self,
        run_id: str,
        owner: str,
        status: str,
        error: dict[str, Any] | None = None,
        truncated: bool = False,
        window_start: datetime | None = None,
        window_end: datetime | None = None,
        *,
        requests: int | None = None,
        pages: int | None = None,
        records: int | None = None,
    ) -> bool:
        """running → ``status`` (succeeded, failed or cancelled); False when the run is
        no longer this owner's running run. Windows and counts left None stay as set."""
        if status not in FINISHED:
            raise ValueError(f"a run finishes as one of {FINISHED}, not {status!r}")
        done = await self._db.fetchval(
            "UPDATE source_runs SET status = $3, error = $4, truncated = $5,"
            " window_start = COALESCE($6, window_start), window_end = COALESCE($7, window_end),"
            " requests = COALESCE($8, requests), pages = COALESCE($9, pages),"
            " records = COALESCE($10, records), heartbeat_at = now(), finished_at = now()"
            " WHERE id = $1 AND owner = $2 AND status = 'running' RETURNING id",
            run_id, owner, status, error, truncated, window_start, window_end,
            requests, pages, records,
        )  # fmt: skip
        return done is not None

    async def abandon_stale(self, stale_s: int) -> list[RunRow]:
        """Running runs whose heartbeat is older than ``stale_s`` → failed
        ``run_abandoned``; returned so the caller aborts their snapshot sessions."""
        rows = await self._db.fetch(
            "UPDATE source_runs SET status = 'failed', finished_at = now(), error = $2"
            " WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $1)"
            " RETURNING *",
            float(stale_s),
            {
                "code": Code.RUN_ABANDONED.value,
                "message": f"the sources stage running it sent no heartbeat for {stale_s} s",
                "request": None,
            },
        )
        return [_run(r) for r in rows]

    async def last_window_end(self, source_id: str) -> datetime | None:
        """Where the next incremental run starts: the end of the newest run that read
        everything up to its end — succeeded and not cut off by ``maximumRequest`` (a
        truncated run did not, so the next one reads its window again); a backfill
        counts, since it read everything before its end."""
        end: datetime | None = await self._db.fetchval(
            "SELECT window_end FROM source_runs WHERE source_id = $1::uuid"
            " AND status = 'succeeded' AND NOT truncated AND window_end IS NOT NULL"
            " ORDER BY window_end DESC LIMIT 1",
            source_id,
        )
        return end

    async def next_window(
        self, source_id: str, kind: str, start_time: datetime | None, end: datetime
    ) -> Window:
        """The window a run of ``kind`` ending at ``end`` reads: a backfill from the
        beginning; an incremental run from where the last complete run ended, else the
        source's ``startTime``, else the beginning."""
        if kind != "incremental":
            return Window(None, end)
        return Window(await self.last_window_end(source_id) or start_time, end)

    async def open_runs(self) -> int:
        """Runs queued or running, of every source."""
        n: int = await self._db.fetchval(
            "SELECT count(*) FROM source_runs WHERE status IN ('queued', 'running')"
        )
        return n
