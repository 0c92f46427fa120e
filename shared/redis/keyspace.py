"""Every Redis key, stream, consumer group, hash field and arq queue name ingestd uses.

Nothing else in the code base spells these strings: Lua scripts get the field
names from here (:func:`shared.redis.scripts.lua`), and the snapshot-session
layout (fields and states) is pinned by ``tests/unit/test_keyspace.py``. Per-partition keys carry a
``{pN}`` hash tag so that, on Redis Cluster, a partition's streams, lock and
write-model state live in one slot and can change in one MULTI/EXEC.
"""

from __future__ import annotations

import zlib
from enum import StrEnum

PREFIX = "ingestd"

INGEST_GROUP = "workers"
PROJECTOR_GROUP = "projector"
ARQ_QUEUE = f"{PREFIX}:arq"

# field names inside stream entries
F_META = b"m"
F_BODY = b"b"
F_CHANGE = b"c"

# A scope's write model (``state_key``; layout and codec in :mod:`shared.redis.writemodel`):
# resource id -> "hash|version" (tombstone "|version") plus three fields no id can take
# (ids never contain NUL): the marker that it was loaded from PostgreSQL, holding the
# format it was loaded in (an older format is loaded again), and the counts of live and
# of deleted ids, kept by every writer with HINCRBY (so live + dead + 3 == HLEN).
STATE_LOADED_FIELD = "\x00loaded"
STATE_FORMAT = b"2"
STATE_LIVE_FIELD = "\x00live"
STATE_DEAD_FIELD = "\x00dead"
STATE_OWN_FIELDS = 3


def _tag(p: int) -> str:
    return f"{PREFIX}:{{p{p}}}"


def ingest_stream(p: int) -> str:
    return f"{_tag(p)}:ingest"


def changes_stream(p: int) -> str:
    return f"{_tag(p)}:changes"


def drain_lock(p: int) -> str:
    return f"{_tag(p)}:lock:drain"


def project_lock(p: int) -> str:
    return f"{_tag(p)}:lock:project"


def state_key(p: int, resource_type: str, group_key: str) -> str:
    """Write-model state of one scope: field = resource id, value = ``hash|version``."""
    return f"{_tag(p)}:state:{resource_type}\x00{group_key}"


def compacted_key(state: str) -> str:
    """Set (for good) once tombstones of the scope whose write model is ``state`` were
    compacted: an id missing from that write model may have had versions, and PostgreSQL
    has the last one (same hash tag as ``state``)."""
    tag, _, scope = state.partition(":state:")
    return f"{tag}:compacted:{scope}"


def compaction_due_key(p: int) -> str:
    """When partition ``p``'s tombstones are next due for compaction (epoch ms; set for
    good, and moved on by each compaction)."""
    return f"{_tag(p)}:compaction-due"


def partition_state_pattern(p: int) -> str:
    """Every scope's write model of partition ``p``."""
    return f"{_tag(p)}:state:*"


def recovery_key(p: int) -> str:
    """Set when Redis was found behind PostgreSQL on partition ``p`` (it lost the tail of
    its writes): the last ingest-stream id at that moment. Raw events up to it may have
    taken effect already and are checked against PostgreSQL before they are decided."""
    return f"{_tag(p)}:recovery"


def state_pattern() -> str:
    return f"{PREFIX}:{{p*}}:state:*"


def receipt_key(event_id: str) -> str:
    """An accepted event's pending marker (who sent it; a session upload's place), set
    with its append and unlinked by the projector once PostgreSQL holds its receipt."""
    return f"{PREFIX}:receipt:{event_id}"


def idempotency_key(integration: str, key_digest: str) -> str:
    """An accepted request's Idempotency-Key (``key_digest``: SHA-256 hex of the key) of
    one integration -> the request's fingerprint, event id and first response (JSON;
    :mod:`services.gateway.idempotency`). Claimed in the same script as the event's XADD;
    PostgreSQL keeps the key on the event's ``ingest_events`` row, this is its cache.

    Not partition-tagged: one key may name requests of any scope. On Redis Cluster the
    claim and the XADD would have to share a slot (not supported yet)."""
    return f"{PREFIX}:idem:{integration}:{key_digest}"


class SessionState(StrEnum):
    """The ``state`` field of a snapshot session (:mod:`shared.redis.sessions`)."""

    OPEN = "open"  # taking parts
    QUEUED = "queued"  # complete; its commit event is in the ingest stream
    DONE = "done"  # applied or refused by the worker; the header answers retries
    SUPERSEDED = "superseded"  # a snapshot of the scope opened later was applied first
    ABORTED = "aborted"  # DELETE …/sessions/{id}


class SessionField(StrEnum):
    """Fields of a session hash (``session_key``); parts and digests are ``p:N``/``d:N``."""

    EVENT_ID = "eid"  # the snapshot's event id (every part's 202 names it)
    INTEGRATION = "int"  # the owner; another integration's parts are refused
    SEQ = "seq"  # number the scope gave the session when it opened
    TTL = "ttl"  # seconds the session lives after its latest part
    RECEIVED = "n"  # parts stored
    HIGHEST = "max"  # highest part number stored
    STATE = "state"  # a SessionState
    TOTAL = "total"  # the final part's number, once known
    COMMIT = "commit"  # the commit event's metadata, stored with the final part
    OPENED = "opened"  # epoch ms of the first part


PART_PREFIX = "p:"
DIGEST_PREFIX = "d:"


def part_field(n: int) -> str:
    return f"{PART_PREFIX}{n}"


def digest_field(n: int) -> str:
    return f"{DIGEST_PREFIX}{n}"


class SnapshotsField(StrEnum):
    """Fields of a scope's snapshot sequence (``snapshots_key``)."""

    NEXT = "next"  # last number handed to an opening session
    COMMITTED = "committed"  # number of the newest snapshot applied


# a single-request bulk is stored as a one-part session named IMPLICIT + its event id
IMPLICIT_SESSION = "="


def session_key(p: int, resource_type: str, group_key: str, session: str) -> str:
    """A bulk upload session: its parts, their digests and its commit event (a hash).

    Tagged with the scope's partition so the worker can retire it in the same
    MULTI/EXEC that commits the snapshot."""
    return f"{_tag(p)}:session:{resource_type}\x00{group_key}\x00{session}"


def snapshots_key(p: int, resource_type: str, group_key: str) -> str:
    """Per-scope snapshot sequence (:class:`SnapshotsField`)."""
    return f"{_tag(p)}:snapshots:{resource_type}\x00{group_key}"


def bulk_work_keys(p: int, event_id: str, token: str) -> tuple[str, str]:
    """The worker's scratch keys while it diffs one snapshot: the snapshot's id index
    (hash) and its staged change entries (list). Named per lease token, so a worker
    that lost its lease cannot disturb the next holder's diff."""
    base = f"{_tag(p)}:bulk:{event_id}:{token}"
    return f"{base}:index", f"{base}:out"


def partition_of(resource_type: str, group_key: str, partitions: int) -> int:
    """Partition = hash(resource type, groupKey) mod P (stable across processes)."""
    return zlib.crc32(f"{resource_type}\x00{group_key}".encode()) % partitions


def drain_job_id(p: int, nonce: str) -> str:
    return f"drain:{p}:{nonce}"


def stream_id_tuple(sid: bytes | str) -> tuple[int, int]:
    s = sid.decode() if isinstance(sid, bytes) else sid
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


def stream_id(t: tuple[int, int]) -> str:
    return f"{t[0]}-{t[1]}"
