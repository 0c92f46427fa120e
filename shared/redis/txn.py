"""THE guarded transaction: a MULTI/EXEC that takes effect only while a lease is held.

Every batch a worker commits (single events, deletes, a whole snapshot) is one
:class:`GuardedTransaction`:

1. ``WATCH`` the lease, ``GET`` its token, ``TYPE`` every key the batch writes and
   ``MULTI`` (one round trip; a refusal below DISCARDs). Another token means the
   lease was lost: :class:`LostLease`, nothing queued. A key of the wrong type
   would fail its command at EXEC, after the commands before it took effect
   (Redis has no rollback), so the batch is refused here: :class:`CommitFailed`,
   nothing queued.
2. The commands, sent with EXEC (two round trips in all), or streamed in several
   sends (a snapshot streams its staged slices). A command Redis refuses while
   queueing (unknown, wrong arity, no permission, out of memory) makes EXEC abort
   the whole transaction: :class:`CommitFailed`, nothing applied.
3. ``EXEC``. A nil reply means the lease changed after WATCH: :class:`LostLease`,
   nothing applied. An error reply inside EXEC (which step 1 leaves only to
   defects) raises :class:`CommitFailed` with ``partial`` set, loudly.

Either way the caller's raw events stay unacknowledged, so the batch is decided
again by whoever holds the lease next.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from shared.redis import wire
from shared.redis.conn import HeldConnection
from shared.redis.lease import Lease, LostLease

log = logging.getLogger("ingestd.redis.txn")

_MULTI, _EXEC, _DISCARD = wire.command("MULTI"), wire.command("EXEC"), wire.command("DISCARD")


class CommitFailed(Exception):
    """Redis refused a guarded transaction. ``partial``: an error reply inside EXEC,
    so the commands before it did take effect (a defect: the preflight exists to make
    this impossible)."""

    def __init__(self, message: str, *, partial: bool = False) -> None:
        super().__init__(message)
        self.partial = partial


class GuardedTransaction:
    """``async with GuardedTransaction(conn, lease, types) as tx: await tx.queue(...)``;
    then ``await tx.execute()``. ``types`` maps each key the batch writes to its Redis
    type (``"hash"``, ``"stream"``, ``"list"``); a missing key is fine."""

    def __init__(self, conn: HeldConnection, lease: Lease, types: dict[str, str]) -> None:
        self.conn = conn
        self.lease = lease
        self.types = types
        self._open = False  # MULTI sent, EXEC not yet
        self._refused: list[Exception] = []

    async def __aenter__(self) -> GuardedTransaction:
        await self.begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._open:  # left mid-transaction: the connection is inside a MULTI
            self._open = False
            await self.conn.drop()

    async def begin(self) -> None:
        try:
            await self._begin()
        except (LostLease, CommitFailed):
            raise  # DISCARDed: the connection is in step
        except BaseException:
            self._open = False
            await self.conn.drop()
            raise

    async def _begin(self) -> None:
        key = self.lease.key
        keys = list(self.types)
        payload = wire.command("WATCH", key) + wire.command("GET", key)
        payload += wire.commands(("TYPE", k) for k in keys) + _MULTI
        _, token, *found, _ = await self.conn.exchange(payload, 3 + len(keys))
        self._open = True
        if token != self.lease.token.encode():
            await self._discard()
            raise LostLease(key)
        wrong = [
            f"{k!r} is a {t.decode()}, not a {self.types[k]}"
            for k, t in zip(keys, found, strict=True)
            if t != b"none" and t.decode() != self.types[k]
        ]
        if wrong:
            await self._discard()
            raise CommitFailed("refused before any command was queued: " + "; ".join(wrong))

    async def _discard(self) -> None:
        await self.conn.exchange(_DISCARD, 1)  # also drops the WATCH
        self._open = False

    async def queue(self, payload: bytes, count: int) -> None:
        """Send ``count`` packed commands into the transaction."""
        await self.conn.send(payload)
        await self._read_queued(count)

    async def _read_queued(self, count: int) -> None:
        replies = await self.conn.read(count, errors_as_values=True)
        self._refused += [r for r in replies if isinstance(r, Exception)]

    async def execute(self, payload: bytes = b"", count: int = 0) -> list[Any]:
        """Send the last ``count`` commands (``payload``) with EXEC; the EXEC's replies."""
        await self.conn.send(payload + _EXEC)
        await self._read_queued(count)
        (result,) = await self.conn.read(1, errors_as_values=True)
        self._open = False
        if isinstance(result, Exception):  # EXECABORT: nothing was applied
            raise CommitFailed(f"refused while queueing: {(self._refused or [result])[0]}")
        if result is None:
            raise LostLease(self.lease.key)
        errors = [r for r in result if isinstance(r, Exception)]
        if errors:
            log.error("a guarded transaction partly failed inside EXEC: %s", errors[:3])
            raise CommitFailed(f"failed inside EXEC: {errors[0]}", partial=True)
        out: list[Any] = result
        return out


async def commit_guarded(
    conn: HeldConnection, lease: Lease, types: dict[str, str], cmds: Iterable[bytes]
) -> list[Any]:
    """One guarded transaction of ``cmds`` (packed commands): two round trips."""
    cmds = list(cmds)
    async with GuardedTransaction(conn, lease, types) as tx:
        return await tx.execute(b"".join(cmds), len(cmds))
