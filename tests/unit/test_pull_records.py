"""Records of a page (shared.pull.records): contentPath, keep / skip / wrap, explode."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shared.codes import Code
from shared.pull.model import PullError
from shared.pull.records import extract
from shared.pull.spec import Extract, parse_spec
from tests.unit.pull_examples import EMAIL_ACTIVITY, mailchimp_members

EMAILS = Extract("$.emails", skip=("_links",), wrapper="email")
ACTIVITY = Extract("$.email.activity", wrapper="activity")


def test_the_seed_email_activity_explode() -> None:
    page = copy.deepcopy(EMAIL_ACTIVITY)
    count, records = extract(page, EMAILS, ACTIVITY)
    assert count == 2  # records at contentPath, before explode
    email = {
        "campaign_id": "42694e9e57",
        "list_id": "a1b2c3",
        "email_id": "62eeb292278cc15f5817cb78f7790b08",
        "email_address": "urist.mcvankab@freddiesjokes.com",
    }
    assert records == [
        {
            "email": email,
            "activity": {"action": "open", "timestamp": "2024-05-01T10:20:30Z", "ip": "10.0.0.1"},
        },
        {
            "email": email,
            "activity": {"action": "click", "timestamp": "2024-05-01T10:21:00Z", "ip": "10.0.0.2"},
        },
    ]  # the second email's activity is empty: no record
    assert page == EMAIL_ACTIVITY  # the input is never mutated


def test_explode_keep_skip_and_default_wrapper() -> None:
    content = Extract(
        "$.emails", keep=("email_id", "activity", "_links"), skip=("_links",), wrapper="email"
    )
    explode = Extract("$.email.activity", keep=("action", "ip"), skip=("ip",))
    count, records = extract(EMAIL_ACTIVITY, content, explode)
    assert count == 2
    assert records == [
        {"email": {"email_id": "62eeb292278cc15f5817cb78f7790b08"}, "activity": {"action": "open"}},
        {
            "email": {"email_id": "62eeb292278cc15f5817cb78f7790b08"},
            "activity": {"action": "click"},
        },
    ]


def test_explode_with_a_wildcard_path_and_without_wrapper() -> None:
    content = Extract("$.emails", keep=("email_id", "activity"))
    explode = Extract("$.activity[*]", wrapper="event")
    _, records = extract(EMAIL_ACTIVITY, content, explode)
    assert [r["event"]["action"] for r in records] == ["open", "click"]
    assert records[0] == {
        "email_id": "62eeb292278cc15f5817cb78f7790b08",
        "event": records[0]["event"],
    }


def test_explode_missing_or_null_array_yields_nothing() -> None:
    page = {"items": [{"id": 1}, {"id": 2, "subs": None}, {"id": 3, "subs": [{"s": 1}]}]}
    count, records = extract(page, Extract("$.items"), Extract("$.subs"))
    assert count == 3
    assert records == [{"id": 3, "subs": {"s": 1}}]


def test_the_seed_mailchimp_members_content_path() -> None:
    spec = parse_spec(mailchimp_members())
    page = {
        "members": [
            {"id": "m1", "email_address": "a@example.com", "list_id": "L", "_links": [1]},
            {"id": "m2", "email_address": "b@example.com", "list_id": "L", "_links": [2]},
        ],
        "list_id": "L",
        "total_items": 2,
    }
    count, records = extract(page, spec.content, spec.explode)
    assert count == 2
    assert records == [
        {"member": {"id": "m1", "email_address": "a@example.com"}},
        {"member": {"id": "m2", "email_address": "b@example.com"}},
    ]
    assert page["members"][0]["_links"] == [1]


@pytest.mark.parametrize(
    ("path", "data", "expected"),
    [
        ("$.items", {"items": [{"a": 1}, {"a": 2}]}, [{"a": 1}, {"a": 2}]),
        ("items", {"items": [{"a": 1}]}, [{"a": 1}]),
        ("$.items[*]", {"items": [{"a": 1}, {"a": 2}]}, [{"a": 1}, {"a": 2}]),
        ("$.items[*]", {"items": [{"a": 1}]}, [{"a": 1}]),
        ("$.data.obj", {"data": {"obj": {"a": 1}}}, [{"a": 1}]),
        ("$.items", {"items": []}, []),
        ("$.items", {"items": None}, []),
        ("$", [{"a": 1}], [{"a": 1}]),
        (
            "$.items[?@.keep == true]",
            {"items": [{"keep": True}, {"keep": False}]},
            [{"keep": True}],
        ),
    ],
)
def test_content_path_shapes(path: str, data: Any, expected: list[Any]) -> None:
    count, records = extract(data, Extract(path), None)
    assert (count, records) == (len(expected), expected)


def test_records_with_nothing_to_shape_are_a_new_list_over_the_page() -> None:
    page = {"items": [{"a": 1, "b": {"c": 2}}, "not an object"]}
    before = copy.deepcopy(page)
    _, records = extract(page, Extract("$.items"), None)
    assert records == page["items"] and records is not page["items"]
    records.append("more")
    assert page == before


def test_content_path_not_found_names_the_page() -> None:
    page = {"error": "x" * 1000, "data": []}
    with pytest.raises(PullError) as info:
        extract(page, Extract("$.members"), None)
    e = info.value
    assert e.code == Code.CONTENT_PATH_NOT_FOUND
    assert "$.members" in e.message
    assert '{"error":"xxx' in e.message
    assert len(e.message) < 400  # 300 characters of the page


def test_explode_matching_several_arrays_is_an_error() -> None:
    page = {"items": [{"a": [1], "b": [2]}]}
    with pytest.raises(PullError) as info:
        extract(page, Extract("$.items"), Extract("$.*"))
    assert info.value.code == Code.INVALID_RESPONSE


def test_non_object_records_are_wrapped_but_not_filtered() -> None:
    _, records = extract({"ids": [1, 2]}, Extract("$.ids", skip=("x",), wrapper="id"), None)
    assert records == [{"id": 1}, {"id": 2}]
