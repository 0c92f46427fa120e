"""The demo API's in-memory data, which tests change while a source reads it."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

LIST_ID = "4ca5becb8d"  # the Mailchimp list the sample data fills
CAMPAIGN_ID = "42694e9e57"  # the Mailchimp campaign whose email activity the sample fills
API_KEY = "0123456789abcdef0123456789abcdef-us21"
FIRST_USER_ID = 5624716025745  # the seed's Zendesk user id
SAMPLE_EPOCH = datetime(2024, 5, 1, tzinfo=UTC)
STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending")
ACTIONS = ("open", "click", "bounce")

# The seed's schedule format yyyy-MM-ddTHH:mm:ss:fffffffK (a ':' before the fraction),
# RFC 3339 (a '.' before it) and no fraction at all; K is Z, +hh:mm or nothing (UTC).
_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[:.](\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:?\d{2})?$"
)


def parse_time(text: str) -> datetime:
    """A timestamp of the formats above as an aware UTC datetime (ValueError otherwise).
    A '+' that a query string decoded as a space is read back as '+'."""
    t = text.strip()
    t = t[:19] + t[19:].replace(" ", "+")
    m = _TIME.match(t)
    if m is None:
        raise ValueError(f"not a timestamp: {text!r}")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    micros = int((frac or "0")[:6].ljust(6, "0"))
    tz = UTC
    if zone and zone not in ("Z", "z"):
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        tz = timezone(offset if zone[0] == "+" else -offset)
    parts = (int(year), int(month), int(day), int(hour), int(minute), int(second), micros)
    return datetime(*parts, tzinfo=tz).astimezone(UTC)


def member_id(email: str) -> str:
    """Mailchimp's subscriber hash: md5 of the lower-cased email address."""
    return hashlib.md5(email.lower().encode()).hexdigest()


