"""Typed application keys: everything the handlers share, opened in cleanup_ctx."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from services.gateway.appender import Appender, Connections
from services.gateway.group_read import GroupRead
from shared.config import Settings
from shared.pg.feed import FeedStore
from shared.pg.integration_data import Entry, IntegrationDataStore
from shared.pg.registry import RegistryCache, RegistryStore
from shared.pg.repair import RepairStore
from shared.pg.resources import ResourceStore
from shared.pg.sources import SourceStore
from shared.pg.transfer import TransferStore
from shared.pg.webhooks import WebhookStore
from shared.redis.sessions import SessionStore

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
PG = web.AppKey("pg", asyncpg.Pool)
REGISTRY = web.AppKey("registry", RegistryCache)
REGISTRY_STORE = web.AppKey("registry_store", RegistryStore)
RESOURCES = web.AppKey("resources", ResourceStore)
APPENDER = web.AppKey("appender", Appender)
#: counted by services.gateway.server's HTTP server; 0 under any other runner
CONNECTIONS = web.AppKey("connections", Connections)
SESSIONS = web.AppKey("sessions", SessionStore)
SOURCES = web.AppKey("sources", SourceStore)  # its box is None without INGESTD_SECRET_KEY
CURSOR_KEY = web.AppKey("cursor_key", bytes)  # signs page cursors (shared/cursors.py)
INTEGRATION_DATA = web.AppKey("integration_data", IntegrationDataStore)
#: instance reads of integration data, grouped (services/gateway/group_read.py)
IDATA_READS = web.AppKey(
    "idata_reads", GroupRead[tuple[str, str, str, str], tuple[bool, Entry | None]]
)
REPAIR = web.AppKey("repair", RepairStore)
FEED = web.AppKey("feed", FeedStore)  # its signal LISTENs on a connection of its own
TRANSFERS = web.AppKey("transfers", TransferStore)
WEBHOOKS = web.AppKey("webhooks", WebhookStore)  # only with INGESTD_SECRET_KEY
