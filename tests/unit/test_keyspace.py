"""The Redis layout is a contract between processes of different versions: pin it."""

from __future__ import annotations

import time

from shared.redis import keyspace as ks
from shared.redis import sessions, writemodel
from shared.redis.keyspace import SessionField, SessionState, SnapshotsField


def test_session_layout_is_pinned() -> None:
    assert {f.name: f.value for f in SessionField} == {
        "EVENT_ID": "eid",
        "INTEGRATION": "int",
        "SEQ": "seq",
        "TTL": "ttl",
        "RECEIVED": "n",
        "HIGHEST": "max",
        "STATE": "state",
        "TOTAL": "total",
        "COMMIT": "commit",
        "OPENED": "opened",
    }
    assert [s.value for s in SessionState] == ["open", "queued", "done", "superseded", "aborted"]
    assert {f.value for f in SnapshotsField} == {"next", "committed"}
    assert (ks.part_field(3), ks.digest_field(3)) == ("p:3", "d:3")
    assert ks.IMPLICIT_SESSION == "="


def test_keys_are_pinned() -> None:
    assert ks.session_key(3, "_d_e", "g", "s1") == "ingestd:{p3}:session:_d_e\x00g\x00s1"
    assert ks.snapshots_key(3, "_d_e", "g") == "ingestd:{p3}:snapshots:_d_e\x00g"
    assert ks.state_key(3, "_d_e", "g") == "ingestd:{p3}:state:_d_e\x00g"
    assert ks.ingest_stream(3) == "ingestd:{p3}:ingest"
    assert ks.changes_stream(3) == "ingestd:{p3}:changes"
    assert ks.drain_lock(3) == "ingestd:{p3}:lock:drain"
    assert ks.receipt_key("ev_1") == "ingestd:receipt:ev_1"


def test_scripts_spell_no_field_of_their_own() -> None:
    """Every quoted name a session script writes is a field or state of the keyspace."""
    import re

    allowed = {f.value for f in SessionField} | {s.value for s in SessionState}
    allowed |= {f.value for f in SnapshotsField} | {ks.PART_PREFIX, ks.DIGEST_PREFIX}
    commands = {"EXISTS", "HINCRBY", "HSET", "EXPIRE", "HMGET", "HGET", "HKEYS", "HDEL"}
    commands |= {"XADD", "PERSIST", "*"}
    commands |= {"GET", "SET", "EX", "DEL"}  # the Idempotency-Key claim (its own key)
    outcomes = {"gone", "foreign", "part_conflict", "final_conflict", "duplicate"}
    outcomes |= {"part_after_final", "stored"}
    for script in sessions.SCRIPTS:
        quoted = set(re.findall(r"'([^']*)'", script.source))
        assert quoted - allowed - commands - outcomes - {"0", "1"} == set(), script.name


def test_write_model_values() -> None:
    assert writemodel.encode(("ab", 3)) == b"ab|3"
    before = int(time.time() * 1000)
    tomb = writemodel.encode(("", 4))  # a tombstone carries when it was written
    assert tomb.startswith(b"|4|") and before <= int(tomb[3:]) <= time.time() * 1000
    assert writemodel.decode(tomb) == ("", 4) and writemodel.tombstone_ms(tomb) == int(tomb[3:])
    assert writemodel.decode(b"|4") == ("", 4) and writemodel.tombstone_ms(b"|4") is None
    assert writemodel.tombstone_ms(b"ab|3") is None
    assert ks.STATE_OWN_FIELDS == len({writemodel.LOADED, writemodel.LIVE, writemodel.DEAD})
