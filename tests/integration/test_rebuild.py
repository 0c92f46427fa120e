"""``ingestd rebuild``: ``resources`` folded again from ``resource_changes``."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from services.projector.apply import apply_batch
from services.rebuild import rebuild
from shared.config import Settings
from shared.events import Change, Effect, RawMeta
from shared.pg.migrate import RECORD_SQL, migrate, migration_files
from shared.pg.projection import CHANGE_COLS
from shared.pg.rebuild import RebuildStore
from shared.pg.resources import ResourceStore
from tests.conftest import InlinePipeline, Seeded
from tests.helpers import delete, emp, post, post_bulk

RT = "_hist_thing"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def run(settings: Settings, capsys: pytest.CaptureFixture[str], **kw: Any) -> tuple[int, str]:
    code = await rebuild(settings, kw.pop("verify", False), kw.pop("resource_type", None), **kw)
    return code, capsys.readouterr().out


async def test_a_history_the_pipeline_wrote_folds_to_resources(
    client: TestClient[Any, Any], seeded: Seeded, pipeline: InlinePipeline,
    settings: Settings, capsys: pytest.CaptureFixture[str], pool: asyncpg.Pool,
) -> None:  # fmt: skip
    await post_bulk(client, seeded, [emp(f"b{i}", active=True) for i in range(20)])
    await pipeline.run()
    await post(client, seeded, emp("b1", active=False))
    await post(client, seeded, emp("b2", employee={"username": "x", "email": "x@y"}))
    await delete(client, seeded, "b3,b4")
    await pipeline.run()
    await post(client, seeded, emp("b3", active=True))  # re-created after its delete
    await post(client, seeded, emp("g1"), group_key="other")
    await pipeline.run()
    code, out = await run(settings, capsys, verify=True)
    assert code == 0, out
    assert "folding: 20 live resource(s)" in out and "no differences" in out
    # the projector gives resources the times history has: a rebuild changes nothing
    before = await pool.fetch("SELECT * FROM resources ORDER BY resource_id")
    code, out = await run(settings, capsys)
    assert code == 0 and "no differences" in out
    assert await pool.fetch("SELECT * FROM resources ORDER BY resource_id") == before


def _history(n_resources: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(history rows, resources rows): each resource has 4 changes; every 25th is
    created, updated, deleted and created again; the others created and updated 3 times."""
    history: list[tuple[Any, ...]] = []
    live: list[tuple[Any, ...]] = []
    for i in range(n_resources):
        rid = f"r{i:06d}"
        recreated = i % 25 == 0
        ops = ["created", "updated", "deleted", "created"] if recreated else [
            "created", "updated", "updated", "updated"]  # fmt: skip
        created_at = T0
        for v, op in enumerate(ops, 1):
            at = T0 + timedelta(seconds=v)
            ev = f"ev_{i}_{v}"
            if op == "deleted":
                history.append((RT, "", rid, v, op, None, None, [], None, ev, at, at,
                                None, None, None))  # fmt: skip
                continue
            data = {"id": rid, "n": v}
            h = hashlib.sha256(orjson.dumps(data)).hexdigest()
            imp = {"n": v}
            if op == "created":
                created_at = at
            history.append((RT, "", rid, v, op, None, None, [], data, ev, at, at, rid, imp, h))
            if v == 4:
                live.append((RT, "", rid, rid, imp, data, h, v, created_at, at, ev))
    return history, live


async def _load(pool: asyncpg.Pool, n_resources: int) -> int:
    """COPY a generated history and the resources it folds to."""
    history, live = _history(n_resources)
    async with pool.acquire() as conn:
        await conn.copy_records_to_table("resource_changes", records=history, columns=CHANGE_COLS)
        await conn.copy_records_to_table("resources", records=live, columns=RESOURCE_COLS)
    return len(history)


RESOURCE_COLS = (
    "resource_type group_key resource_id name important_fields data content_hash version"
    " created_at updated_at last_event_id"
).split()


