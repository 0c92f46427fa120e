"""A source's schedule: ``{"every": "15m"}`` or ``{"cron": "*/15 * * * *"}`` (pure).

``every`` takes a positive whole number of ``s``, ``m``, ``h`` or ``d``, at least 10 s;
``cron`` a five-field expression, checked and computed by ``croniter`` in UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter

from shared.codes import Code
from shared.errors import ApiError

MIN_EVERY_S = 10
MAX_EVERY_S = 366 * 86_400
_EVERY = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


@dataclass(frozen=True, slots=True)
class Schedule:
    """Exactly one of ``every_s`` and ``cron`` is set."""

    every_s: int | None = None
    cron: str | None = None
    every: str | None = None  # as given, for as_json

    def next_after(self, dt: datetime) -> datetime:
        """The first run time strictly after ``dt``, in UTC. ``every`` counts from ``dt``
        (the time the previous run was requested)."""
        now = dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC)
        if self.every_s is not None:
            return now + timedelta(seconds=self.every_s)
        assert self.cron is not None
        nxt: datetime = croniter(self.cron, now).get_next(datetime)
        return nxt.astimezone(UTC)

    def as_json(self) -> dict[str, str]:
        if self.cron is not None:
            return {"cron": self.cron}
        assert self.every is not None
        return {"every": self.every}


def _bad(message: str, pointer: str) -> ApiError:
    return ApiError(Code.INVALID_SOURCE, message, pointer=pointer)


def _every(value: Any, pointer: str) -> Schedule:
    m = _EVERY.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise _bad('every must be a number and a unit s, m, h or d, e.g. "15m"', pointer)
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds < MIN_EVERY_S:
        raise _bad(f"every must be at least {MIN_EVERY_S} s, got {value!r}", pointer)
    if seconds > MAX_EVERY_S:
        raise _bad(f"every must be at most 366 days, got {value!r}", pointer)
    return Schedule(every_s=seconds, every=value)


def _cron(value: Any, pointer: str) -> Schedule:
    if not isinstance(value, str) or len(value.split()) != 5:
        raise _bad(
            "cron must be a five-field expression (minute hour day month weekday),"
            ' e.g. "*/15 * * * *"',
            pointer,
        )
    if not croniter.is_valid(value):
        raise _bad(f"cron expression {value!r} is not valid", pointer)
    return Schedule(cron=value)


def parse_schedule(obj: Any, pointer: str = "/schedule") -> Schedule | None:
    """None for no schedule (absent or null): the source runs only when asked."""
    if obj is None:
        return None
    if not isinstance(obj, dict) or len(obj) != 1 or not ({"every", "cron"} & obj.keys()):
        raise _bad('schedule must be {"every": "15m"} or {"cron": "*/15 * * * *"}', pointer)
    if "every" in obj:
        return _every(obj["every"], f"{pointer}/every")
    return _cron(obj["cron"], f"{pointer}/cron")
