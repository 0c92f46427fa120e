from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from shared.projection import json_patch

DOC: dict[str, Any] = {"id": "e1", "a/b": {"c": [1, 2]}, "t~x": None, "n": {"m": True}}


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({}, DOC),  # create: built directly
        (DOC, {}),  # delete: built directly
        (DOC, {**DOC, "n": {"m": False}, "new": 1}),  # update: jsonpatch's diff
        (DOC, {"id": "e1"}),
    ],
)
def test_patch_turns_before_into_after(before: dict[str, Any], after: dict[str, Any]) -> None:
    patch = json_patch(before, after)
    assert jsonpatch.apply_patch(before, patch) == after


def test_create_patch_escapes_pointer_tokens() -> None:
    paths = {op["path"] for op in json_patch({}, DOC)}
    assert paths == {"/id", "/a~1b", "/t~0x", "/n"}


def test_projector_cuts_reads_into_bounded_transactions() -> None:
    from services.projector.main import TXN_BYTES, transactions

    big = {b"c": b"x" * (TXN_BYTES // 2 + 1)}
    rows = [(b"1-0", big), (b"2-0", big), (b"3-0", {b"c": b"y"}), (b"4-0", {})]
    chunks = transactions(rows)
    assert [[sid for sid, _ in c] for c in chunks] == [[b"1-0"], [b"2-0", b"3-0", b"4-0"]]
    huge = [(b"5-0", {b"c": b"z" * (TXN_BYTES * 2)})]
    assert transactions(huge) == [huge]  # one entry is never split
