"""The seed's .NET-style date formats (shared.pull.dotnet_time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.pull.dotnet_time import check_format, format_time

T = datetime(2024, 5, 1, 10, 20, 30, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("yyyy-MM-ddTHH:mm:ss:fffffffK", "2024-05-01T10:20:30:1234560Z"),  # the seed's
        ("yyyy-MM-ddTHH:mm:ssZ", "2024-05-01T10:20:30Z"),  # the seed's
        ("yyyy-MM-ddTHH:mm:ssK", "2024-05-01T10:20:30Z"),
        ("yyyy-MM-ddTHH:mm:ss.fffzzz", "2024-05-01T10:20:30.123+00:00"),
        ("yy/M/d H:m:s", "24/5/1 10:20:30"),
        ("hh:mm tt", "10:20 AM"),
        ("yyyy-MM-dd'T'HH\\:mm zz", "2024-05-01T10:20 +00"),
        ('"day" dd, z', "day 01, +0"),
        ("ss.FFFFFFF", "30.123456"),
        ("ss.ff", "30.12"),
        ("MMM ddd", "May Wed"),
    ],
)
def test_formats(fmt: str, expected: str) -> None:
    check_format(fmt)
    assert format_time(T, fmt) == expected


def test_converted_to_utc_first() -> None:
    paris = datetime(2024, 5, 1, 12, 20, 30, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(paris, "yyyy-MM-ddTHH:mm:sszzz") == "2024-05-01T10:20:30+00:00"
    assert format_time(datetime(2024, 5, 1, 10), "HH:mmK") == "10:00Z"  # naive: UTC


def test_zero_fraction_with_f_and_F() -> None:
    whole = datetime(2024, 5, 1, 10, 20, 30, tzinfo=UTC)
    assert format_time(whole, "ss.fff") == "30.000"
    assert format_time(whole, "ss.FFF") == "30"  # .NET drops the point with an empty F
    assert format_time(T.replace(hour=15), "h tt t") == "3 PM P"


@pytest.mark.parametrize("fmt", ["yyyy-QQ", "yyyy-MM-dd gg", "ffffffff", "'open", "ss\\", ""])
def test_refused(fmt: str) -> None:
    with pytest.raises(ValueError):
        check_format(fmt)
