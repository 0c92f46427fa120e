"""The ``ingestd`` command: dev, gateway, worker, projector, sources, notifier, migrate,
psql, rebuild."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from shared.config import Settings
from shared.errors import ConfigError, TransientError

ARQ_MAX_TRIES_MSG = "%6.2fs ! %s max retries %d exceeded"


class DropPreviousDrains(logging.Filter):
    """Drop arq's "drain:… max retries 1 exceeded" warnings. A stopped worker leaves the
    drain job it was running for each partition in arq's queue (arq cancels it to be "run
    again"); a drain is never retried (max_tries=1), so the next worker to pick such a job
    only drops it with this warning, while the kick cron starts a fresh drain for every
    partition nobody holds. Nothing is lost: the events are in the partition streams, not
    in arq's jobs. Every other arq warning (any other job or message) passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != ARQ_MAX_TRIES_MSG or not isinstance(record.args, tuple):
            return True
        return not (len(record.args) == 3 and str(record.args[1]).endswith(":drain"))


def _setup_logging(level: str) -> None:
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("arq").setLevel(logging.WARNING)
    arq_worker = logging.getLogger("arq.worker")
    if not any(isinstance(f, DropPreviousDrains) for f in arq_worker.filters):
        arq_worker.addFilter(DropPreviousDrains())
    logging.basicConfig(
        level=level,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s",
    )


def _settings() -> Settings:
    s = Settings.from_env()
    _setup_logging(s.log_level)
    return s


@click.group()
def main() -> None:
    """ingestd: custom-data integration service."""


@main.command()
def migrate() -> None:
    """Apply pending database migrations."""
    from shared.pg.migrate import migrate as run_migrations

    s = _settings()
    dsn, _ = s.require_servers()
    applied = asyncio.run(run_migrations(dsn))
    click.echo(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


@main.command()
def gateway() -> None:
    """Run the HTTP gateway (ingest, admin and read APIs)."""
    from services.gateway.server import run

    run(_settings())


@main.command()
def worker() -> None:
    """Run an arq worker draining ingest partitions."""
    from services.worker.main import run

    run(_settings())


@main.command()
def projector() -> None:
    """Run the projector writing state and history to PostgreSQL."""
    from services.projector.main import serve

    asyncio.run(serve(_settings()))


@main.command()
def notifier() -> None:
    """Run the notifier delivering signed webhooks from the change feed."""
    from services.notifier.main import serve

    asyncio.run(serve(_settings()))


@main.group(invoke_without_command=True)
@click.pass_context
def sources(ctx: click.Context) -> None:
    """Run the sources stage (no subcommand), or manage pull sources (list, run, runs,
    preview: clients of the gateway's admin API)."""
    if ctx.invoked_subcommand is None:
        from services.sources.main import serve

        asyncio.run(serve(_settings()))


def _add_source_commands() -> None:
    from services.sources.client import COMMANDS

    for command in COMMANDS:
        sources.add_command(command)


_add_source_commands()


@main.command()
@click.option("--workers", default=1, show_default=True, help="worker processes to start")
def dev(workers: int) -> None:
    """Everything on one machine; embedded PostgreSQL/Redis when none is configured."""
    from services.dev import run_dev

    sys.exit(run_dev(_settings(), workers))


@main.command()
@click.option("--verify", is_flag=True, help="only report differences (exit 1 if any)")
@click.option("--resource-type", default=None, help="only this resource type")
@click.option("--show", default=10, show_default=True, help="ids listed per kind of difference")
def rebuild(verify: bool, resource_type: str | None, show: int) -> None:
    """Rebuild `resources` by folding `resource_changes` (or, --verify, compare them)."""
    from services.rebuild import rebuild as run_rebuild

    sys.exit(asyncio.run(run_rebuild(_settings(), verify, resource_type, show)))


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def psql(psql_args: tuple[str, ...]) -> None:
    """A psql shell on the configured database: DATABASE_URL, or else the embedded
    PostgreSQL of INGESTD_DATA_DIR (the running one, or started for the session).
    Further arguments go to psql, e.g. `ingestd psql -c 'SELECT 1'`."""
    from services.dev import run_psql

    sys.exit(run_psql(_settings(), list(psql_args)))


def entry() -> None:
    try:
        main()
    except ConfigError as e:
        click.echo(f"configuration error: {e}", err=True)
        sys.exit(2)
    except TransientError as e:
        click.echo(f"cannot start: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    entry()
