"""Lua scripts: each registered once per server and run by its SHA1 (EVALSHA).

A :class:`Script` is defined at import time from its source; its field names come
from :mod:`shared.redis.keyspace` through :func:`lua` (``$name`` placeholders), so a
script never spells a field of its own. :meth:`Script.run` sends only the SHA; after
a Redis restart (or SCRIPT FLUSH) the server answers NOSCRIPT and the script is
loaded and the call repeated. Inside a MULTI a NOSCRIPT reply arrives only at EXEC,
so callers that queue a script in a transaction call :meth:`Script.load` first and
repeat the transaction on :class:`redis.exceptions.NoScriptError` (see
:func:`shared.redis.sessions.SessionStore.store_single`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from string import Template
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from shared.redis.wire import Arg


def lua(source: str, **names: str) -> str:
    """``source`` with ``$name`` replaced by ``names[name]`` (quoted field names)."""
    return Template(source).substitute({k: f"'{v}'" for k, v in names.items()})


class Script:
    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def load(self, redis: Redis) -> None:
        await redis.script_load(self.source)

    async def run(self, redis: Redis, keys: Sequence[str], *args: Arg) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc, arg-type]
        except NoScriptError:
            await self.load(redis)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc, arg-type]

    def call(self, keys: Sequence[str], *args: Arg) -> tuple[Arg, ...]:
        """The EVALSHA command's arguments, to pack with :mod:`shared.redis.wire`."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)
