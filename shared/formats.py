"""Format normalisers (issue 14): a value in, its canonical form out, or why it has none.

Pure. Each normaliser takes the JSON value found at a property with that ``format``
and returns the value to store, or raises :class:`NotNormalisable` with a reason.
Every normaliser is idempotent (its output normalises to itself), so shaping a record
twice changes nothing, and is the format check for the property: JSON Schema's own
``format`` assertion is switched off where a normaliser runs (see
:mod:`shared.shaping`). A value of a type the format does not apply to (a number for
``email``, ``null``…) is returned as it is, for the schema's ``type`` to judge.

| format | stored as |
|---|---|
| email | trimmed; domain lower-cased and IDNA-normalised (Unicode form); local part kept |
| uri | RFC 3986 normalised: lower-case scheme and host, default port dropped, dot
  segments removed, percent-encoding normalised, spaces encoded |
| date | ``%Y-%m-%d`` |
| time | ``%H:%M:%S`` in UTC |
| date-time | ``%Y-%m-%d %H:%M:%S`` in UTC |
| phone | E.164 |
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any, Literal

import email_validator
import jsonschema_rs
import phonenumbers
import yarl

FORMATS = ("email", "uri", "date", "time", "date-time", "phone")
DateOrder = Literal["DMY", "MDY", "YMD"]
DATE_ORDERS: tuple[DateOrder, ...] = ("DMY", "MDY", "YMD")
#: epoch numbers at or beyond this magnitude are milliseconds (1e11 s is the year 5138)
EPOCH_MS_FROM = 100_000_000_000


class NotNormalisable(ValueError):
    """The value cannot be put in the format's canonical form; the text says why."""


@dataclass(frozen=True, slots=True)
class Options:
    """The schema's ``resmo`` settings that normalisers read."""

    default_region: str | None = None
    date_order: DateOrder | None = None


Normaliser = Callable[[Any], Any]


def normaliser(fmt: str, options: Options) -> Normaliser:
    """The normaliser of ``fmt`` (one of :data:`FORMATS`) under ``options``."""
    if fmt == "email":
        return normalise_email
    if fmt == "uri":
        return normalise_uri
    if fmt == "date":
        return functools.partial(normalise_date, order=options.date_order)
    if fmt == "time":
        return normalise_time
    if fmt == "date-time":
        return normalise_date_time
    if fmt == "phone":
        return functools.partial(normalise_phone, region=options.default_region)
    raise KeyError(fmt)


# -- email ----------------------------------------------------------------------------

# an ASCII dot-atom local part (RFC 5322 atext): email-validator keeps it exactly as is
_ASCII_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


@functools.lru_cache(maxsize=4096)
def _email_domain(domain: str) -> str:
    """The normalised domain (email-validator's rules: IDNA, a period, no special-use
    names); domains repeat across records, so each is checked once."""
    try:
        return email_validator.validate_email("a@" + domain, check_deliverability=False).domain
    except email_validator.EmailNotValidError as e:
        raise NotNormalisable(str(e)) from e


#: domains seen already in their normalised form (bounded: cleared when full)
_CANONICAL_DOMAINS: set[str] = set()
_MAX_CANONICAL_DOMAINS = 4096


