"""The README's walkthrough, bulk and XML examples and SQL, run as a new user runs them.

`ingestd dev` with embedded servers (a data folder of this module's own) is started
once; `examples/walkthrough.sh` runs twice (executed, then sourced in the shell that
then runs the README's bulk and XML examples with the variables it set); every output
is compared with what the README shows. Then every SQL example of the README runs on
the data they left, through asyncpg (each returns rows; the point-in-time one returns
the state `resources` holds, and at an earlier moment the state of then) and through
`ingestd psql`, with `ingestd dev` running and after it stopped.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
import pytest

from tests.e2e.devproc import PG_AT, READY, Dev, data_folder, running_dev, stop_cleanly
from tests.e2e.procs import INGESTD, unconfigured_env
from tests.e2e.readme import ROOT, block, blocks, output_matches
from tests.helpers import poll

pytestmark = pytest.mark.slow  # `ingestd dev` as a process, the scripts take seconds

SCRIPT = ROOT / "examples" / "walkthrough.sh"
MARK = "--- examples ---"
PRODUCERS = "--- producer examples ---"
IDEM = "--- idempotency example ---"
RT = "_directory_employee"


def statements(sql: str) -> list[str]:
    """The statements of a README SQL block (each ends with `;` at the end of a line, a
    comment possibly after it)."""
    out, current = [], []
    for line in sql.splitlines():
        code = line.split("--", 1)[0].rstrip()
        if code:
            current.append(code)
        if code.endswith(";"):
            out.append("\n".join(current))
            current = []
    assert not current, current
    return out


def shell(dev: Dev, script: str) -> str:
    """``script`` run by bash in the checkout, as the user's shell with `make run` going."""
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env={
            **unconfigured_env(),
            "INGESTD_DATA_DIR": str(dev.data_dir),
            "INGESTD_HTTP_PORT": str(dev.port),
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0 and not done.stderr, done.stdout + done.stderr
    return done.stdout


@dataclass
class Walked:
    dev: Dev
    dsn: str
    first: str
    second: str
    examples: str
    batch: str
    idempotency: str


async def until_processed(dsn: str, group_keys: dict[str, int]) -> None:
    """Until the bulk events sent for each groupKey have their receipts in PostgreSQL."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = dict(
                await conn.fetch(
                    "SELECT group_key, count(*) FROM ingest_events WHERE kind = 'bulk' GROUP BY 1"
                )
            )
            if all(got.get(g, 0) >= n for g, n in group_keys.items()):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"bulk receipts missing: {got}")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walked]:
    tmp = tmp_path_factory.mktemp("walkthrough")
    with data_folder() as data_dir, running_dev(tmp, data_dir) as dev:
        dev.wait_for(READY)
        dsn = dev.wait_for(PG_AT)
        first = shell(dev, "bash examples/walkthrough.sh")
        bulk = block("sh", containing="bulk-event/employee?groupKey=acme&event=sync")
        xml = block("sh", containing="application/xml")
        batch = block("sh", containing="batch-event/employee?groupKey=acme-batch")
        idem = block("sh", containing="Idempotency-Key: order-4711")
        second = shell(
            dev,
            f". examples/walkthrough.sh || exit 1\necho '{MARK}'\n{bulk}\necho\n{xml}\n"
            f"echo\necho '{PRODUCERS}'\n{batch}echo '{IDEM}'\n{idem}",
        )
        walkthrough, rest = second.split(MARK + "\n")
        examples, producers = rest.split(PRODUCERS + "\n")
        batched, idempotency = producers.split(IDEM + "\n")
        yield Walked(dev, dsn, first, walkthrough, examples, batched, idempotency)
        stop_cleanly(dev)


def test_the_readme_shows_the_script() -> None:
    assert block("sh", before="This is `examples/walkthrough.sh`:") == SCRIPT.read_text()
    assert block("sh", before="run the walkthrough from the checkout") == (
        ". examples/walkthrough.sh\n"
    )


def test_the_walkthrough_runs_twice_and_prints_what_the_readme_shows(walked: Walked) -> None:
    output_matches(block("text", before="The first run prints"), walked.first)
    output_matches(block("text", before="A second run finds"), walked.second)


async def test_the_bulk_and_xml_examples(walked: Walked) -> None:
    assert walked.examples.count('{"eventId":') == 2, walked.examples
    assert walked.examples.count("<eventId>") == 1, walked.examples
    await until_processed(walked.dsn, {"acme": 2, "acme-xml": 1})
    conn = await asyncpg.connect(walked.dsn)
    try:
        counts = await conn.fetch(
            "SELECT group_key, created, updated, deleted, unchanged FROM ingest_events"
            " WHERE kind = 'bulk' ORDER BY received_at"
        )
        # the README: the second snapshot creates d, updates b, leaves a, deletes c
        assert [tuple(r) for r in counts] == [
            ("acme", 3, 0, 0, 0),
            ("acme", 1, 1, 1, 1),
            ("acme-xml", 1, 0, 0, 0),
        ]
        live = await conn.fetch(
            "SELECT group_key, resource_id FROM resources WHERE resource_type = $1"
            " AND group_key IN ('acme', 'acme-xml') ORDER BY 1, 2",
            RT,
        )  # the XML snapshot, in a groupKey of its own, deleted nothing in acme
        assert [tuple(r) for r in live] == [
            ("acme", "a"),
            ("acme", "b"),
            ("acme", "d"),
            ("acme-xml", "a"),
        ]
    finally:
        await conn.close()


async def test_the_batch_and_idempotency_examples(walked: Walked) -> None:
    output_matches(block("text", before="prints (with the walkthrough's"), walked.batch)
    output_matches(block("text", before="prints the same event id twice"), walked.idempotency)
    first, again, _ = walked.idempotency.splitlines()
    assert first == again  # the retry answered the first event's id
    conn = await asyncpg.connect(walked.dsn)
    try:
        sql = "SELECT event_id, idempotency_key FROM ingest_events WHERE group_key = 'acme-idem'"
        rows = await poll("the keyed event's receipt", lambda: conn.fetch(sql), 30)
        assert [tuple(r) for r in rows] == [(first, "order-4711")]  # one event for the key
        versions = await conn.fetch(
            "SELECT resource_id, version, op FROM resource_changes"
            " WHERE group_key = 'acme-batch' ORDER BY resource_id, version"
        )
        assert [tuple(r) for r in versions] == [("b1", 1, "created"), ("b1", 2, "updated")]
    finally:
        await conn.close()


async def test_every_sql_example_runs_on_the_walkthroughs_data(walked: Walked) -> None:
    await until_processed(walked.dsn, {"acme": 2, "acme-xml": 1})
    every = [s for b in blocks("sql") for s in statements(b[1])]
    # the integration-data examples run here too, on no data of theirs (the walkthrough
    # writes none): tests/integration/test_integration_data_access.py gives them rows
    vendors = [s for s in every if "integration_data" in s]
    sql = [s for s in every if s not in vendors]
    assert (len(sql), len(vendors)) == (6, 2)
    conn = await asyncpg.connect(walked.dsn)
    try:
        for statement in vendors:
            await conn.fetch(statement)
        for statement in sql:
            assert await conn.fetch(statement), statement  # every one returns rows
        [fold] = [s for s in sql if "DISTINCT ON" in s]
        state = await conn.fetch(fold)
        current = await conn.fetch(
            "SELECT group_key, resource_id, version, data FROM resources"
            " WHERE resource_type = $1 ORDER BY group_key, resource_id",
            RT,
        )
        assert [tuple(r) for r in state] == [tuple(r) for r in current]
        # at an earlier moment: when e1 came back in the second run (version 4), it alone
        # was live; e1 of acme, not another groupKey's e1 folded into it
        then = await conn.fetchval(
            "SELECT applied_at FROM resource_changes WHERE resource_type = $1"
            " AND group_key = 'acme' AND resource_id = 'e1' AND version = 4",
            RT,
        )
        assert fold.count("now()") == 1
        earlier = await conn.fetch(fold.replace("now()", "$1::timestamptz"), then)
        assert [(r[0], r[1], r[2]) for r in earlier] == [("acme", "e1", 4)]
    finally:
        await conn.close()


def psql(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INGESTD, "psql", *args],
        env={**unconfigured_env(), "INGESTD_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_ingestd_psql_runs_the_readme_sql(walked: Walked, tmp_path: Path) -> None:
    await until_processed(walked.dsn, {"acme": 2, "acme-xml": 1})
    queries = tmp_path / "queries.sql"
    queries.write_text("\n".join(c for _, c in blocks("sql")))
    done = psql(walked.dev.data_dir, "-v", "ON_ERROR_STOP=1", "-f", str(queries))
    assert done.returncode == 0, done.stderr
    assert "acme-xml" in done.stdout and "unknown_field" in done.stdout, done.stdout
    done = psql(walked.dev.data_dir, "-At", "-c", "SELECT count(*) FROM resources")
    # a, b, d of acme, a of acme-xml, and b1 and i1 of the batch and Idempotency-Key examples
    assert (done.returncode, done.stdout) == (0, "6\n"), done.stderr


def test_ingestd_psql_starts_the_embedded_database_when_dev_is_stopped(
    tmp_path: Path, data_dir: Path
) -> None:
    with running_dev(tmp_path, data_dir) as dev:
        dev.wait_for(READY)
        stop_cleanly(dev)
    done = psql(data_dir, "-At", "-c", "SELECT count(*) FROM schema_migrations")
    assert done.returncode == 0 and int(done.stdout) >= 1, done.stderr
    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(data_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert not left, left  # started for the session, stopped after it
