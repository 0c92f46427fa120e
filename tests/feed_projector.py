"""A projector process draining only some partitions: ``python -m tests.feed_projector 0,3``.

The feed's concurrency test runs several of these at once, so that each owns known
partitions (``ingestd projector`` processes would race for every lease, and the first one
started would hold them all) and a SIGSTOP of one freezes a known set mid-transaction.
It is the real :class:`~services.projector.main.Projector`, configured from the
environment as ``ingestd projector`` is.
"""

from __future__ import annotations

import asyncio
import sys

from redis.asyncio import Redis

from services.projector.main import Projector
from shared.config import Settings
from shared.pg.pool import create_pool
from shared.pg.resources import ResourceStore


async def main(only: list[int]) -> None:
    settings = Settings.from_env()
    dsn, redis_url = settings.require_servers()
    pool = await create_pool(dsn, max_size=len(only) + 1)
    projector = Projector(Redis.from_url(redis_url), ResourceStore(pool), settings.partitions, 50)
    await projector.run(only)


if __name__ == "__main__":
    asyncio.run(main([int(p) for p in sys.argv[1].split(",")]))
