"""``ingestd rebuild [--verify] [--resource-type T]``: ``resources`` from its history.

Folds ``resource_changes`` into a scratch table and compares it with ``resources`` row by
row (:mod:`shared.pg.rebuild` holds the statements and the locking). ``--verify``
reports the differences (counts, the first ids of each kind) and exits 1 if there are
any; without it the folded rows replace those that differ, with projection paused for
the run, and the run ends by verifying again. A progress line per step shows what it
did and how long it took.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from rich.console import Console

from shared.config import Settings
from shared.embedded import EmbeddedPostgres
from shared.errors import ConfigError
from shared.pg.migrate import require_migrated
from shared.pg.pool import create_pool
from shared.pg.rebuild import Differences, RebuildRun, RebuildStore

T = TypeVar("T")
PIPED_WIDTH = 200
KINDS = {
    "missing": "in history, not in resources",
    "extra": "in resources, not in history",
    "different": "differ from their history",
}


def _console() -> Console:
    out = Console()
    return out if out.is_terminal else Console(width=PIPED_WIDTH)


async def _step(out: Console, what: str, work: Awaitable[T], say: Callable[[T], str]) -> T:
    """Run one step under a spinner, then print its line: what, result, time taken."""
    t0 = time.perf_counter()
    with out.status(f"{what} …"):
        result = await work
    out.print(f"{what}: {say(result)} ({time.perf_counter() - t0:.1f} s)", highlight=False)
    return result


def report(out: Console, diff: Differences) -> None:
    for kind, n in sorted(diff.counts.items()):
        ids = ", ".join(f"{rt}/{gk}/{rid}" if gk else f"{rt}/{rid}"
                        for rt, gk, rid in diff.first.get(kind, []))  # fmt: skip
        more = " …" if n > len(diff.first.get(kind, [])) else ""
        out.print(f"  {n:,} resource(s) {KINDS[kind]}: {ids}{more}", highlight=False)


async def _pass(run: RebuildRun, out: Console, show: int) -> Differences:
    await _step(out, "reading history", run.changes(), lambda n: f"{n:,} change(s)")
    _, unverifiable = await _step(
        out, "folding", run.fold(), lambda r: f"{r[0]:,} live resource(s)"
    )
    if unverifiable:
        out.print(f"  {unverifiable:,} resource(s) have no content hash in their history "
                  "(written before migration 0011): left as stored", highlight=False)  # fmt: skip
    diff = await _step(
        out, "comparing with resources", run.compare(show), lambda d: f"{d.total:,} difference(s)"
    )
    report(out, diff)
    return diff


async def rebuild(
    settings: Settings, verify: bool, resource_type: str | None, show: int = 10
) -> int:
    """The command's work; its exit code (1: ``--verify`` found differences)."""
    out = _console()
    pg: EmbeddedPostgres | None = None
    dsn = settings.database_url
    if not dsn:
        folder = settings.data_dir / "postgres"
        if not (folder / "PG_VERSION").exists():
            raise ConfigError(f"no embedded database in {folder.resolve()}: set DATABASE_URL")
        pg = EmbeddedPostgres(folder)
        dsn = pg.start()
    pool = await create_pool(dsn, max_size=2)
    try:
        await require_migrated(pool)
        store = RebuildStore(pool)
        async with store.run(resource_type, verify=True) as run:
            diff = await _pass(run, out, show)
        if verify or not diff.total:
            out.print("no differences" if not diff.total else "differences found",
                      highlight=False)  # fmt: skip
            return 1 if diff.total else 0
        async with store.run(resource_type, verify=False) as run:
            out.print("projection paused; rebuilding", highlight=False)
            await _pass(run, out, show)
            await _step(
                out, "swapping", run.swap(), lambda r: f"{r[0]:,} deleted, {r[1]:,} written"
            )
        out.print("rebuilt; projection resumed; verifying", highlight=False)
        async with store.run(resource_type, verify=True) as run:
            diff = await _pass(run, out, show)
        return 1 if diff.total else 0
    finally:
        await pool.close()
        if pg is not None:
            pg.stop()
