from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from services.projector.apply import json_patch

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
