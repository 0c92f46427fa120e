"""A hung test must fail, with a picture of what it waits for, and never wedge the run.

pytest-timeout (``timeout`` in pyproject) fails a test that runs longer than its limit.
For an asyncio test, the main thread's stack then shows only the event loop's
``select()``; what matters is which coroutines wait and where. So shortly before the
limit, this plugin prints every asyncio task's stack (and every thread's) to stderr,
which pytest shows with the test's failure."""

from __future__ import annotations

import asyncio
import faulthandler
import sys
import threading
from collections.abc import Generator

import pytest

#: seconds before pytest-timeout's limit at which the stacks are printed
LEAD_S = 20.0


def _dump(name: str) -> None:
    out = sys.stderr
    print(f"\n==== watchdog: {name} is still running; its asyncio tasks:", file=out)
    tasks = getattr(asyncio.tasks, "_all_tasks", None)  # every loop's tasks (CPython)
    for task in list(tasks or ()):
        if not task.done():
            print(f"-- {task!r}", file=out)
            task.print_stack(limit=12, file=out)
    print("==== threads:", file=out)
    faulthandler.dump_traceback(out, all_threads=True)
    out.flush()


def _limit(item: pytest.Item) -> float:
    """pytest-timeout's limit for ``item``: its marker, else the option, else the ini."""
    marker = item.get_closest_marker("timeout")
    if marker and marker.args:
        return float(marker.args[0])
    option = item.config.getoption("timeout", None)
    if option is not None:
        return float(option)
    ini = item.config.getini("timeout")
    return float(ini) if ini else 0.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    seconds = _limit(item)
    timer = None
    if seconds > LEAD_S:
        timer = threading.Timer(seconds - LEAD_S, _dump, (item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer:
            timer.cancel()
