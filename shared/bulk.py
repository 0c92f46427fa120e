"""Bulk snapshots, the pure part: scanning items, classifying them, tallying issues.

A bulk event is the complete set of resources of one (table, groupKey) scope.
Its outcome, decided here without I/O:

* every item is validated; its id and content hash are taken;
* an id occurring more than once is a ``duplicate_id`` issue on every later
  occurrence, and none of the occurrences is applied;
* without ``partial``: any issue rejects the whole snapshot (status
  ``rejected``, nothing changes; ``rejected`` counts the items at fault);
* with ``partial``: valid items are applied, items at fault are skipped and
  counted in ``rejected``; a resource whose id appears in any item at fault is
  never deleted, and if some item at fault has no extractable id, no resource
  is deleted at all (a ``deletions_skipped`` issue says so), because that item
  might have been any of them;
* otherwise each item is created, updated or unchanged against the current
  hash, and every live resource of the scope absent from the snapshot is deleted;
* an upsert batch (``upsert``: an incremental pull run's page) is the same minus the
  deletions: nothing absent is deleted, and it is not a snapshot of the scope;
* each item is shaped first (defaults, format normalisation: :mod:`shared.shaping`);
  with ``resmo.onMissingRequired: "skip"`` an item lacking a required property is
  counted in ``skipped``, never rejects the snapshot, and keeps its resource (an item
  skipped without an id means no resource is deleted, as with ``partial``).

Issues carry the item's ``index`` (counted across a session's parts in part
order), ``resourceId`` when the id could be taken, a JSON ``pointer`` into the
item, and for session uploads the ``part``; the list stops at 1,000 and
``issues_total`` counts them all.

The worker (``services/worker/bulk.py``) streams a large snapshot through these
functions in chunks, keeping the id index in Redis; :func:`diff_snapshot` is the
same decision for a snapshot held in memory (the reference the tests compare with).
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared import pointer
from shared.codes import Code
from shared.events import Change, Effect, RawMeta
from shared.jsontext import Fault, item_faults
from shared.processing import (
    MAX_ISSUES,
    MAX_REJECTED_BODIES,
    ScopeState,
    apply_delete,
    apply_upsert,
    rejected_body,
)
from shared.schema_rules import (
    MAX_ID_LENGTH,
    MAX_ISSUES_PER_RESOURCE,
    MISSING,
    CompiledSchema,
    Extracted,
    Issue,
    Step,
    check_resmo,
    path_steps,
    scalar_id,
    storable_hash,
    storable_json,
    walk,
)

# classes of an item in the snapshot's id index (first character of the value)
UNCHANGED = "u"
CHANGED = "c"
INVALID = "x"  # an item at fault whose id is known: never deleted
DUPLICATE = "D"  # prefix added once the id is seen a second time


def _pointer(steps: tuple[Step, ...] | None) -> str | None:
    if not steps:
        return None
    return pointer.join(k for _, k in steps)


class FastExtractor:
    """The id of an item at dict-lookup cost (a snapshot of a million items takes its ids
    first, and extracts the rest only for changed items, through the schema's own
    :meth:`CompiledSchema.extract`, which walks simple paths the same way)."""

    def __init__(self, schema: CompiledSchema) -> None:
        spec = check_resmo(schema.body)
        self.schema = schema
        self.id_steps = path_steps(spec.id)
        one = self.id_steps is not None and len(self.id_steps) == 1 and not self.id_steps[0][0]
        self.id_key: str | None = self.id_steps[0][1] if one and self.id_steps else None
        self.id_pointer = _pointer(self.id_steps)

    def resource_id(self, data: dict[str, Any]) -> str | None:
        """The id, or None when it is missing or invalid (then :meth:`extract` says why)."""
        if self.id_key is not None:  # the common case: a top-level name such as $.id
            v = data.get(self.id_key, MISSING)
            if type(v) is str and 0 < len(v) <= MAX_ID_LENGTH:
                return v
        elif self.id_steps is None:
            ex = self.schema.extract(data)
            return ex.id if isinstance(ex, Extracted) else None
        else:
            v = walk(data, self.id_steps)
        return None if v is MISSING else scalar_id(v)

    def extract(self, data: dict[str, Any]) -> Extracted | Issue:
        """Shape (a changed item is re-read from its part as sent) and extract."""
        self.schema.shape(data)
        return self.schema.extract(data)


@dataclass(frozen=True, slots=True)
class Unsound:
    """An item whose text orjson would have changed silently (an integer beyond 64 bits,
    a duplicate key: :mod:`shared.jsontext`); it is at fault like an invalid item."""

    value: Any
    fault: Fault


def load_items(raw: bytes) -> Any:
    """A bulk body's items as orjson reads them (``orjson.JSONDecodeError`` if it is not
    JSON), each item that orjson would have changed silently wrapped as :class:`Unsound`."""
    items = orjson.loads(raw)
    if isinstance(items, list):
        for i, fault in item_faults(raw, items).items():
            items[i] = Unsound(items[i], fault)
    return items


def _scan_unsound(item: Unsound, index: int, fx: FastExtractor) -> Scanned:
    """The id is kept when the fault cannot touch it, so that, with ``partial``, only that
    resource is protected from deletion (not every resource of the scope)."""
    rid = None
    if isinstance(item.value, dict) and not item.fault.touches(fx.id_pointer):
        fx.schema.shape(item.value)  # the id may be a normalised value
        rid = fx.resource_id(item.value)
    issues = item.fault.issues[:MAX_ISSUES_PER_RESOURCE]
    return Scanned(
        index, rid, None, [Issue(i.code, i.message, i.pointer, rid, index) for i in issues]
    )


@dataclass(slots=True)
class Scanned:
    """One item after validation: its id (when extractable), hash (when valid), issues."""

    index: int
    rid: str | None
    content_hash: str | None
    issues: list[Issue]
    skipped: bool = False  # lacks a required property, and the schema skips such records


def scan_item(data: Any, index: int, fx: FastExtractor) -> Scanned:
    """Validate one item and take its id and content hash (no name/important fields)."""
    if type(data) is Unsound:
        return _scan_unsound(data, index, fx)
    bad = fx.schema.shape(data)
    if not bad and type(data) is dict and fx.schema.is_valid(data):  # the common case
        rid = fx.resource_id(data)
        if rid is not None:
            stored = storable_hash(data)
            if type(stored) is str:
                return Scanned(index, rid, stored, [])
    skipped = fx.schema.missing_required(data)
    if skipped is not None:
        return _scan_skipped(data, index, fx, skipped)
    issues = bad + fx.schema.validate(data)
    rid = fx.resource_id(data) if isinstance(data, dict) else None
    if isinstance(data, dict) and rid is None:
        ex = fx.schema.extract(data)
        if isinstance(ex, Issue):
            issues.insert(0, ex)
    digest = None
    if not issues:
        stored = storable_hash(data)
        if isinstance(stored, Issue):
            issues.append(stored)
        else:
            digest = stored
    issues = [Issue(i.code, i.message, i.pointer, rid, index) for i in issues]
    return Scanned(index, rid, None if issues else digest, issues)


def _scan_skipped(
    data: dict[str, Any], index: int, fx: FastExtractor, issues: list[Issue]
) -> Scanned:
    """A record skipped for a missing required property: not applied, not rejected, and
    (when it has an id) its resource is kept, not deleted as absent."""
    rid = fx.resource_id(data)
    out = [Issue(i.code, i.message, i.pointer, rid, index) for i in issues]
    return Scanned(index, rid, None, out, skipped=True)


@dataclass(slots=True)
class ScannedChunk:
    """A chunk of items after :func:`scan_chunk`, laid out for the write-model lookups:
    the items with an id, in order, as parallel lists."""

    ids: list[bytes]
    hashes: list[bytes | None]  # the content hash (hex); None: the item is at fault
    indexes: list[int]
    faulty: dict[int, Scanned] = field(default_factory=dict)  # position in ids -> item at fault
    invalid: list[Scanned] = field(default_factory=list)  # every item at fault, in order

    def item(self, pos: int) -> Scanned:
        """The item at ``pos`` as a :class:`Scanned` (its issues included)."""
        found = self.faulty.get(pos)
        if found is not None:
            return found
        h = self.hashes[pos]
        digest = h.decode() if h is not None else None
        return Scanned(self.indexes[pos], self.ids[pos].decode(), digest, [])


#: Items already shaped once, by (schema version, the item as sent): the id and content
#: hash shaping and validating it gave. Shaping is a pure function of the two, so an
#: item resent exactly as before (a snapshot integration resends everything, mostly
#: unchanged) is answered without shaping or validating it again. Process-wide, at most
#: this many entries (about 300 bytes each); when full it starts over.
SHAPED_CACHE_ITEMS = 262_144
_shaped: dict[bytes, tuple[bytes, bytes]] = {}


def scan_chunk(items: list[Any], base: int, fx: FastExtractor) -> ScannedChunk:
    """:func:`scan_item` over ``items`` (numbered from ``base``), at least cost for the
    common item: a valid object whose id is a non-empty string at a top-level name (and,
    under a schema that shapes, an item sent before exactly so: :data:`SHAPED_CACHE_ITEMS`)."""
    out = ScannedChunk([], [], [])
    ids, hashes, indexes = out.ids, out.hashes, out.indexes
    is_valid, key, longest = fx.schema.is_valid, fx.id_key, MAX_ID_LENGTH
    shape = fx.schema.shaper  # None: nothing to shape; else the values it could not shape
    salt = fx.schema.salt
    sha256, hexlify, cache = hashlib.sha256, binascii.hexlify, _shaped
    for i, x in enumerate(items, base):
        if key is not None and type(x) is dict:
            sent = None
            if shape is not None:
                as_sent = storable_json(x)
                if type(as_sent) is bytes:
                    sent = sha256(salt + as_sent).digest()
                    hit = cache.get(sent)
                    if hit is not None:
                        ids.append(hit[0])
                        hashes.append(hit[1])
                        indexes.append(i)
                        continue
            if (shape is None or not shape(x)) and is_valid(x):
                rid = x.get(key)
                if type(rid) is str and 0 < len(rid) <= longest:
                    raw = storable_json(x)
                    if type(raw) is bytes:
                        rb, digest = rid.encode(), hexlify(sha256(raw).digest())
                        ids.append(rb)
                        hashes.append(digest)
                        indexes.append(i)
                        if sent is not None:
                            if len(cache) >= SHAPED_CACHE_ITEMS:
                                cache.clear()
                            cache[sent] = (rb, digest)
                        continue
        s = scan_item(x, i, fx)
        if s.issues:
            out.invalid.append(s)
        if s.rid is not None:
            if s.issues:
                out.faulty[len(ids)] = s
            ids.append(s.rid.encode())
            hashes.append(s.content_hash.encode() if s.content_hash else None)
            indexes.append(i)
    return out


def classify(cur: tuple[str, int] | None, content_hash_: str) -> str:
    """UNCHANGED when the write model holds this exact content for the id, else CHANGED."""
    return UNCHANGED if cur is not None and cur[0] == content_hash_ else CHANGED


def index_value(cls: str, index: int) -> str:
    return f"{cls}{index}"


def parse_index_value(raw: bytes | str) -> tuple[str, int, bool]:
    """(class, index of the first occurrence, already known to be duplicated)."""
    s = raw.decode() if isinstance(raw, bytes) else raw
    dup = s.startswith(DUPLICATE)
    if dup:
        s = s[1:]
    return s[0], int(s[1:]), dup


@dataclass(slots=True)
class Tally:
    """Counts and capped issues of one snapshot, fed item by item."""

    partial: bool
    with_parts: bool = False
    upsert: bool = False  # an upsert batch: nothing absent is deleted
    unchanged: int = 0
    rejected: int = 0
    skipped: int = 0
    anonymous_invalid: int = 0
    anonymous_skipped: int = 0  # skipped records without an id: deletions are skipped
    issues: list[dict[str, Any]] = field(default_factory=list)
    issues_total: int = 0
    bodies: list[list[Any]] = field(default_factory=list)  # rejected items, for replay

    def keep_body(self, item: Scanned, data: Any) -> None:
        """Keep a rejected item's body (as shaped) for replay; the first
        :data:`MAX_REJECTED_BODIES` of a snapshot, none of a skipped record."""
        if item.skipped or len(self.bodies) >= MAX_REJECTED_BODIES:
            return
        try:
            raw = orjson.dumps(data.value if type(data) is Unsound else data)
        except TypeError:  # a value orjson cannot write (an integer beyond 64 bits)
            return
        self.bodies.append(rejected_body(item.index, item.rid, raw))

    def issue(self, issue: Issue, part: int | None) -> None:
        self.issues_total += 1
        if len(self.issues) < MAX_ISSUES:
            d = issue.as_dict()
            if self.with_parts and part is not None:
                d["part"] = part
            self.issues.append(d)

    def invalid(self, item: Scanned, part: int | None) -> None:
        if item.skipped:
            self.skipped += 1
            self.anonymous_skipped += item.rid is None
        else:
            self.rejected += 1
            self.anonymous_invalid += item.rid is None
        for i in item.issues:
            self.issue(i, part)

    def duplicate(
        self, item: Scanned, first: bytes | str, pointer: str | None, part: int | None
    ) -> None:
        """``item``'s id was already taken by the item described by ``first``."""
        cls, first_index, known = parse_index_value(first)
        if not known and cls != INVALID:
            self.rejected += 1  # the first occurrence is not applied either
            if cls == UNCHANGED:
                self.unchanged -= 1
        if not item.issues:
            self.rejected += 1
        self.issue(
            Issue(
                Code.DUPLICATE_ID,
                f"id {item.rid!r} occurs more than once in the snapshot "
                f"(first at index {first_index}); no occurrence is applied",
                "" if pointer is None else pointer,  # a path the engine walks: the resource
                item.rid,
                item.index,
            ),
            part,
        )

    @property
    def rejects_all(self) -> bool:
        return self.rejected > 0 and not self.partial

    @property
    def may_delete(self) -> bool:
        anonymous = self.anonymous_skipped + (self.anonymous_invalid if self.partial else 0)
        return not self.upsert and not anonymous

    def final(self, meta: RawMeta, totals: dict[str, int], effects: list[Effect]) -> Change:
        """The snapshot's last change entry: its receipt (counts, issues) and last effects."""
        issues = sorted(self.issues, key=lambda i: i.get("index", -1))
        total = self.issues_total
        if not self.rejects_all and not self.may_delete and not self.upsert:
            total += 1
            if len(issues) < MAX_ISSUES:
                issues.append(
                    {
                        "code": Code.DELETIONS_SKIPPED,
                        "message": f"{self.anonymous_invalid + self.anonymous_skipped} "
                        "rejected or skipped item(s) have no extractable id, so no resource "
                        "was deleted (any of them might have been one of those items)",
                        "pointer": None,
                    }
                )
        status = "rejected" if self.rejects_all else "applied"
        return Change(
            meta,
            status,  # type: ignore[arg-type]
            effects if status == "applied" else [],
            self.unchanged if status == "applied" else 0,
            self.rejected,
            issues=issues,
            issues_total=total,
            totals=totals if status == "applied" else {},
            skipped=self.skipped,
            bodies=self.bodies or None,
        )


