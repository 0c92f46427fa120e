"""One log line when a server becomes unreachable and one when it answers again.

A stage retries through an outage of any length; logging a traceback per partition
per retry (the projector once logged 138 in a 4 s outage) would bury the one fact
that matters: which server is gone, since when, and when it came back.
"""

from __future__ import annotations

import logging
import time

import asyncpg
from redis.exceptions import RedisError

from shared.errors import TransientError

#: failures of a server, not of the work: wait for it and retry
UNREACHABLE = (RedisError, OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.OperatorInterventionError, TransientError, TimeoutError)  # fmt: skip


def server_of(e: BaseException) -> str:
    return "Redis" if isinstance(e, RedisError) else "PostgreSQL"


class Outages:
    """Per server: when it stopped answering (None while it answers)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.since: dict[str, float] = {}

    def failed(self, e: BaseException) -> None:
        server = server_of(e)
        if server not in self.since:
            self.since[server] = time.monotonic()
            self.log.warning("%s unreachable (%s: %s); retrying until it answers", server,
                             type(e).__name__, e)  # fmt: skip

    def answered(self, server: str) -> None:
        started = self.since.pop(server, None)
        if started is not None:
            self.log.warning("%s answers again after %.1f s", server, time.monotonic() - started)

    def all_answered(self) -> None:
        for server in list(self.since):
            self.answered(server)
