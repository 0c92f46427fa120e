"""SourceStore against real PostgreSQL: specs and revisions, sealed secrets, and the run
guarantees the database keeps under concurrent callers (one open run per source, one
claimer per run, one request per due schedule)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from shared.config import Settings
from shared.errors import ApiError, ConfigError
from shared.pg.pool import create_pool
from shared.pg.registry import RegistryStore
from shared.pg.sources import SourceInput, SourceStore
from shared.pull.schedule import parse_schedule
from shared.secrets import SecretBox
from tests.conftest import EMPLOYEE_SCHEMA, SECRET_KEY

SPEC: dict[str, Any] = {
    "attributes": {
        "urlParams": {"host": "http://127.0.0.1", "path": "/members", "method": "GET"},
        "contentPath": {"path": "$.members"},
        "paginationParams": {"type": "NONE"},
    },
    "spec": {"type": "object", "properties": {"apiKey": {"type": "string", "format": "password"}}},
}
SECRET = "sk-live-very-secret-123"


@pytest.fixture
def store(pool: asyncpg.Pool) -> SourceStore:
    return SourceStore(pool, SecretBox(SECRET_KEY))


@pytest.fixture
async def pools(settings: Settings) -> AsyncIterator[list[asyncpg.Pool]]:
    """Separate pools: concurrent callers that share no connection (as two processes)."""
    assert settings.database_url
    ps = [await create_pool(settings.database_url, max_size=2) for _ in range(6)]
    yield ps
    for p in ps:
        await p.close()


@pytest.fixture
async def integration(pool: asyncpg.Pool) -> str:
    reg = RegistryStore(pool)
    group = await reg.create_group("directory", "_directory")
    await reg.create_schema(group.id, "employee", EMPLOYEE_SCHEMA, None)
    integration, _ = await reg.create_integration("HR", group.id)
    return integration.id


def source_input(spec_id: str, integration: str, **kw: Any) -> SourceInput:
    base = SourceInput(
        name="members",
        spec_id=spec_id,
        params={"apiKey": SECRET, "listId": "L1"},
        secret_names=frozenset({"apiKey"}),
        integration_id=integration,
        table_name="employee",
        group_key="",
        mode="incremental",
        schedule=None,
        start_time=None,
    )
    return replace(base, **kw)


async def new_source(store: SourceStore, integration: str, name: str = "members", **kw: Any) -> str:
    spec = await store.create_spec(f"spec-{name}", SPEC)
    src = await store.create_source(source_input(spec.id, integration, name=name, **kw))
    return src.id


def code_of(e: pytest.ExceptionInfo[ApiError]) -> tuple[int, str]:
    return e.value.status, e.value.code.value


# ---- specs ------------------------------------------------------------------------------


async def test_spec_crud_and_revisions(store: SourceStore) -> None:
    spec = await store.create_spec("mailchimp", SPEC)
    assert (spec.name, spec.revision, spec.spec) == ("mailchimp", 1, SPEC)
    assert await store.get_spec(spec.id) == spec
    assert await store.get_spec("mailchimp") == spec
    with pytest.raises(ApiError) as e:
        await store.create_spec("mailchimp", SPEC)
    assert code_of(e) == (409, "duplicate_name")

    changed = {**SPEC, "spec": {"type": "object"}}
    v2 = await store.update_spec("mailchimp", changed)
    assert (v2.id, v2.revision, v2.spec) == (spec.id, 2, changed)
    assert await store.spec_revision(spec.id, 1) == SPEC
    assert await store.spec_revision(spec.id, 2) == changed
    assert [s.revision for s in await store.list_specs()] == [2]

    await store.delete_spec(spec.id)
    for ref in (spec.id, "mailchimp", "not-a-uuid"):
        with pytest.raises(ApiError) as e:
            await store.get_spec(ref)
        assert code_of(e) == (404, "source_spec_not_found")


async def test_spec_in_use_cannot_be_deleted(store: SourceStore, integration: str) -> None:
    sid = await new_source(store, integration)
    src = await store.get_source(sid)
    with pytest.raises(ApiError) as e:
        await store.delete_spec(src.spec_id)
    assert code_of(e) == (409, "spec_in_use")
    assert "members" in e.value.message
    await store.delete_source(sid)
    await store.delete_spec(src.spec_id)


# ---- sources and their secrets --------------------------------------------------------------


async def test_secrets_are_sealed_in_the_table(
    store: SourceStore, integration: str, pool: asyncpg.Pool
) -> None:
    sid = await new_source(store, integration)
    src = await store.get_source(sid)
    assert src.params == {"apiKey": SECRET, "listId": "L1"}
    assert src.secret_names == {"apiKey"}
    assert SECRET not in repr(src)
    assert await store.get_source("members") == src

    row = await pool.fetchrow("SELECT params, secret_params FROM sources WHERE id = $1", src.id)
    assert row is not None
    assert row["params"] == {"listId": "L1"}
    blob = bytes(row["secret_params"])
    assert SECRET.encode() not in blob and SECRET.encode().hex() not in blob.hex()
    dump = await pool.fetchval("SELECT row_to_json(s)::text FROM sources s")
    assert SECRET not in dump

    with pytest.raises(ConfigError):  # without the key, secrets are neither read nor written
        await SourceStore(pool).get_source(sid)
    other = SourceStore(pool, SecretBox(f"{SecretBox.generate_key()},{SECRET_KEY}"))
    assert (await other.get_source(sid)).params["apiKey"] == SECRET  # rotation: old key opens


async def test_source_update_pause_delete(store: SourceStore, integration: str) -> None:
    every = parse_schedule({"every": "15m"})
    sid = await new_source(store, integration, schedule=every)
    src = await store.get_source(sid)
    assert src.schedule == {"every": "15m"} and src.next_run_at is not None
    spec = await store.get_spec(src.spec_id)
    new = source_input(spec.id, integration, name="members2", params={"listId": "L2"},
                       secret_names=frozenset(), schedule=every, group_key="g")  # fmt: skip
    out = await store.update_source(sid, new)
    assert (out.name, out.params, out.secret_names, out.group_key) == (
        "members2", {"listId": "L2"}, frozenset(), "g",
    )  # fmt: skip
    assert out.next_run_at == src.next_run_at  # same schedule: same clock
    assert (await store.set_paused(sid, True)).paused
    assert not (await store.set_paused(sid, False)).paused
    with pytest.raises(ApiError) as e:
        await store.create_source(source_input(spec.id, integration, name="members2"))
    assert code_of(e) == (409, "duplicate_name")
    run = await store.request_run(sid, "incremental")
    await store.delete_source(sid)
    for call in (store.get_source(sid), store.get_run(run.id)):
        with pytest.raises(ApiError) as e:
            await call
        assert e.value.status == 404
    assert await store.list_sources() == []


# ---- runs -----------------------------------------------------------------------------------


async def test_one_open_run_per_source_under_concurrency(
    store: SourceStore, integration: str, pools: list[asyncpg.Pool]
) -> None:
    sid = await new_source(store, integration)
    stores = [SourceStore(p) for p in pools]
    results = await asyncio.gather(
        *(s.request_run(sid, "incremental") for s in stores), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, ApiError)]
    assert len(won) == 1 and len(lost) == len(stores) - 1, results
    assert {(e.status, e.code.value) for e in lost} == {(409, "run_in_progress")}
    run = won[0]
    assert (run.status, run.kind, run.spec_revision) == ("queued", "incremental", 1)
    # once it is finished, another may be requested
    await store.cancel_run(run.id)
    assert (await store.request_run(sid, "backfill")).kind == "backfill"


async def test_claims_never_overlap(
    store: SourceStore, integration: str, pools: list[asyncpg.Pool]
) -> None:
    queued = set()
    for n in range(8):
        sid = await new_source(store, integration, name=f"s{n}")
        queued.add((await store.request_run(sid, "incremental")).id)
    stores = [SourceStore(p) for p in pools]

    async def claim_all(s: SourceStore, owner: str) -> list[str]:
        got = []
        while (run := await s.claim_run(owner)) is not None:
            assert (run.status, run.owner) == ("running", owner)
            assert run.started_at is not None and run.heartbeat_at is not None
            got.append(run.id)
        return got

    claimed = await asyncio.gather(*(claim_all(s, f"stage-{i}") for i, s in enumerate(stores)))
    flat = [r for c in claimed for r in c]
    assert sorted(flat) == sorted(queued)  # each once, none left
    assert await store.claim_run("late") is None


async def test_heartbeat_and_finish_stop_after_cancel(store: SourceStore, integration: str) -> None:
    sid = await new_source(store, integration)
    run = await store.request_run(sid, "incremental")
    claimed = await store.claim_run("a")
    assert claimed is not None and claimed.id == run.id
    assert await store.heartbeat(run.id, "a", 3, 2, 150, session="sess-1")
    assert not await store.heartbeat(run.id, "b", 1, 1, 1)  # not its owner
    t0, t1 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    assert await store.set_window(run.id, "a", t0, t1)
    got = await store.get_run(run.id, sid)
    assert (got.requests, got.pages, got.records, got.session) == (3, 2, 150, "sess-1")
    assert (got.window_start, got.window_end) == (t0, t1)
    cancelled = await store.cancel_run(run.id, sid)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert not await store.heartbeat(run.id, "a", 4, 3, 200)
    assert not await store.finish_run(run.id, "a", "succeeded")
    assert (await store.get_run(run.id)).status == "cancelled"
    with pytest.raises(ApiError) as e:
        await store.cancel_run(run.id)
    assert code_of(e) == (409, "run_finished")


async def test_finish_counts_and_window(
    store: SourceStore, integration: str, pool: asyncpg.Pool
) -> None:
    sid = await new_source(store, integration)
    assert await store.last_window_end(sid) is None
    run = await store.request_run(sid, "incremental")
    assert await store.claim_run("a") is not None
    await store.add_run_events(run.id, ["ev1", "ev2"])
    await store.add_run_events(run.id, ["ev2", "ev3"])  # again: no change
    for n, (created, updated, rejected) in enumerate([(2, 0, 1), (1, 4, 0)], 1):
        await pool.execute(
            "INSERT INTO ingest_events (event_id, integration_id, table_name, resource_type,"
            " kind, status, created, updated, rejected, received_at)"
            " VALUES ($1, $2, 'employee', '_directory_employee', 'bulk', 'applied', $3, $4,"
            " $5, now())",
            f"ev{n}", integration, created, updated, rejected,
        )  # fmt: skip
    seqs = await pool.fetch(
        "SELECT event_id, seq FROM source_run_events WHERE run_id = $1 ORDER BY seq", run.id
    )
    assert [(r["event_id"], r["seq"]) for r in seqs] == [("ev1", 1), ("ev2", 2), ("ev3", 3)]
    end = datetime(2024, 3, 1, tzinfo=UTC)
    assert await store.finish_run(
        run.id, "a", "succeeded", truncated=True, window_end=end, requests=5, pages=5, records=9
    )
    got = await store.get_run(run.id)
    assert (got.status, got.truncated, got.window_end, got.requests, got.records) == (
        "succeeded", True, end, 5, 9,
    )  # fmt: skip
    assert (got.created, got.updated, got.deleted, got.unchanged, got.rejected) == (3, 4, 0, 0, 1)
    # a truncated run read only part of its window: the next run reads it again
    assert await store.last_window_end(sid) is None
    # a failed or truncated run does not move the window; a complete one (incremental
    # or backfill: both read everything before their end) does
    cases = [
        ("incremental", "failed", False, 3, None),
        ("incremental", "succeeded", True, 4, None),
        ("incremental", "succeeded", False, 5, 5),
        ("backfill", "succeeded", False, 9, 9),
    ]
    for kind, status, cut, days, moves_to in cases:
        r = await store.request_run(sid, kind)  # type: ignore[arg-type]
        assert await store.claim_run("a") is not None
        later = end + timedelta(days=days)
        assert await store.finish_run(r.id, "a", status, truncated=cut, window_end=later)
        got_end = await store.last_window_end(sid)
        assert got_end == (end + timedelta(days=moves_to) if moves_to else None)


async def test_list_runs_newest_first(store: SourceStore, integration: str) -> None:
    sid = await new_source(store, integration)
    ids = []
    for _ in range(4):
        run = await store.request_run(sid, "backfill")
        ids.append(run.id)
        await store.cancel_run(run.id)
    listed = [r.id for r in await store.list_runs(sid, 10)]
    assert listed == ids[::-1]
    assert [r.id for r in await store.list_runs(sid, 2)] == ids[::-1][:2]
    assert [r.id for r in await store.list_runs(sid, 10, before=ids[2])] == ids[1::-1]
    other = await new_source(store, integration, name="other")
    with pytest.raises(ApiError) as e:
        await store.get_run(ids[0], other)
    assert code_of(e) == (404, "run_not_found")


async def test_abandon_stale(store: SourceStore, integration: str, pool: asyncpg.Pool) -> None:
    a = await new_source(store, integration, name="a")
    b = await new_source(store, integration, name="b")
    ra = await store.request_run(a, "incremental")
    rb = await store.request_run(b, "incremental")
    assert await store.claim_run("dead") is not None
    assert await store.claim_run("alive") is not None
    await store.heartbeat(ra.id, "dead", 1, 1, 1, session="s-dead")
    owner_of_a = (await store.get_run(ra.id)).owner
    await pool.execute(
        "UPDATE source_runs SET heartbeat_at = now() - interval '2 minutes' WHERE owner = $1",
        owner_of_a,
    )
    abandoned = await store.abandon_stale(60)
    assert [r.id for r in abandoned] == [ra.id]
    assert abandoned[0].session == "s-dead" and abandoned[0].status == "failed"
    got = await store.get_run(ra.id)
    assert got.error is not None and got.error["code"] == "run_abandoned"
    assert got.finished_at is not None
    assert (await store.get_run(rb.id)).status == "running"
    assert await store.abandon_stale(60) == []
    assert not await store.heartbeat(ra.id, owner_of_a or "", 2, 2, 2)  # the stage must stop


async def test_schedule_due_once_under_concurrency(
    store: SourceStore, integration: str, pools: list[asyncpg.Pool], pool: asyncpg.Pool
) -> None:
    sid = await new_source(store, integration, schedule=parse_schedule({"every": "15m"}))
    full = await new_source(
        store, integration, name="full", mode="full", schedule=parse_schedule({"cron": "0 * * * *"})
    )
    minute = parse_schedule({"every": "1m"})
    paused = await new_source(store, integration, name="p", schedule=minute)
    await store.set_paused(paused, True)
    unscheduled = await new_source(store, integration, name="u")
    now = datetime.now(UTC)
    assert await store.schedule_due(now) == 0  # nothing due yet
    later = now + timedelta(hours=2)
    counts = await asyncio.gather(*(SourceStore(p).schedule_due(later) for p in pools))
    assert sum(counts) == 2, counts
    runs = {s: await store.list_runs(s) for s in (sid, full, paused, unscheduled)}
    assert [r.kind for r in runs[sid]] == ["incremental"]
    assert [r.kind for r in runs[full]] == ["backfill"]
    assert runs[paused] == [] and runs[unscheduled] == []
    src = await store.get_source(sid)
    assert src.next_run_at == later + timedelta(minutes=15)
    # due again while its run is still open: no second run, the clock still moves
    again = later + timedelta(hours=1)
    assert await store.schedule_due(again) == 0
    assert (await store.get_source(sid)).next_run_at == again + timedelta(minutes=15)
    # a scheduled source without next_run_at gets one, and no run yet
    await pool.execute("UPDATE sources SET next_run_at = NULL WHERE id = $1", paused)
    await store.set_paused(paused, False)
    assert await store.schedule_due(again) == 0
    assert (await store.get_source(paused)).next_run_at == again + timedelta(minutes=1)
