"""The seed's .NET-style custom date formats (``yyyy-MM-ddTHH:mm:ss:fffffffK``).

Pure. A format is tokenised once (cached) into literal text and field tokens;
:func:`format_time` renders a datetime (converted to UTC first, a naive one is
taken as UTC) with it. Supported, as .NET's custom format specifiers mean them
with the invariant culture: ``yyyy yyy yy y``, ``MMMM MMM MM M``, ``dddd ddd dd d``,
``HH H hh h mm m ss s tt t``, ``f``…``fffffff`` and ``F``…``FFFFFFF`` (F: trailing
zeros trimmed; an all-zero F fraction also drops the ``.`` before it), ``K`` (UTC:
``Z``), ``zzz`` / ``zz`` / ``z`` (``+00:00`` / ``+00`` / ``+0``). Literal text:
``T Z : - / . ,`` space, ``'quoted'``, ``"quoted"``, ``\\x`` and ``%`` (the single-
specifier prefix). Any other letter is refused (:func:`check_format`), because a
format the remote API does not expect would silently send a wrong window.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from functools import lru_cache

#: the letters that are format fields; the value is the longest run .NET reads as one field
_FIELDS: dict[str, int] = {
    "y": 7,
    "M": 4,
    "d": 4,
    "H": 2,
    "h": 2,
    "m": 2,
    "s": 2,
    "t": 2,
    "f": 7,
    "F": 7,
    "K": 1,
    "z": 3,
}
_LITERAL_CHARS = frozenset("TZ:-/., _+()[]")

#: literal text, or (field letter, run length)
_Token = str | tuple[str, int]


@lru_cache(maxsize=256)
def _tokens(fmt: str) -> tuple[_Token, ...]:
    out: list[_Token] = []
    i, n = 0, len(fmt)
    while i < n:
        c = fmt[i]
        if c in _FIELDS:
            j = i
            while j < n and fmt[j] == c:
                j += 1
            run = j - i
            if c in "fF" and run > _FIELDS[c]:
                raise ValueError(
                    f"date format {fmt!r}: at most 7 {c!r} (fraction digits), got {run} at {i}"
                )
            out.append((c, min(run, _FIELDS[c])))
            i = j
        elif c in "'\"":
            end = fmt.find(c, i + 1)
            if end < 0:
                raise ValueError(f"date format {fmt!r}: unterminated quote {c} at {i}")
            out.append(fmt[i + 1 : end])
            i = end + 1
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError(f"date format {fmt!r}: a trailing backslash escapes nothing")
            out.append(fmt[i + 1])
            i += 2
        elif c == "%":
            i += 1
        elif c in _LITERAL_CHARS or c.isdigit():
            out.append(c)
            i += 1
        else:
            raise ValueError(
                f"date format {fmt!r}: unknown token {c!r} at {i} (supported: yyyy MM dd HH hh "
                "mm ss tt f…fffffff F…FFFFFFF K zzz, literals T Z : - / . , space, "
                "'quoted' and \\x)"
            )
    return tuple(out)


def check_format(fmt: str) -> None:
    """Raise ValueError when ``fmt`` holds a token :func:`format_time` cannot render."""
    if not isinstance(fmt, str) or not fmt:
        raise ValueError("a date format must be a non-empty string")
    _tokens(fmt)


def format_time(dt: datetime, fmt: str) -> str:
    """``dt`` (in UTC) rendered with the .NET custom format ``fmt``."""
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    out: list[str] = []
    for tok in _tokens(fmt):
        if isinstance(tok, str):
            out.append(tok)
            continue
        letter, run = tok
        text = _field(dt, letter, run)
        if letter == "F" and not text and out and out[-1].endswith("."):
            out[-1] = out[-1][:-1]
        out.append(text)
    return "".join(out)


def _field(dt: datetime, letter: str, run: int) -> str:
    if letter == "y":
        if run == 1:
            return str(dt.year % 100)
        if run == 2:
            return f"{dt.year % 100:02d}"
        return f"{dt.year:0{run}d}"
    if letter == "M":
        if run == 3:
            return calendar.month_abbr[dt.month]
        if run == 4:
            return calendar.month_name[dt.month]
        return f"{dt.month:0{run}d}"
    if letter == "d":
        if run == 3:
            return calendar.day_abbr[dt.weekday()]
        if run == 4:
            return calendar.day_name[dt.weekday()]
        return f"{dt.day:0{run}d}"
    if letter == "f" or letter == "F":
        digits = f"{dt.microsecond:06d}0"[:run]
        return digits if letter == "f" else digits.rstrip("0")
    if letter == "t":
        ampm = "AM" if dt.hour < 12 else "PM"
        return ampm[:run]
    if letter == "K":
        return "Z"
    if letter == "z":
        return ("+0", "+00", "+00:00")[run - 1]
    value = {"H": dt.hour, "h": dt.hour % 12 or 12, "m": dt.minute, "s": dt.second}[letter]
    return f"{value:0{run}d}"
