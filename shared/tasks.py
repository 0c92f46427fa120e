"""Long-lived asyncio tasks that stop when told to, whatever their drivers do.

A loop that rides out failures (``except Exception: log; retry``) must still end when
its task is cancelled. Drivers do not always let the CancelledError through: redis-py
can turn a cancellation mid-command into a connection error (and close the
connection), which such a loop then takes for an outage and retries, for ever, while
whoever cancelled it waits for it to end. That was a wedge: a stopping gateway (and a
test's teardown) could wait for ever on the appender's backlog poll.

:func:`reraise_if_cancelled`, called in every such ``except``, turns a cancellation
that was requested (``Task.cancelling()``, Python 3.11) back into the CancelledError
that ends the loop; :func:`stop` cancels a task and waits for it, but never for
longer than its bound.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

STOP_TIMEOUT_S = 5.0


def reraise_if_cancelled() -> None:
    """Raise CancelledError if the current task's cancellation was requested (a driver
    may have swallowed or converted the CancelledError it got)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop(task: asyncio.Task[Any] | None, log: logging.Logger) -> None:
    """Cancel ``task`` and wait for it to end, at most :data:`STOP_TIMEOUT_S` (then it is
    left behind, with a warning: stopping never waits for ever)."""
    await stop_all([] if task is None else [task], log)


async def stop_all(tasks: list[asyncio.Task[Any]], log: logging.Logger) -> None:
    """:func:`stop` for several tasks at once (one bound for them all)."""
    live = [t for t in tasks if not t.done()]
    if not live:
        return
    for t in live:
        t.cancel()
    done, left = await asyncio.wait(live, timeout=STOP_TIMEOUT_S)
    for t in left:
        log.warning("task %s did not stop within %.0f s of its cancellation", t, STOP_TIMEOUT_S)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.warning("task %s ended with %r", t.get_name(), t.exception())
