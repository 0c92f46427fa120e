"""Fixtures shared by the integration tests of pull sources."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from shared.config import Settings
from tests.conftest import InlinePipeline
from tests.sources_helpers import Harness


@pytest.fixture
async def harness(
    client: TestClient[Any, Any], settings: Settings, pool: asyncpg.Pool, redis: Redis,
    pipeline: InlinePipeline,
) -> Harness:  # fmt: skip
    """The sources stage's real loop beside the pipeline (see :class:`Harness`)."""
    return Harness(client, settings, pool, redis, pipeline)