@dataclass(slots=True)
class RequestLog:
    """One request the demo API served. ``at`` is ``time.monotonic()`` on arrival."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float
    method: str = "GET"
    body: bytes = b""


@dataclass
class DemoState:
    """Everything the demo API serves, mutable while it runs (``app[DEMO]``).

    Fault injection: ``fail_next`` holds (status, headers) answers, one popped per
    request (the body is an HTML error page, so a (200, {}) entry is a non-JSON 200);
    ``redirect`` (a base URL, or "" for the same host) makes the next request answer
    ``redirect_status`` with ``Location: <redirect><path and query>``, then clears;
    ``latency_s`` delays every answer.
    """

    api_key: str = API_KEY
    lists: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    campaigns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    bulk_count: int = 0
    absolute_pointers: bool = False
    requests: list[RequestLog] = field(default_factory=list)
    fail_next: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    redirect: str | None = None
    redirect_status: int = 302
    latency_s: float = 0.0
    _next_user_id: int = FIRST_USER_ID
    _next_item: int = 1

    @classmethod
    def sample(
        cls, members: int = 25, users: int = 25, items: int = 25, bulk: int = 0
    ) -> DemoState:
        """A state filled with deterministic data: ``members`` members in list
        :data:`LIST_ID` (last_changed one minute apart from 2024-05-01), each with
        0-2 activities in campaign :data:`CAMPAIGN_ID`, Zendesk users, items."""
        state = cls(bulk_count=bulk)
        state.lists[LIST_ID] = {}
        state.campaigns[CAMPAIGN_ID] = []
        for i in range(members):
            at = SAMPLE_EPOCH + timedelta(minutes=i)
            m = state.add_member(
                f"member{i:05d}@example.com",
                status=STATUSES[i % len(STATUSES)],
                full_name=f"Member {i}",
                changed=at,
            )
            acts = [
                {
                    "action": ACTIONS[j],
                    "timestamp": at + timedelta(hours=j + 1),
                    "ip": f"192.0.2.{j}",
                }
                for j in range(i % 3)
            ]
            state.add_email_activity(m["email_address"], acts)
        for i in range(users):
            state.add_user(f"User {i}", updated=SAMPLE_EPOCH + timedelta(minutes=i))
        for _ in range(items):
            state.add_item()
        return state

    # Mailchimp members --------------------------------------------------------------

    def add_member(
        self,
        email: str,
        *,
        list_id: str = LIST_ID,
        status: str = "subscribed",
        full_name: str | None = None,
        changed: datetime | None = None,
    ) -> dict[str, Any]:
        mid = member_id(email)
        name = full_name if full_name is not None else email.split("@")[0]
        first, _, last = name.partition(" ")
        member: dict[str, Any] = {
            "id": mid,
            "email_address": email,
            "unique_email_id": mid[:10],
            "contact_id": mid,
            "full_name": name,
            "web_id": int(mid[:7], 16),
            "email_type": "html",
            "status": status,
            "merge_fields": {"FNAME": first, "LNAME": last},
            "vip": False,
            "language": "en",
            "source": "API - Generic",
            "tags_count": 0,
            "tags": [],
            "last_changed": changed or datetime.now(UTC),
            "list_id": list_id,
            "_links": [
                {"rel": "self", "href": f"/3.0/lists/{list_id}/members/{mid}", "method": "GET"},
                {"rel": "parent", "href": f"/3.0/lists/{list_id}/members", "method": "GET"},
            ],
        }
        self.lists.setdefault(list_id, {})[mid] = member
        return member

    def change_member(
        self, email: str, *, list_id: str = LIST_ID, changed: datetime | None = None, **fields: Any
    ) -> dict[str, Any]:
        member = self.lists[list_id][member_id(email)]
        member.update(fields)
        member["last_changed"] = changed or datetime.now(UTC)
        return member

    def remove_member(self, email: str, *, list_id: str = LIST_ID) -> None:
        del self.lists[list_id][member_id(email)]

    def add_email_activity(
        self,
        email: str,
        activity: list[dict[str, Any]],
        *,
        campaign_id: str = CAMPAIGN_ID,
        list_id: str = LIST_ID,
    ) -> dict[str, Any]:
        entry = {
            "campaign_id": campaign_id,
            "list_id": list_id,
            "list_is_active": True,
            "email_id": member_id(email),
            "email_address": email,
            "activity": activity,
            "_links": [],
        }
        self.campaigns.setdefault(campaign_id, []).append(entry)
        return entry

    # Zendesk users ------------------------------------------------------------------

    def add_user(
        self, name: str, email: str | None = None, *, updated: datetime | None = None
    ) -> dict[str, Any]:
        uid = self._next_user_id
        self._next_user_id += 1
        at = updated or datetime.now(UTC)
        user: dict[str, Any] = {
            "id": uid,
            "url": f"https://dev.zendesk.com/api/v2/users/{uid}.json",
            "name": name,
            "email": email or f"user{uid}@zenaep.com",
            "created_at": at,
            "updated_at": at,
            "time_zone": "UTC",
            "iana_time_zone": "Etc/UTC",
            "locale": "en-US",
            "locale_id": 1,
            "organization_id": None,
            "role": "end-user",
            "active": True,
            "verified": True,
            "moderator": False,
            "only_private_comments": False,
            "report_csv": False,
            "restricted_agent": True,
            "shared": False,
            "shared_agent": False,
            "suspended": False,
            "ticket_restriction": "requested",
            "two_factor_auth_enabled": False,
            "tags": [],
            "result_type": "user",
        }
        self.users[uid] = user
        return user

    def change_user(
        self, user_id: int, *, updated: datetime | None = None, **fields: Any
    ) -> dict[str, Any]:
        user = self.users[user_id]
        user.update(fields)
        user["updated_at"] = updated or datetime.now(UTC)
        return user

    def remove_user(self, user_id: int) -> None:
        del self.users[user_id]

    # Generic items (PAGE, POINTER, NONE) --------------------------------------------

    def add_item(self, name: str | None = None) -> dict[str, Any]:
        n = self._next_item
        self._next_item += 1
        iid = f"i{n:04d}"
        item = {"id": iid, "name": name or f"item {n}", "n": n}
        self.items[iid] = item
        return item

    def change_item(self, item_id: str, **fields: Any) -> dict[str, Any]:
        self.items[item_id].update(fields)
        return self.items[item_id]

    def remove_item(self, item_id: str) -> None:
        del self.items[item_id]

    def requests_to(self, prefix: str) -> list[RequestLog]:
        """The served requests whose path starts with ``prefix``, in order."""
        return [r for r in self.requests if r.path.startswith(prefix)]
