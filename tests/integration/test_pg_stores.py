"""The PostgreSQL layer used directly, against real PostgreSQL: migrations, RegistryStore,
RegistryCache and ResourceStore (the HTTP tests cover them through the gateway)."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from shared.codes import Code
from shared.errors import ApiError, ConfigError
from shared.events import Change, Effect, Op, RawMeta, new_event_id
from shared.pg.migrate import migrate, migration_files, require_migrated
from shared.pg.pool import create_pool, ping
from shared.pg.registry import RegistryCache, RegistryStore
from shared.pg.resources import ResourceStore
from shared.projection import build_rows
from shared.schema_rules import prepare_schema
from tests.conftest import EMPLOYEE_SCHEMA

BODY = prepare_schema(EMPLOYEE_SCHEMA)
ZERO = "0000_schema_migrations.sql"


async def versions(dsn: str) -> dict[int, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations")
    finally:
        await conn.close()
    return {r["version"]: r["name"] for r in rows}


async def raises(code: Code, awaitable: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        await awaitable
    assert info.value.code == code, info.value.body()
    return info.value


# ---- migrations ---------------------------------------------------------------------------


async def test_migrate_on_a_fresh_database_starts_with_0000(scratch_dsn: str) -> None:
    names = [name for _, name, _ in migration_files()]
    assert names[0] == ZERO
    pool = await create_pool(scratch_dsn, max_size=1)
    try:
        every = re.escape(str([n for n, _, _ in migration_files()]))
        with pytest.raises(ConfigError, match=every + r".*ingestd migrate"):
            await require_migrated(pool)  # no schema_migrations at all: nothing applied
        assert await migrate(scratch_dsn) == names
        assert await versions(scratch_dsn) == {n: name for n, name, _ in migration_files()}
        await require_migrated(pool)
        assert await migrate(scratch_dsn) == []  # a second run has nothing to do
    finally:
        await pool.close()


async def test_migrate_on_a_database_the_old_runner_migrated_records_0000(
    scratch_dsn: str,
) -> None:
    """The runner before 0000 created schema_migrations itself; 0000 (IF NOT EXISTS) then
    finds the table and is simply recorded, with every row kept."""
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute(  # exactly what the old runner ran
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for number, name, sql in migration_files()[1:]:
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name
            )
        with pytest.raises(ConfigError, match=r"\[0\]"):
            await require_migrated(conn)
        before = await conn.fetch("SELECT * FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert await migrate(scratch_dsn) == [ZERO]
    after = await versions(scratch_dsn)
    assert after[0] == ZERO
    assert {r["version"]: r["name"] for r in before}.items() <= after.items()
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await require_migrated(conn)
    finally:
        await conn.close()


async def test_ping(pool: asyncpg.Pool) -> None:
    await ping(pool)


# ---- RegistryStore ------------------------------------------------------------------------


async def test_groups(registry_store: RegistryStore) -> None:
    g = await registry_store.create_group("Directory", "_directory")
    assert (g.name, g.prefix) == ("Directory", "_directory")
    assert UUID(g.id) and g.created_at.tzinfo is not None
    assert await registry_store.get_group(g.id) == g
    await registry_store.create_group("Assets", "_assets")
    assert [x.name for x in await registry_store.list_groups()] == ["Assets", "Directory"]
    await raises(Code.DUPLICATE_NAME, registry_store.create_group("Directory", "_other"))
    await raises(Code.DUPLICATE_PREFIX, registry_store.create_group("Other", "_directory"))
    await raises(Code.SCHEMA_GROUP_NOT_FOUND, registry_store.get_group("not-a-uuid"))
    await raises(Code.SCHEMA_GROUP_NOT_FOUND, registry_store.get_group(str(uuid4())))


async def test_schemas_and_their_versions(registry_store: RegistryStore) -> None:
    g = await registry_store.create_group("Directory", "_directory")
    s = await registry_store.create_schema(g.id, "employee", BODY, "Employees")
    assert (s.group_id, s.table, s.resource_type) == (g.id, "employee", "_directory_employee")
    assert (s.title, s.version, s.body) == ("Employees", 1, BODY)
    assert await registry_store.get_schema(g.id, "employee") == s
    changed = {**BODY, "required": []}
    s2 = await registry_store.update_schema(g.id, "employee", changed)
    assert (s2.id, s2.version, s2.body, s2.title) == (s.id, 2, changed, "Employees")
    s3 = await registry_store.update_schema(g.id, "employee", changed, "Staff")
    assert (s3.version, s3.title) == (3, "Staff")
    assert await registry_store.get_schema(g.id, "employee") == s3
    history = await registry_store.list_versions(g.id, "employee")
    assert [(v.version, v.body) for v in history] == [(1, BODY), (2, changed), (3, changed)]
    await registry_store.create_schema(g.id, "device", BODY, None)
    assert [x.table for x in await registry_store.list_schemas(g.id)] == ["device", "employee"]


async def test_schema_lookups_and_clashes(registry_store: RegistryStore) -> None:
    a = await registry_store.create_group("A", "_a")
    b = await registry_store.create_group("B", "_a_b")
    await registry_store.create_schema(a.id, "b_c", BODY, None)  # resource type _a_b_c
    await raises(Code.DUPLICATE_TABLE, registry_store.create_schema(a.id, "b_c", BODY, None))
    await raises(Code.DUPLICATE_RESOURCE_TYPE, registry_store.create_schema(b.id, "c", BODY, None))
    await raises(Code.SCHEMA_NOT_FOUND, registry_store.get_schema(a.id, "nope"))
    await raises(Code.SCHEMA_NOT_FOUND, registry_store.update_schema(a.id, "nope", BODY))
    await raises(Code.SCHEMA_NOT_FOUND, registry_store.list_versions(b.id, "b_c"))
    missing = str(uuid4())
    await raises(Code.SCHEMA_GROUP_NOT_FOUND, registry_store.get_schema(missing, "b_c"))
    await raises(Code.SCHEMA_GROUP_NOT_FOUND, registry_store.list_schemas("x"))
    await raises(
        Code.SCHEMA_GROUP_NOT_FOUND, registry_store.create_schema(missing, "t", BODY, None)
    )


async def test_integrations_and_keys(registry_store: RegistryStore) -> None:
    g = await registry_store.create_group("Directory", "_directory")
    await registry_store.create_schema(g.id, "employee", BODY, None)
    integration, first = await registry_store.create_integration("HR", g.id)
    assert (integration.name, integration.group_id) == ("HR", g.id)
    assert await registry_store.list_integrations() == [integration]
    second = await registry_store.add_key(integration.id)
    snap = await registry_store.load_snapshot()
    for k in (first, second):
        info = snap.authenticate(k.plaintext)
        assert info is not None and info.key_id == k.key_id
        assert (info.integration_id, info.group_id) == (integration.id, g.id)
    assert snap.by_type["_directory_employee"].body == BODY
    assert snap.tables[(g.id, "employee")].version == 1
    listed = await registry_store.list_keys(integration.id)
    assert [(k.key_id, k.revoked_at) for k in listed] == [
        (first.key_id, None),
        (second.key_id, None),
    ]
    await registry_store.revoke_key(integration.id, first.key_id)
    await registry_store.revoke_key(integration.id, first.key_id)  # again: no error
    revoked = {k.key_id: k.revoked_at for k in await registry_store.list_keys(integration.id)}
    assert revoked[first.key_id] is not None and revoked[second.key_id] is None
    snap = await registry_store.load_snapshot()
    assert snap.authenticate(first.plaintext) is None
    assert snap.authenticate(second.plaintext) is not None
    await raises(Code.KEY_NOT_FOUND, registry_store.revoke_key(integration.id, "nope"))
    for bad in ("not-a-uuid", str(uuid4())):
        await raises(Code.INTEGRATION_NOT_FOUND, registry_store.add_key(bad))
        await raises(Code.INTEGRATION_NOT_FOUND, registry_store.list_keys(bad))
    await raises(Code.SCHEMA_GROUP_NOT_FOUND, registry_store.create_integration("x", "bad"))


async def test_a_store_on_one_connection_joins_its_transaction(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        store = RegistryStore(conn)
        g = await store.create_group("Directory", "_directory")
        await store.create_schema(g.id, "employee", BODY, None)
        await tx.rollback()
    assert await RegistryStore(pool).list_groups() == []


async def test_the_cache_follows_the_generation(registry_store: RegistryStore) -> None:
    cache = RegistryCache(registry_store, 100)
    await cache.refresh(force=True)
    gen = await registry_store.generation()
    g = await registry_store.create_group("Directory", "_directory")
    s = await registry_store.create_schema(g.id, "employee", BODY, None)
    assert await registry_store.generation() > gen
    assert cache.snapshot.by_type == {}
    await cache.refresh()
    table = cache.snapshot.by_type[s.resource_type]
    compiled = cache.snapshot.compiled(table)
    await registry_store.create_group("Other", "_other")
    await cache.refresh()  # the generation moved: a new snapshot, the validator kept
    assert cache.snapshot.compiled(cache.snapshot.by_type[s.resource_type]) is compiled
    await registry_store.update_schema(g.id, "employee", BODY)
    await cache.refresh()
    table = cache.snapshot.by_type[s.resource_type]
    assert table.version == 2 and cache.snapshot.compiled(table) is not compiled


# ---- ResourceStore ------------------------------------------------------------------------

RT = "_directory_employee"


def effect(op: Op, rid: str, v: int) -> Effect:
    if op == "deleted":
        return Effect(op, rid, v)
    return Effect(
        op, rid, v, f"h{v}", rid.upper(), {"employeeId": rid}, {"employeeId": rid, "v": v}
    )


def change(
    ops: list[tuple[Op, str, int]],
    group_key: str = "",
    issues: list[dict[str, Any]] | None = None,
) -> Change:
    """One applied change of ``ops`` (op, id, version) in the employee table."""
    meta = RawMeta(
        new_event_id(),
        "single",
        str(uuid4()),
        "employee",
        RT,
        group_key,
        "hired",
        {"name": "hr-bot"},
        1_700_000_000_000,
    )
    effects = [effect(op, rid, v) for op, rid, v in ops]
    return Change(meta, "applied", effects, issues=issues or [], issues_total=len(issues or []))


async def apply(store: ResourceStore, p: int, changes: list[Change], upto: tuple[int, int]) -> None:
    async with store.projection(p) as tx:
        keys = [
            (c.meta.resource_type, c.meta.group_key, e.resource_id)
            for c in changes
            for e in c.effects
        ]
        prev = await tx.previous(keys)
        await tx.write(build_rows(changes, prev, datetime.now(UTC)), upto)


async def test_projection_writes_and_records_the_position(resource_store: ResourceStore) -> None:
    assert await resource_store.position(1) is None
    async with resource_store.projection(1) as tx:
        assert tx.position == (0, 0)  # first batch of the partition: the row is created
        assert await tx.previous([(RT, "", "a")]) == {}
    assert await resource_store.position(1) == (0, 0)
    first = change([("created", "a", 1), ("created", "b", 1)])
    await apply(resource_store, 1, [first], (5, 0))
    assert await resource_store.position(1) == (5, 0)
    a = await resource_store.get_resource(RT, "", "a")
    assert a is not None
    assert (a.name, a.version, a.content_hash, a.last_event_id) == ("A", 1, "h1", first.meta.id)
    assert a.data == {"employeeId": "a", "v": 1} and a.important_fields == {"employeeId": "a"}
    async with resource_store.projection(1) as tx:
        assert tx.position == (5, 0)
        assert await tx.previous([(RT, "", "a"), (RT, "", "zz")]) == {
            (RT, "", "a"): {"employeeId": "a", "v": 1}
        }
    second = change([("updated", "a", 2), ("deleted", "b", 2)])
    await apply(resource_store, 1, [second], (7, 3))
    assert await resource_store.position(1) == (7, 3)
    assert await resource_store.get_resource(RT, "", "b") is None
    h = await resource_store.history(RT, "", "a")
    assert [(x.version, x.op, x.event_id) for x in h] == [
        (1, "created", first.meta.id),
        (2, "updated", second.meta.id),
    ]
    assert h[1].patch == [{"op": "replace", "path": "/v", "value": 2}]
    assert (h[1].event, h[1].actor, h[1].after) == ("hired", {"name": "hr-bot"}, a.data | {"v": 2})
    gone = await resource_store.history(RT, "", "b")
    assert [(x.op, x.after) for x in gone] == [
        ("created", {"employeeId": "b", "v": 1}),
        ("deleted", None),
    ]
    assert sorted(op["path"] for op in gone[1].patch) == ["/employeeId", "/v"]


async def test_a_batch_inserts_new_keys_and_upserts_known_ones(
    resource_store: ResourceStore,
) -> None:
    """New keys are COPied, known ones upserted: a key created, deleted and created again
    in one batch, one created and updated in it, and one known before it all end right."""
    await apply(resource_store, 3, [change([("created", "known", 1)])], (1, 0))
    batch = change(
        [
            ("created", "again", 1),
            ("deleted", "again", 2),
            ("created", "again", 3),
            ("created", "twice", 1),
            ("updated", "twice", 2),
            ("updated", "known", 2),
            ("created", "gone", 1),
            ("deleted", "gone", 2),
        ]
    )
    await apply(resource_store, 3, [batch], (2, 0))
    for rid, v in (("again", 3), ("twice", 2), ("known", 2)):
        r = await resource_store.get_resource(RT, "", rid)
        assert r is not None and (r.version, r.data, r.last_event_id) == (
            v,
            {"employeeId": rid, "v": v},
            batch.meta.id,
        )
    assert await resource_store.get_resource(RT, "", "gone") is None
    h = await resource_store.history(RT, "", "again")
    assert [(x.version, x.op) for x in h] == [(1, "created"), (2, "deleted"), (3, "created")]


async def test_a_failed_projection_writes_nothing(resource_store: ResourceStore) -> None:
    await apply(resource_store, 2, [change([("created", "a", 1)])], (1, 0))
    with contextlib.suppress(RuntimeError):
        async with resource_store.projection(2) as tx:
            prev = await tx.previous([(RT, "", "a")])
            rows = build_rows([change([("updated", "a", 2)])], prev, datetime.now(UTC))
            await tx.write(rows, (9, 9))
            raise RuntimeError("the batch fails after its writes")
    assert await resource_store.position(2) == (1, 0)
    a = await resource_store.get_resource(RT, "", "a")
    assert a is not None and a.version == 1
    assert len(await resource_store.history(RT, "", "a")) == 1


async def test_a_projection_whose_commit_script_fails_writes_nothing(
    resource_store: ResourceStore,
) -> None:
    # the positions and the COMMIT go in one script at the end of the block: a statement
    # of it that fails skips the COMMIT, and the next projection starts clean
    await apply(resource_store, 3, [change([("created", "a", 1)])], (1, 0))
    with pytest.raises(asyncpg.DataError):
        async with resource_store.projection(3) as tx:
            prev = await tx.previous([(RT, "", "a")])
            rows = build_rows([change([("updated", "a", 2)])], prev, datetime.now(UTC))
            await tx.write(rows, (9, 9))
            tx.ending += "SELECT 1 / 0;"  # refused after the position update ran
    assert await resource_store.position(3) == (1, 0)
    a = await resource_store.get_resource(RT, "", "a")
    assert a is not None and a.version == 1
    await apply(resource_store, 3, [change([("updated", "a", 2)])], (2, 0))
    assert await resource_store.position(3) == (2, 0)
    assert [h.version for h in await resource_store.history(RT, "", "a")] == [1, 2]


async def test_receipts_and_sync_issues(resource_store: ResourceStore) -> None:
    issue = {
        "code": "unknown_field",
        "message": "no such field",
        "pointer": "/x",
        "resourceId": "a",
        "index": 0,
    }
    ch = change([("created", "a", 1)], group_key="acme", issues=[issue])
    await apply(resource_store, 0, [ch], (1, 0))
    r = await resource_store.receipt(ch.meta.id)
    assert r is not None
    assert (r.event_id, r.integration_id, r.status, r.kind) == (
        ch.meta.id,
        ch.meta.integration,
        "applied",
        "single",
    )
    assert (r.table, r.group_key, r.created, r.updated, r.deleted) == ("employee", "acme", 1, 0, 0)
    assert (r.unchanged, r.rejected, r.ignored, r.issues_total) == (0, 0, [], 1)
    assert r.issues == [issue]
    assert r.received_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert await resource_store.receipt("ev_unknown") is None
    [i] = await resource_store.sync_issues()
    assert (i.event_id, i.integration_id, i.table, i.resource_type, i.group_key) == (
        ch.meta.id,
        ch.meta.integration,
        "employee",
        RT,
        "acme",
    )
    assert (i.resource_id, i.index, i.code, i.message, i.pointer) == (
        "a",
        0,
        "unknown_field",
        "no such field",
        "/x",
    )
    integration = UUID(ch.meta.integration)
    assert await resource_store.sync_issues(table="employee", integration=integration) == [i]
    assert await resource_store.sync_issues(table="other") == []
    assert await resource_store.sync_issues(integration=uuid4()) == []
    assert await resource_store.sync_issues(since=i.created_at + timedelta(seconds=1)) == []
    await apply(resource_store, 0, [change([], issues=[issue])], (2, 0))
    newest = await resource_store.sync_issues(limit=1)
    assert len(newest) == 1 and newest[0].id > i.id


async def test_list_resources_pages_by_id(resource_store: ResourceStore) -> None:
    ids = [f"e{i:02d}" for i in range(7)]
    await apply(resource_store, 0, [change([("created", x, 1) for x in ids])], (1, 0))
    await apply(resource_store, 0, [change([("created", "other", 1)], group_key="g")], (2, 0))
    seen: list[str] = []
    after = None
    while True:
        page = await resource_store.list_resources(RT, "", after, 3)
        seen += [r.resource_id for r in page.items]
        if not page.more:
            break
        after = page.items[-1].resource_id
    assert seen == ids
    exact = await resource_store.list_resources(RT, "", "e03", 3)
    assert [r.resource_id for r in exact.items] == ["e04", "e05", "e06"] and not exact.more
    assert (await resource_store.list_resources("_nope", "", None, 10)).items == []


async def test_scope_rows_is_one_snapshot_of_live_and_deleted(
    resource_store: ResourceStore,
) -> None:
    await apply(resource_store, 3, [change([("created", "a", 1), ("created", "b", 1)])], (1, 0))
    await apply(resource_store, 3, [change([("updated", "a", 2), ("deleted", "b", 2)])], (2, 0))
    await apply(resource_store, 3, [change([("created", "c", 1)], group_key="g")], (3, 0))
    rows = [r async for r in resource_store.scope_rows(RT, "")]
    assert rows == [("a", "h2", 2), ("b", "", 2)]
    assert [r async for r in resource_store.scope_rows(RT, "g")] == [("c", "h1", 1)]
    assert [r async for r in resource_store.scope_rows("_nope", "")] == []
    # one snapshot from the first row on: "a" deleted meanwhile is neither gone from the
    # live rows nor seen a second time among the deleted ones
    it = resource_store.scope_rows(RT, "")
    async with contextlib.aclosing(it):
        first = await anext(it)
        await apply(resource_store, 3, [change([("deleted", "a", 3)])], (4, 0))
        rest = [r async for r in it]
    assert [first, *rest] == rows
    assert [r async for r in resource_store.scope_rows(RT, "")] == [("a", "", 3), ("b", "", 2)]