def normalise_email(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    local, at, domain = value.rpartition("@")
    if domain in _CANONICAL_DOMAINS and len(local) <= 64 and len(value) <= 254:
        if _ASCII_LOCAL.fullmatch(local):  # already stored as is: the value itself
            return value
    s = value.strip()
    local, at, domain = s.rpartition("@")
    if at and len(local) <= 64 and len(s) <= 254 and _ASCII_LOCAL.fullmatch(local):
        normal = _email_domain(domain)
        if normal == domain:
            if len(_CANONICAL_DOMAINS) >= _MAX_CANONICAL_DOMAINS:
                _CANONICAL_DOMAINS.clear()
            _CANONICAL_DOMAINS.add(domain)
        return local + "@" + normal
    try:
        return email_validator.validate_email(s, check_deliverability=False).normalized
    except email_validator.EmailNotValidError as e:
        raise NotNormalisable(str(e)) from e


# -- uri ------------------------------------------------------------------------------

# scheme and authority must be well-formed as given: a space there is not encoded away
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_AUTHORITY = re.compile(r"//[^/?#\s]*(?=[/?#]|\Z)")
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_PCHAR = r"[A-Za-z0-9\-_~!$&'()*+,;=:@]"
#: an http(s) URI already in the stored form (what yarl gives back unchanged): lower-case
#: scheme and host, no port, no dot segment, no percent sign, no empty query or fragment
_CANONICAL_URI = re.compile(
    rf"https?://{_LABEL}(?:\.{_LABEL})*(?:(?:/(?!\.\.?(?:[/?#]|\Z)){_PCHAR}*)+"
    rf"(?:\?(?:{_PCHAR}|[/?])+)?(?:#(?:{_PCHAR}|[/?])+)?)?"
)
_URI_CHECK = jsonschema_rs.Draft202012Validator(
    {"type": "string", "format": "uri"}, validate_formats=True
).is_valid


def normalise_uri(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    s = value.strip()
    if _CANONICAL_URI.fullmatch(s):
        return s
    scheme = _SCHEME.match(s)
    if scheme is None:
        raise NotNormalisable("an absolute URI needs a scheme, such as https:")
    if s.startswith("//", scheme.end()) and not _AUTHORITY.match(s, scheme.end()):
        raise NotNormalisable("the host part holds a space or another character it cannot")
    # yarl would write a space in the query as '+' (form encoding); RFC 3986 has %20
    s = s.replace(" ", "%20") if " " in s else s
    try:
        out = str(yarl.URL(s))
    except ValueError as e:
        raise NotNormalisable(str(e)) from e
    if not _URI_CHECK(out):
        raise NotNormalisable("not an RFC 3986 URI")
    return out


# -- dates and times --------------------------------------------------------------------

_OFFSET = r"(?P<tz>[Zz]|[+-]\d{2}(?::?\d{2})?)?"
_CLOCK = r"(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,](?P<f>\d+))?)?"
_DATE = r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"
_DATE_TIME = re.compile(_DATE + r"[Tt ]" + _CLOCK + r" ?" + _OFFSET)
_TIME = re.compile(_CLOCK + r" ?" + _OFFSET)
_DATE_ONLY = re.compile(_DATE)
_SLASHED = re.compile(r"(\d{1,4})/(\d{1,2})/(\d{1,4})")
_CANONICAL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CANONICAL_TIME = re.compile(r"\d{2}:\d{2}:\d{2}")


def _zone(tz: str | None) -> timezone:
    if tz is None or tz in ("Z", "z"):
        return UTC
    digits = tz[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise NotNormalisable(f"offset {tz} is out of range")
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if tz[0] == "-" else delta)


def _clock(m: re.Match[str]) -> tuple[int, int, int]:
    return int(m["H"]), int(m["M"]), int(m["S"] or 0)


def _parse_date_time(s: str) -> datetime:
    """An RFC 3339 / ISO 8601 date-time, in UTC (no offset: already UTC)."""
    m = _DATE_TIME.fullmatch(s)
    if m is None:
        raise NotNormalisable("expected a date-time such as 2000-01-01T00:00:00Z")
    try:
        fast = datetime.fromisoformat(s)  # C speed for the forms it shares with the regex
    except ValueError:
        fast = None
    if fast is not None and fast.second == int(m["S"] or 0):
        return fast.astimezone(UTC) if fast.tzinfo is not None else fast.replace(tzinfo=UTC)
    try:
        dt = datetime(int(m["y"]), int(m["m"]), int(m["d"]), *_clock(m), tzinfo=_zone(m["tz"]))
        return dt.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise NotNormalisable(str(e)) from e


def _from_epoch(n: float) -> datetime:
    seconds = n / 1000 if abs(n) >= EPOCH_MS_FROM else n
    try:
        return datetime.fromtimestamp(int(seconds // 1), UTC)
    except (ValueError, OverflowError, OSError) as e:
        raise NotNormalisable(f"epoch {n} is out of range: {e}") from e


def _stored(dt: datetime) -> str:
    """``%Y-%m-%d %H:%M:%S`` of a UTC datetime, without strftime's cost."""
    return dt.replace(microsecond=0, tzinfo=None).isoformat(" ")


def normalise_date_time(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _stored(_from_epoch(value))
    if not isinstance(value, str):
        return value
    s = value if value[-1:] != " " and value[:1] != " " else value.strip()
    if len(s) == 19 and s[10] == " " and s[13] == ":" and s[16] == ":" and s[4] == "-":
        return _checked(s, datetime.fromisoformat)  # already the stored form (UTC)
    if len(s) == 20 and s[19] in "Zz" and s[10] in "Tt " and s[13] == s[16] == ":":
        try:  # RFC 3339 in UTC without a fraction, the most common wire form: only a swap
            datetime.fromisoformat(s[:19])
            return f"{s[:10]} {s[11:19]}"
        except ValueError as e:
            raise NotNormalisable(str(e)) from e
    return _stored(_parse_date_time(s))


def _checked(s: str, parse: Callable[[str], Any]) -> str:
    """``s``, already in its stored form, once ``parse`` accepts its fields."""
    try:
        parse(s)
    except ValueError as e:
        raise NotNormalisable(str(e)) from e
    return s


def normalise_date(value: Any, order: DateOrder | None = None) -> Any:
    if not isinstance(value, str):
        return value
    s = value.strip()
    if _CANONICAL_DATE.fullmatch(s):
        return _checked(s, date.fromisoformat)
    m = _DATE_ONLY.fullmatch(s)
    if m is not None:
        return _date(int(m["y"]), int(m["m"]), int(m["d"]))
    slashed = _SLASHED.fullmatch(s)
    if slashed is not None:
        return _slashed(slashed, order)
    if _DATE_TIME.fullmatch(s):
        return _parse_date_time(s).date().isoformat()
    raise NotNormalisable("expected a date such as 2000-01-01")


def _slashed(m: re.Match[str], order: DateOrder | None) -> str:
    a, b, c = (int(x) for x in m.groups())
    if order is None:
        raise NotNormalisable(
            "a date with slashes is ambiguous: set resmo.dateOrder (DMY, MDY or YMD) to "
            "accept it, or send 2000-01-01"
        )
    if order == "YMD":
        if len(m[1]) != 4:
            raise NotNormalisable("resmo.dateOrder YMD expects a four-digit year first")
        return _date(a, b, c)
    if len(m[3]) != 4:
        raise NotNormalisable(f"resmo.dateOrder {order} expects a four-digit year last")
    return _date(c, b, a) if order == "DMY" else _date(c, a, b)


def _date(y: int, m: int, d: int) -> str:
    try:
        return date(y, m, d).isoformat()
    except ValueError as e:
        raise NotNormalisable(str(e)) from e


def normalise_time(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    s = value.strip()
    if _CANONICAL_TIME.fullmatch(s):
        return _checked(s, time.fromisoformat)
    m = _TIME.fullmatch(s)
    if m is None:
        raise NotNormalisable("expected a time such as 00:00:00 or 00:00+01:00")
    try:
        # on a fixed day, so that an offset may carry it over midnight
        at = datetime(2000, 1, 2, *_clock(m), tzinfo=_zone(m["tz"]))
    except ValueError as e:
        raise NotNormalisable(str(e)) from e
    return at.astimezone(UTC).strftime("%H:%M:%S")


# -- phone ------------------------------------------------------------------------------


def normalise_phone(value: Any, region: str | None = None) -> Any:
    if not isinstance(value, str):
        return value
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as e:
        hint = "" if region else " (no resmo.defaultRegion: only international +… numbers)"
        reason = re.sub(r"^\(\d+\) ", "", str(e))  # "(0) Missing or invalid default region."
        raise NotNormalisable(f"not a phone number: {reason}{hint}") from e
    if not phonenumbers.is_possible_number(number):
        raise NotNormalisable("not a possible phone number (wrong length for its country)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def known_region(region: Any) -> bool:
    """An ISO 3166 alpha-2 code phonenumbers has metadata for (``US``, ``NL``…)."""
    return isinstance(region, str) and region in phonenumbers.SUPPORTED_REGIONS
