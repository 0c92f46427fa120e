"""`ingestd sources list|run|runs` as a user runs them: against `ingestd dev` (embedded
servers, its own sources stage) and the demo API as a process, with the admin token
`ingestd dev` saved in the data dir.

A run with `--follow` prints its progress and, once the pipeline has applied what it
read, the final counts, and exits 0; a run the remote API refuses (an unknown Mailchimp
list: 404) exits 1 and prints the error code, and never the API key; `runs` lists the
runs newest first; on a terminal the progress line is live (rich); `preview` prints the
first page's preview (the key masked) and records no run, and exits 1 on a 502.
`ingestd sources` without the secret key stops at once with exit code 2.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.demo_api import API_KEY, LIST_ID, member_id
from tests.e2e.demoproc import DemoProc, demo_api
from tests.e2e.devproc import READY, TOKEN, Dev, data_folder, running_dev, stop_cleanly
from tests.e2e.procs import INGESTD, unconfigured_env
from tests.sources_helpers import MEMBER_SCHEMA, mailchimp_members

pytestmark = pytest.mark.slow  # `ingestd dev` and the demo API as processes

MEMBERS = 120  # two pages of the seed's count=100
PROGRESS = re.compile(
    r"succeeded  requests 2  pages 2  records 120  [\d,]+ rec/s  [\d,.]+ s"
)  # fmt: skip
RUN_ID = re.compile(r"run_[0-9a-f]{24}")


@dataclass
class Env:
    dev: Dev
    token: str
    demo: DemoProc

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.dev.call(method, path, self.token, body)


def cli(env: Env, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """``ingestd sources …`` from a user's shell beside `make run` (no token given: the
    one in the data dir)."""
    return subprocess.run(
        [INGESTD, "sources", *args],
        env={
            **unconfigured_env(),
            "INGESTD_DATA_DIR": str(env.dev.data_dir),
            "INGESTD_HTTP_PORT": str(env.dev.port),
            **extra,
        },
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("sources-cli")
    with (
        data_folder() as data_dir,
        running_dev(tmp, data_dir) as dev,
        demo_api(tmp, "--members", str(MEMBERS)) as demo,
    ):
        token = dev.wait_for(TOKEN)
        dev.wait_for(READY)
        e = Env(dev, token, demo)
        group = e.call("POST", "/admin/v1/schema-groups", {"name": "mc", "prefix": "_mc"})
        e.call("POST", f"/admin/v1/schema-groups/{group['id']}/schemas",
               {"table": "member", "schema": MEMBER_SCHEMA})  # fmt: skip
        integration = e.call("POST", "/admin/v1/integrations",
                             {"name": "Mailchimp", "schemaGroup": group["id"]})  # fmt: skip
        spec = {"name": "mailchimp-members", "sourceSpec": mailchimp_members(demo.url)}
        e.call("POST", "/admin/v1/source-specs", spec)
        for name, list_id in (("members", LIST_ID), ("lost-list", "0000000000")):
            e.call("POST", "/admin/v1/sources", {
                "name": name, "sourceSpec": "mailchimp-members", "table": "member",
                "params": {"listId": list_id, "apiKey": API_KEY},
                "integration": integration["id"], "mode": "full",
            })  # fmt: skip
        yield e
        stop_cleanly(dev)


def test_list_shows_the_sources(env: Env) -> None:
    done = cli(env, "list")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows == [
        ["name", "mode", "table", "groupKey", "schedule", "paused"],
        ["lost-list", "full", "member", "-"],
        ["members", "full", "member", "-"],
    ], done.stdout


def resource_ids(env: Env) -> set[str]:
    answer = env.call("GET", "/api/v1/resources/_mc_member?limit=1000")
    return {r["id"] for r in answer["items"]}


def test_run_follow_prints_progress_and_the_final_counts(env: Env) -> None:
    done = cli(env, "run", "members", "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert re.fullmatch(rf"members: run {RUN_ID.pattern}", lines[0]), lines
    assert PROGRESS.fullmatch(lines[1]), lines
    # final: the pipeline applied the snapshot before the counts were printed
    assert lines[2] == "succeeded: created 120, updated 0, deleted 0, unchanged 0, rejected 0"
    assert member_id("member00042@example.com") in resource_ids(env)
    assert len(resource_ids(env)) == MEMBERS

    again = cli(env, "run", "members", "--follow", "--backfill")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[2] == (
        "succeeded: created 0, updated 0, deleted 0, unchanged 120, rejected 0"
    )


def test_a_failed_run_exits_non_zero_and_prints_its_error_code(env: Env) -> None:
    before = resource_ids(env)
    done = cli(env, "run", "lost-list", "--follow")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"failed     requests 1  pages 0  records 0  0 rec/s  [\d.]+ s", lines[1])
    assert lines[2] == "failed: created 0, updated 0, deleted 0, unchanged 0, rejected 0"
    assert lines[3].startswith("error source_http_error: HTTP 404 from GET "), lines
    assert "Resource Not Found" in done.stdout  # the first bytes of the API's answer
    assert API_KEY not in done.stdout + done.stderr
    assert resource_ids(env) == before  # the failed snapshot deleted nothing

    runs = cli(env, "runs", "lost-list")
    assert runs.returncode == 0, runs.stderr
    [header, row] = [line.split() for line in runs.stdout.splitlines()]
    assert header[-1] == "error" and row[-1] == "source_http_error", runs.stdout
    assert row[1:6] == ["backfill", "failed", "1", "0", "0"], runs.stdout


def test_runs_lists_the_runs_newest_first(env: Env) -> None:
    started = cli(env, "run", "members")  # no --follow: prints the run id and returns
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    assert RUN_ID.fullmatch(run_id), started.stdout
    deadline = time.monotonic() + 60
    while env.call("GET", f"/admin/v1/sources/members/runs/{run_id}")["status"] != "succeeded":
        assert time.monotonic() < deadline, env.dev.log()
        time.sleep(0.1)
    done = cli(env, "runs", "members")
    assert done.returncode == 0, done.stderr
    header, *rows = [line.split() for line in done.stdout.splitlines()]
    assert header == ["run", "kind", "status", "requests", "pages", "records", "created",
                      "updated", "deleted", "started", "error"]  # fmt: skip
    assert rows[0][0] == run_id, done.stdout
    answer = env.call("GET", "/admin/v1/sources/members/runs")
    assert [r[0] for r in rows] == [r["runId"] for r in answer["items"]]
    for r in rows:  # every run of the 120 members reads them in two pages
        assert r[1:6] == ["backfill", "succeeded", "2", "2", "120"], done.stdout


def test_on_a_terminal_the_progress_line_is_live(env: Env) -> None:
    """Run under a pseudo-terminal: rich redraws the line in place (cursor controls)."""
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [INGESTD, "sources", "run", "members", "--follow"],
        env={
            **unconfigured_env(),
            "INGESTD_DATA_DIR": str(env.dev.data_dir),
            "INGESTD_HTTP_PORT": str(env.dev.port),
            "TERM": "xterm",
            "COLUMNS": "120",
        },
        stdin=child, stdout=child, stderr=child, close_fds=True,
    )  # fmt: skip
    os.close(child)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([parent], [], [], 1)
        if ready:
            try:
                chunk = os.read(parent, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(parent)
    assert proc.wait(10) == 0, out
    text = out.decode(errors="replace")
    assert "\x1b[" in text, text  # drawn as a live display, not printed once
    assert "requests 2  pages 2  records 120" in text, text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # rich highlights the numbers
    assert re.search(r"succeeded: created \d+, updated 0, deleted 0, unchanged \d+", plain), text


def test_the_sources_stage_needs_the_secret_key(tmp_path: Path) -> None:
    done = subprocess.run(
        [INGESTD, "sources"],
        env={
            **unconfigured_env(),
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
            "REDIS_URL": "redis://127.0.0.1:1/0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == (
        "configuration error: INGESTD_SECRET_KEY must be set for the sources stage (see README)\n"
    )


def test_preview_prints_the_first_page_as_json_and_ingests_nothing(env: Env) -> None:
    runs_before = env.call("GET", "/admin/v1/sources/members/runs")["items"]
    done = cli(env, "preview", "members")
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["request"]["headers"]["Authorization"] == "Bearer ******"
    assert API_KEY not in done.stdout + done.stderr
    assert "count=100" in answer["request"]["url"] and "offset=0" in answer["request"]["url"]
    assert answer["count"] == 100 and answer["invalid"] == 0
    assert answer["records"][0]["issues"] == [] and "member" in answer["records"][0]["record"]
    assert "offset=100" in answer["next"]["url"]  # the second page of the 120 members
    assert env.call("GET", "/admin/v1/sources/members/runs")["items"] == runs_before

    failed = cli(env, "preview", "lost-list")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "HTTP 502 source_http_error: HTTP 404 from GET" in failed.stderr, failed.stderr
    assert API_KEY not in failed.stdout + failed.stderr
