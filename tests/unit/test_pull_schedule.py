"""Source schedules: ``every`` and ``cron`` parsed, refused with pointers, computed in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from shared.errors import ApiError
from shared.pull.schedule import Schedule, parse_schedule

T0 = datetime(2024, 5, 1, 12, 7, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("15m", 900), ("2h", 7200), ("1d", 86_400), ("90s", 90)],
)
def test_every(text: str, seconds: int) -> None:
    s = parse_schedule({"every": text})
    assert s is not None
    assert s.next_after(T0) == T0 + timedelta(seconds=seconds)
    assert s.as_json() == {"every": text}


def test_cron_next_time_in_utc() -> None:
    s = parse_schedule({"cron": "*/15 * * * *"})
    assert s is not None
    assert s.next_after(T0) == datetime(2024, 5, 1, 12, 15, tzinfo=UTC)
    assert s.next_after(datetime(2024, 5, 1, 12, 15, tzinfo=UTC)) == datetime(
        2024, 5, 1, 12, 30, tzinfo=UTC
    )
    assert s.as_json() == {"cron": "*/15 * * * *"}


def test_cron_from_another_offset_is_answered_in_utc() -> None:
    s = parse_schedule({"cron": "0 3 * * *"})
    assert s is not None
    local = datetime(2024, 5, 1, 23, 0, tzinfo=timezone(timedelta(hours=2)))  # 21:00 UTC
    nxt = s.next_after(local)
    assert nxt == datetime(2024, 5, 2, 3, 0, tzinfo=UTC)
    assert nxt.utcoffset() == timedelta(0)


def test_none_is_no_schedule() -> None:
    assert parse_schedule(None) is None


@pytest.mark.parametrize(
    ("obj", "pointer"),
    [
        ({"every": "5s"}, "/schedule/every"),
        ({"every": "0m"}, "/schedule/every"),
        ({"every": "15"}, "/schedule/every"),
        ({"every": "15 m"}, "/schedule/every"),
        ({"every": "1w"}, "/schedule/every"),
        ({"every": 900}, "/schedule/every"),
        ({"every": "400d"}, "/schedule/every"),
        ({"cron": "*/15 * * *"}, "/schedule/cron"),
        ({"cron": "61 * * * *"}, "/schedule/cron"),
        ({"cron": "* * * * * *"}, "/schedule/cron"),
        ({"cron": 5}, "/schedule/cron"),
        ({"every": "15m", "cron": "* * * * *"}, "/schedule"),
        ({}, "/schedule"),
        ({"at": "noon"}, "/schedule"),
        ("15m", "/schedule"),
    ],
)
def test_refused_with_pointer(obj: Any, pointer: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_schedule(obj)
    assert (e.value.code, e.value.pointer, e.value.status) == ("invalid_source", pointer, 400)


def test_pointer_prefix() -> None:
    with pytest.raises(ApiError) as e:
        parse_schedule({"every": "1s"}, "/x")
    assert e.value.pointer == "/x/every"


def test_round_trip() -> None:
    for obj in ({"every": "15m"}, {"cron": "0 */2 * * 1-5"}):
        s = parse_schedule(obj)
        assert isinstance(s, Schedule)
        assert parse_schedule(s.as_json()) == s
