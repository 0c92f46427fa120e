"""Event types and their encoding on the streams.

A raw event (``ingest:{p}``) is two fields: ``m`` = JSON metadata written by the
gateway, ``b`` = the request body exactly as received (parsed again by the
worker, so the gateway never re-serialises it). A change entry
(``changes:{p}``) is one per batch of raw events, not one per raw event: the
worker's drain commit writes a JSON array with one change per raw event of the
batch, each holding every effect the worker decided for it
(:meth:`Change.encode_many`; :meth:`Change.decode_many` also reads a single
object). A large bulk snapshot is the exception: its effects are split over
several consecutive entries of one change each; every entry but the last has
``last`` false, and only the last carries the snapshot's totals, issues and
receipt.

A ``batch`` raw event (``POST …/batch-event/{table}``) is stored like a single-request
bulk (its body in a one-part session) and decided item by item, in array order, as
single events of one scope; its one change carries every item's effects and the
per-item outcomes (``items``) its receipt lists. A raw event sent with an
Idempotency-Key carries ``x.idem`` = [key, request fingerprint], which its receipt row
keeps (:meth:`RawMeta.idempotency`).

A ``patch`` raw event is an admin's JSON Merge Patch (RFC 7396) of one resource's
local fields (``ids`` holds its id; :mod:`shared.patching`); its effect's ``data`` is
that merge patch, which the projector applies to the stored row. A change of a table
with local fields lists their pointers (``local``): the projector keeps the stored
values there on every sync (:mod:`shared.ownership`).

A rejected single event's change carries its raw body, a snapshot's final change the
bodies of its rejected items (``bodies``, at most 1,000), which the projector keeps in
``rejected_bodies`` for replay; accepted changes carry none. A replay's metadata names
the event it replays (``x.replayOf``, and ``x.replayItem`` for a bulk item).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Kind = Literal["single", "delete", "bulk", "patch", "batch"]
Op = Literal["created", "updated", "deleted"]


_ids = random.Random(os.urandom(32))  # unique, not secret: no syscall per id


def new_event_id() -> str:
    """Time-ordered, unique: 12 hex digits of epoch ms + 16 random hex digits."""
    return f"ev_{int(time.time() * 1000):012x}{_ids.getrandbits(64):016x}"


@dataclass(slots=True)
class RawMeta:
    id: str
    kind: Kind
    integration: str | None  # None: an admin's patch
    table: str
    resource_type: str
    group_key: str
    event: str | None
    actor: Any
    received_ms: int
    ids: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # the JSON this was decoded from: a change entry embeds it as is (orjson.Fragment)
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def idempotency(self) -> tuple[str | None, str | None]:
        """(Idempotency-Key, request fingerprint) the request was sent with, if any."""
        idem = self.extra.get("idem")
        return (idem[0], idem[1]) if idem else (None, None)

    def encode(self) -> bytes:
        return self.raw if self.raw is not None else orjson.dumps(self.to_dict())

    def embedded(self) -> Any:
        """This metadata as a value inside another orjson document, encoded once."""
        return orjson.Fragment(self.raw) if self.raw is not None else self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "k": self.kind,
            "i": self.integration,
            "t": self.table,
            "rt": self.resource_type,
            "g": self.group_key,
            "ev": self.event,
            "a": self.actor,
            "r": self.received_ms,
        }
        if self.ids is not None:
            d["ids"] = self.ids
        if self.extra:
            d["x"] = self.extra
        return d

    @classmethod
    def decode(cls, raw: bytes) -> RawMeta:
        meta = cls.from_dict(orjson.loads(raw))
        meta.raw = raw
        return meta

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RawMeta:
        return cls(
            d["id"],
            d["k"],
            d["i"],
            d["t"],
            d["rt"],
            d["g"],
            d.get("ev"),
            d.get("a"),
            d["r"],
            d.get("ids"),
            d.get("x") or {},
        )


@dataclass(slots=True)
class Effect:
    op: Op
    resource_id: str
    version: int
    content_hash: str | None = None
    name: str | None = None
    important: dict[str, Any] | None = None
    data: dict[str, Any] | None = None

    def as_list(self) -> list[Any]:
        return [
            self.op,
            self.resource_id,
            self.version,
            self.content_hash,
            self.name,
            self.important,
            self.data,
        ]

    @classmethod
    def from_list(cls, v: list[Any]) -> Effect:
        return cls(*v)


@dataclass(slots=True)
class Change:
    """Everything the worker decided for one raw event (or one slice of a bulk snapshot).

    ``last`` is false on every slice of a multi-entry snapshot but its final one;
    ``totals`` (created/updated/deleted over the whole snapshot) is set on that final
    entry, whose own ``effects`` may be a subset.
    """

    meta: RawMeta
    status: Literal["applied", "rejected"]
    effects: list[Effect] = field(default_factory=list)
    unchanged: int = 0
    rejected: int = 0
    ignored: list[str] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)
    issues_total: int = 0
    last: bool = True
    totals: dict[str, int] | None = None
    # decided after Redis lost writes: the projector checks its event is not applied yet
    recheck: bool = False
    # records left out for lacking a required property (resmo.onMissingRequired: skip)
    skipped: int = 0
    # pointers of the table's local fields (x-ownership local): kept from the stored row
    local: list[str] | None = None
    # a batch event's per-item outcomes (the first MAX_ITEMS) and how many items it had
    items: list[dict[str, Any]] | None = None
    items_total: int = 0
    # a rejected event's raw body, or its rejected items': [item index | None, resource
    # id | None, body as text], kept in PostgreSQL for replay (rejected_bodies)
    bodies: list[list[Any]] | None = None

    def counts(self) -> dict[str, int]:
        if self.totals is not None:
            c = {op: self.totals.get(op, 0) for op in ("created", "updated", "deleted")}
        else:
            c = {"created": 0, "updated": 0, "deleted": 0}
            for e in self.effects:
                c[e.op] += 1
        return {
            **c,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "skipped": self.skipped,
        }

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "m": self.meta.embedded(),
            "s": self.status,
            "e": [e.as_list() for e in self.effects],
            "u": self.unchanged,
            "rj": self.rejected,
            "ig": self.ignored,
            "is": self.issues,
            "it": self.issues_total,
        }
        if not self.last:
            d["l"] = False
        if self.totals is not None:
            d["t"] = self.totals
        if self.recheck:
            d["rc"] = True
        if self.skipped:
            d["sk"] = self.skipped
        if self.local:
            d["lo"] = self.local
        if self.items is not None:
            d["bi"] = self.items
            d["bt"] = self.items_total
        if self.bodies:
            d["rb"] = self.bodies
        return d

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @staticmethod
    def encode_many(changes: list[Change]) -> bytes:
        """One stream entry for a whole batch: one XADD instead of one per raw event."""
        return orjson.dumps([c.to_dict() for c in changes])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Change:
        m = d["m"]  # an object; a JSON string in entries written before 2026-11
        return cls(
            RawMeta.from_dict(m) if isinstance(m, dict) else RawMeta.decode(m.encode()),
            d["s"],
            [Effect.from_list(e) for e in d["e"]],
            d["u"],
            d["rj"],
            d["ig"],
            d["is"],
            d["it"],
            d.get("l", True),
            d.get("t"),
            d.get("rc", False),
            d.get("sk", 0),
            d.get("lo"),
            d.get("bi"),
            d.get("bt", 0),
            d.get("rb"),
        )

    @classmethod
    def decode(cls, raw: bytes) -> Change:
        return cls.from_dict(orjson.loads(raw))

    @classmethod
    def decode_many(cls, raw: bytes) -> list[Change]:
        """A change entry holds one change (an object) or a batch of them (an array)."""
        d = orjson.loads(raw)
        return [cls.from_dict(x) for x in d] if isinstance(d, list) else [cls.from_dict(d)]