@pytest.mark.slow
async def test_rebuild_of_a_table_with_100000_changes(
    pool: asyncpg.Pool, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _load(pool, 25_000) == 100_000
    code, out = await run(settings, capsys, verify=True)
    assert code == 0, out
    assert "reading history: 100,000 change(s)" in out and "25,000 live" in out, out

    # corrupt: data, version, a lost row, a row history never had, a revived delete
    await pool.execute(
        "UPDATE resources SET data = '{\"id\": \"x\"}' WHERE resource_id IN ('r000001', 'r000002')"
    )
    await pool.execute("UPDATE resources SET version = 9 WHERE resource_id = 'r000003'")
    await pool.execute("DELETE FROM resources WHERE resource_id = 'r000004'")
    await pool.execute(
        "INSERT INTO resources SELECT resource_type, group_key, 'ghost', name, important_fields,"
        " data, content_hash, version, created_at, updated_at, last_event_id FROM resources"
        " WHERE resource_id = 'r000005'"
    )
    code, out = await run(settings, capsys, verify=True)
    assert code == 1, out
    assert "4 difference(s)" not in out and "5 difference(s)" in out, out
    assert (
        f"3 resource(s) differ from their history: {RT}/r000001, {RT}/r000002, {RT}/r000003" in out
    )
    assert f"1 resource(s) in history, not in resources: {RT}/r000004" in out
    assert f"1 resource(s) in resources, not in history: {RT}/ghost" in out

    code, out = await run(settings, capsys)
    assert code == 0, out
    assert "swapping: 1 deleted, 4 written" in out, out
    code, out = await run(settings, capsys, verify=True)
    assert code == 0 and "no differences" in out, out
    row = await pool.fetchrow("SELECT data, version FROM resources WHERE resource_id = 'r000001'")
    assert row is not None and (row["data"], row["version"]) == ({"id": "r000001", "n": 4}, 4)


async def test_rebuild_filters_by_resource_type(
    pool: asyncpg.Pool, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await _load(pool, 50)
    await pool.execute("UPDATE resources SET data = '{}' WHERE resource_id = 'r000001'")
    code, out = await run(settings, capsys, verify=True, resource_type="_other")
    assert code == 0 and "reading history: 0 change(s)" in out, out
    code, out = await run(settings, capsys, verify=True, resource_type=RT)
    assert code == 1, out


async def test_a_rebuild_pauses_projection_and_loses_nothing(pool: asyncpg.Pool) -> None:
    """The rebuild holds the lock every projector batch takes first; a batch that comes
    meanwhile waits, and applies once the rebuild commits."""
    await _load(pool, 10)
    meta = RawMeta("ev_during", "single", None, "thing", RT, "", None, None, 0)
    data = {"id": "r000001", "n": 5}
    change = Change(meta, "applied", [Effect("updated", "r000001", 5, "h5", "r000001", {}, data)])
    store = RebuildStore(pool)
    async with store.run(None, verify=False) as run_:
        await run_.fold()
        batch = asyncio.create_task(
            apply_batch(ResourceStore(pool), 0, [(b"1-1", change.encode())])
        )

        async def waiting() -> bool:
            n = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%INSERT INTO projector_positions%'"
            )
            return bool(n)

        for _ in range(200):  # the positive barrier: the batch waits on the lock
            if await waiting():
                break
            await asyncio.sleep(0.02)
        assert await waiting() and not batch.done()
        await run_.swap()
    assert await batch == 1
    row = await pool.fetchrow("SELECT version FROM resources WHERE resource_id = 'r000001'")
    assert row is not None and row["version"] == 5


async def test_migration_0011_fills_the_latest_history_row_of_live_resources(
    scratch_dsn: str,
) -> None:
    conn = await asyncpg.connect(scratch_dsn)
    try:
        for number, name, sql in migration_files():
            if number < 11:
                await conn.execute(sql)
                await conn.execute(RECORD_SQL, number, name)
        for v in (1, 2):
            await conn.execute(
                "INSERT INTO resource_changes (resource_type, resource_id, version, op, patch,"
                " after, event_id, received_at) VALUES ($1, 'a', $2, $3, '[]', $4, $5, now())",
                RT, v, "created" if v == 1 else "updated", f'{{"n": {v}}}', f"ev_{v}",
            )  # fmt: skip
        await conn.execute(
            "INSERT INTO resources (resource_type, resource_id, name, important_fields, data,"
            " content_hash, version, created_at, updated_at, last_event_id)"
            " VALUES ($1, 'a', 'A', '{\"n\": 2}', '{\"n\": 2}', 'h2', 2, now(), now(), 'ev_2')",
            RT,
        )
        assert "0011_repair.sql" in await migrate(scratch_dsn)
        rows = await conn.fetch(
            "SELECT version, name, important_fields::text AS imp, content_hash"
            " FROM resource_changes ORDER BY version"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [(1, None, None, None), (2, "A", '{"n": 2}', "h2")]
