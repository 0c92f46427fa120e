"""``ingestd sources list|run|runs|preview``: the admin API of pull sources from a terminal.

The commands are clients of the gateway (``INGESTD_URL``, default the local gateway
of ``INGESTD_HTTP_HOST``/``INGESTD_HTTP_PORT``) with the admin token
(``INGESTD_ADMIN_TOKEN``, or the one ``ingestd dev`` saved in the data dir), so they
work the same against ``make run`` and a deployment. ``run --follow`` shows a live
progress line (rich) until the run has ended and the pipeline has applied what it sent
(so the counts it prints are final), and exits 1 when the run does not succeed.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shared.config import Settings
from shared.errors import ConfigError

FINAL = ("succeeded", "failed", "cancelled")
APPLY_WAIT_S = 120.0
PIPED_WIDTH = 200


class Api:
    def __init__(self, settings: Settings) -> None:
        self.base = settings.gateway_url().rstrip("/")
        token = settings.admin_token
        if not token:
            path = settings.data_dir / "admin-token"
            if not path.exists():
                raise ConfigError(
                    "INGESTD_ADMIN_TOKEN is not set and no admin-token file is in "
                    f"{settings.data_dir} (start `ingestd dev` once, or set the token)"
                )
            token = path.read_text().strip()
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            try:
                err = json.loads(detail)
                detail = f"{err.get('code')}: {err.get('message')}"
            except ValueError:
                pass
            raise click.ClickException(f"{method} {path}: HTTP {e.code} {detail}") from None
        except OSError as e:
            raise click.ClickException(f"cannot reach the gateway at {self.base}: {e}") from None
        return json.loads(raw) if raw else None

    def source(self, name: str) -> str:
        return f"/admin/v1/sources/{quote(name, safe='')}"


def console() -> Console:
    """A terminal's console, or (output piped or captured) one whose lines are never cut
    or wrapped at 80 columns, so ids and times stay whole for grep and scripts."""
    out = Console()
    return out if out.is_terminal else Console(width=PIPED_WIDTH)


def _line(run: dict[str, Any], ran: float, elapsed: float) -> Text:
    """The progress line: ``ran`` is how long the run itself took (0 while it runs),
    ``elapsed`` the whole wait (the pipeline applying what it sent included)."""
    took = ran or elapsed
    rate = run.get("records", 0) / took if took > 0 else 0.0
    status = run["status"]
    if status == "succeeded" and run.get("pending", 0):
        status = "applying"  # the run has ended; the pipeline is applying what it sent
    return Text(
        f"{status:<9}  requests {run.get('requests', 0):,}  pages {run.get('pages', 0):,}  "
        f"records {run.get('records', 0):,}  {rate:,.0f} rec/s  {elapsed:,.1f} s"
    )


def _following(run: dict[str, Any], applied_by: float | None) -> bool:
    """Still running, or succeeded with events the pipeline has yet to apply (their
    counts are not final until it has), for at most APPLY_WAIT_S after the run ended."""
    if run["status"] not in FINAL:
        return True
    if run["status"] != "succeeded" or not run.get("pending", 0):
        return False
    return applied_by is None or time.monotonic() < applied_by


def follow(api: Api, name: str, run_id: str, out: Console) -> dict[str, Any]:
    """Polls the run until it has ended and its events are applied: a live progress line
    on a terminal, its last state alone otherwise."""
    path = f"{api.source(name)}/runs/{quote(run_id, safe='')}"
    started = time.monotonic()
    ran = 0.0
    applied_by: float | None = None
    run: dict[str, Any] = api.call("GET", path)
    live = Live(_line(run, 0, 0), console=out, refresh_per_second=4) if out.is_terminal else None
    with live if live is not None else contextlib.nullcontext():
        while _following(run, applied_by):
            time.sleep(0.25)
            run = api.call("GET", path)
            now = time.monotonic()
            if applied_by is None and run["status"] in FINAL:
                applied_by = now + APPLY_WAIT_S
                ran = now - started
            if live is not None:
                live.update(_line(run, ran, now - started))
    if live is None:
        out.print(_line(run, ran, time.monotonic() - started))
    return run


def _when(at: str | None) -> str:
    if not at:
        return "-"
    return datetime.fromisoformat(at).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.command("list")
def list_sources() -> None:
    """Every source, with its mode, schedule and last run."""
    api = Api(Settings.from_env())
    table = Table(
        "name", "mode", "table", "groupKey", "schedule", "paused", box=None, pad_edge=False
    )
    for s in api.call("GET", "/admin/v1/sources")["items"]:
        sched = s.get("schedule") or {}
        table.add_row(
            s["name"], s["mode"], s["table"], s.get("groupKey", ""),
            sched.get("every") or sched.get("cron") or "-", "yes" if s.get("paused") else "",
        )  # fmt: skip
    console().print(table)


@click.command("run")
@click.argument("name")
@click.option("--backfill", is_flag=True, help="a backfill run (no window start)")
@click.option("--follow", "follow_", is_flag=True, help="show progress until the run ends")
def run_source(name: str, backfill: bool, follow_: bool) -> None:
    """Start a run of NAME now."""
    api = Api(Settings.from_env())
    body = {"kind": "backfill"} if backfill else {}
    run_id = api.call("POST", f"{api.source(name)}/runs", body)["runId"]
    out = console()
    if not follow_:
        out.print(run_id)
        return
    out.print(f"{name}: run {run_id}")
    run = follow(api, name, run_id, out)
    counts = ", ".join(f"{k} {run.get(k, 0):,}" for k in
                       ("created", "updated", "deleted", "unchanged", "rejected"))  # fmt: skip
    notes = " (truncated)" if run.get("truncated") else ""
    if run.get("pending"):
        notes += f" ({run['pending']:,} events not applied yet: counts so far)"
    out.print(f"{run['status']}: {counts}{notes}")
    if run.get("error"):
        out.print(f"error {run['error']['code']}: {run['error']['message']}")
    if run["status"] != "succeeded":
        sys.exit(1)


@click.command("runs")
@click.argument("name")
def list_runs(name: str) -> None:
    """NAME's runs, newest first."""
    api = Api(Settings.from_env())
    table = Table("run", "kind", "status", "requests", "pages", "records", "created",
                  "updated", "deleted", "started", "error", box=None, pad_edge=False)  # fmt: skip
    for r in api.call("GET", f"{api.source(name)}/runs")["items"]:
        err = r.get("error") or {}
        counts = [f"{r.get(k, 0):,}" for k in
                  ("requests", "pages", "records", "created", "updated", "deleted")]  # fmt: skip
        table.add_row(r["runId"], r["kind"], r["status"], *counts, _when(r.get("startedAt")),
                      err.get("code", ""))  # fmt: skip
    console().print(table)


@click.command("preview")
@click.argument("name")
def preview(name: str) -> None:
    """Fetch NAME's first page and show the records it yields (ingests nothing)."""
    api = Api(Settings.from_env())
    out = api.call("POST", f"{api.source(name)}/preview", {})
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


COMMANDS = (list_sources, run_source, list_runs, preview)