def deletion(change: Change, state: ScopeState, rid: str, cur: tuple[str, int]) -> bool:
    """Delete ``rid`` (absent from the snapshot) given its write-model value."""
    state.known[rid] = cur
    return apply_delete(change, state, rid)


def diff_snapshot(
    meta: RawMeta,
    items: Iterable[Any],
    schema: CompiledSchema,
    current: dict[str, tuple[str, int]],
    partial: bool = False,
    upsert: bool = False,
) -> tuple[Change, dict[str, tuple[str, int]]]:
    """The whole decision for a snapshot held in memory: (receipt entry, state updates)."""
    fx = FastExtractor(schema)
    tally = Tally(partial, upsert=upsert)
    index: dict[str, str] = {}
    valid: list[tuple[Scanned, Any]] = []
    for i, data in enumerate(items):
        item = scan_item(data, i, fx)
        if item.issues:
            tally.invalid(item, None)
            tally.keep_body(item, data)
        if item.rid is None:
            continue
        cls = INVALID if item.issues else classify(current.get(item.rid), item.content_hash or "")
        first = index.get(item.rid)
        if first is not None:
            tally.duplicate(item, first, fx.id_pointer, None)
            if not first.startswith(DUPLICATE):
                index[item.rid] = DUPLICATE + first
            continue
        index[item.rid] = index_value(cls, i)
        if cls == UNCHANGED:
            tally.unchanged += 1
        elif cls == CHANGED:
            valid.append((item, data))
    out = Change(meta, "applied")
    state = ScopeState(known=dict(current))
    if not tally.rejects_all:
        for item, data in valid:
            if index[item.rid or ""].startswith(DUPLICATE):
                continue
            ex = fx.extract(data)
            assert isinstance(ex, Extracted)
            apply_upsert(out, state, ex, data)
        if tally.may_delete:
            for rid, cur in current.items():
                if rid not in index:
                    deletion(out, state, rid, cur)
    final = tally.final(meta, out.counts(), out.effects)
    final.local = schema.ownership.pointers or None
    return final, state.dirty if final.status == "applied" else {}
