"""Stream encodings: raw metadata and change entries."""

from __future__ import annotations

import orjson

from shared.events import Change, Effect, RawMeta


def meta() -> RawMeta:
    return RawMeta(
        "ev_1", "single", "i-1", "employee", "_d_employee", "g", "hired", {"by": "hr"}, 5,
        extra={"session": "=ev_1"},
    )  # fmt: skip


def test_change_embeds_the_raw_metadata_it_was_decoded_from_unchanged() -> None:
    raw = meta().encode()
    decoded = RawMeta.decode(raw)
    assert decoded == meta() and decoded.raw == raw
    change = Change(decoded, "applied", [Effect("created", "a", 1, "h", "n", {}, {"x": 1})])
    entry = Change.encode_many([change])
    assert raw in entry  # embedded as is: not encoded again, not a JSON string
    (back,) = Change.decode_many(entry)
    assert back == change and back.meta.raw is None


def test_entries_written_with_metadata_as_a_json_string_still_decode() -> None:
    change = Change(meta(), "rejected", issues=[{"code": "x"}], issues_total=1)
    old = change.to_dict()
    old["m"] = meta().encode().decode()  # the format before metadata was embedded
    assert Change.decode(orjson.dumps(old)) == change
    assert Change.decode_many(orjson.dumps([old, old])) == [change, change]
