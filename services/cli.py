"""The ``ingestd`` command: dev, gateway, worker, projector, migrate."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from shared.config import Settings
from shared.errors import ConfigError, TransientError


def _setup_logging(level: str) -> None:
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("arq").setLevel(logging.WARNING)
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
    from services.gateway.app import run

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
@click.option("--workers", default=1, show_default=True, help="worker processes to start")
def dev(workers: int) -> None:
    """Everything on one machine; embedded PostgreSQL/Redis when none is configured."""
    from services.dev import run_dev

    sys.exit(run_dev(_settings(), workers))


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
