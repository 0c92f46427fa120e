"""Loops that ride out failures still stop when cancelled (shared/tasks.py), even when
a driver turns the cancellation into an error of its own, as redis-py can."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from shared import tasks

log = logging.getLogger("test")


async def converting_driver() -> None:
    """A call that, cancelled mid-way, raises a connection error instead."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise ConnectionError("connection closed by cancellation") from None


async def riding_out(guarded: bool, turns: list[int], until: asyncio.Event | None = None) -> None:
    while until is None or not until.is_set():
        turns.append(1)
        try:
            await converting_driver()
        except Exception:
            if guarded:
                tasks.reraise_if_cancelled()
        await asyncio.sleep(0.01)


async def test_a_guarded_loop_ends_when_cancelled() -> None:
    turns: list[int] = []
    t = asyncio.ensure_future(riding_out(True, turns))
    await asyncio.sleep(0.01)
    await tasks.stop(t, log)
    assert t.cancelled() and len(turns) == 1


async def test_stop_never_waits_for_ever_on_a_loop_that_swallows_it(
    monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tasks, "STOP_TIMEOUT_S", 0.3)
    turns: list[int] = []
    until = asyncio.Event()
    t = asyncio.ensure_future(riding_out(False, turns, until))  # the defect: it goes on
    await asyncio.sleep(0.01)
    await tasks.stop(t, log)
    assert not t.done() and len(turns) > 1  # it retried after its cancellation...
    assert "did not stop" in caplog.text  # ...and stop() returned anyway, saying so
    until.set()  # let it end (a cancellation would be converted again)
    t.cancel()
    await asyncio.wait({t}, timeout=5)
    assert t.done()
