"""sourceSpec parsing and params checking (shared.pull.spec): the seed's examples parse,
every refusal names its member."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shared.codes import Code
from shared.errors import ApiError
from shared.pull.spec import EndCondition, Extract, check_params, parse_spec
from tests.unit.pull_examples import mailchimp_members, minimal, zendesk_users

A = "/sourceSpec/attributes"
P = A + "/paginationParams"


def test_the_seed_mailchimp_members_spec_parses() -> None:
    raw = mailchimp_members()
    spec = parse_spec(raw)
    assert spec.raw is raw
    assert spec.ui["category"] == {"key": "marketingAutomation"}
    assert spec.host == "https://{domain}.api.mailchimp.com"
    assert spec.path == "/3.0/lists/${listId}/members"
    assert spec.method == "GET"
    assert spec.content == Extract("$.members", ("_links", "total_items", "list_id"), (), "member")
    assert spec.explode is None
    p = spec.paging
    assert (p.type, p.limit_name, p.limit_value, p.offset_name) == (
        "OFFSET",
        "count",
        100,
        "offset",
    )
    assert (p.delay_ms, p.maximum_request, p.end_condition) == (0, 10_000, None)
    s = spec.schedule
    assert s is not None and not s.advance
    assert (s.start_name, s.end_name) == ("since_last_changed", "before_last_changed")
    assert s.start_format == s.end_format == "yyyy-MM-ddTHH:mm:ss:fffffffK"
    # {domain} is not in spec.properties (Adobe fills it from the base connection):
    # here it is a param the source must give all the same
    assert spec.placeholders == {"listId", "domain"}
    assert spec.implicit_params == {"domain"}
    assert spec.secrets == frozenset()
    check_params(spec, {"listId": "a1b2", "domain": "us6"})


def test_the_seed_zendesk_pieces_parse() -> None:
    spec = parse_spec(zendesk_users())
    p = spec.paging
    assert p.type == "CONTINUATION_TOKEN"
    assert (p.token_path, p.parameter_type, p.parameter_name) == (
        "$.meta.after_cursor",
        "QUERYPARAM",
        "page[after]",
    )
    assert p.delay_ms == 850
    assert p.end_condition == EndCondition("$.meta.has_more", "Const:false")
    s = spec.schedule
    assert s is not None and s.advance
    assert s.incremental == "type:user updated > {START_TIME} updated < {END_TIME}"
    assert spec.query == {"query": "{SCHEDULE_QUERY}", "filter[type]": "user"}
    assert spec.secrets == {"token"}
    assert spec.header_placeholders == {"token"}


def test_the_seed_pagination_examples_parse() -> None:
    offset = parse_spec(
        minimal(
            {
                "type": "OFFSET",
                "limitName": "limit",
                "limitValue": "4",
                "offSetName": "offset",
                "endConditionName": "$.hasMore",
                "endConditionValue": "Const:false",
            }
        )
    ).paging
    assert (offset.limit_value, offset.offset_name) == (4, "offset")
    for path in ("paging.next", "$.paging.next"):
        pointer = parse_spec(
            minimal({"type": "POINTER", "limitName": "limit", "limitValue": 1, "pointerPath": path})
        ).paging
        assert pointer.pointer is not None
        assert pointer.pointer.match({"paging": {"next": "/x"}}).obj == "/x"  # type: ignore[union-attr]
    page = parse_spec(
        minimal(
            {
                "type": "PAGE",
                "limitName": "pageSize",
                "limitValue": 100,
                "initialPageIndex": 1,
                "endPageIndex": "headers.x-pagecount",
                "pageParamName": "pageNumber",
                "maximumRequest": 10000,
            }
        )
    ).paging
    assert (page.initial_page, page.end_page, page.page_param) == (1, "x-pagecount", "pageNumber")
    assert (
        parse_spec(
            minimal({"type": "PAGE", "pageParamName": "p", "endPageIndex": "7"})
        ).paging.end_page
        == 7
    )
    none = parse_spec(minimal({"type": "NONE"})).paging
    assert none.type == "NONE" and none.initial_page == 0


@pytest.mark.parametrize(
    ("value", "data", "met"),
    [
        ("Const:false", {"m": False}, True),
        ("Const:false", {"m": 0}, False),
        ("Const:false", {"m": "false"}, True),  # the string x matches too
        ("Const:false", {"m": True}, False),
        ("Const:0", {"m": 0}, True),
        ("Const:0", {"m": False}, False),
        ("Const:done", {"m": "done"}, True),
        ("done", {"m": "done"}, True),
        ("3", {"m": 3.0}, True),
        (False, {"m": False}, True),
        ("Const:null", {"m": None}, True),
        ("Const:false", {}, False),
    ],
)
def test_end_condition(value: Any, data: Any, met: bool) -> None:
    assert EndCondition("$.m", value).met(data) is met


def refused(obj: Any, pointer: str, says: str = "") -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_spec(obj)
    e = info.value
    assert (e.code, e.status, e.pointer) == (Code.INVALID_SOURCE_SPEC, 400, pointer), e.body()
    assert says in e.message
    return e


def with_attr(path: list[str], value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = copy.deepcopy(base if base is not None else mailchimp_members())
    node = obj["attributes"]
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return obj


@pytest.mark.parametrize(
    ("path", "value", "pointer", "says"),
    [
        (["urlParams"], KeyError, A + "/urlParams", "required"),
        (["urlParams", "host"], KeyError, A + "/urlParams/host", "required"),
        (["urlParams", "path"], KeyError, A + "/urlParams/path", "required"),
        (["urlParams", "method"], KeyError, A + "/urlParams/method", "required"),
        (["urlParams", "method"], "PUT", A + "/urlParams/method", "GET or POST"),
        (["urlParams", "host"], 42, A + "/urlParams/host", "must be a string, got a number"),
        (["urlParams", "host"], "ftp://x", A + "/urlParams/host", "http:// or https://"),
        (["urlParams", "queryParams"], {"a": {"b": 1}}, A + "/urlParams/queryParams/a", "strings"),
        (["urlParams", "queryParams"], [], A + "/urlParams/queryParams", "JSON object"),
        (["urlParams", "path"], "/3.0/${nope}", A + "/urlParams/path", "${nope} is not declared"),
        (["urlParams", "path"], "/x/${}", A + "/urlParams/path", "empty placeholder"),
        (["urlParams", "queryParams"], {"q": "${nope}"}, A + "/urlParams/queryParams/q", "nope"),
        (["urlParams", "host"], "https://${nope}.x.com", A + "/urlParams/host", "nope"),
        (["urlParams", "path"], "/x@{utcNow()}", A + "/urlParams/path", "'utcNow'"),
        (["headerParams"], {"X-Key": "${nope}"}, A + "/headerParams/X-Key", "nope"),
        (
            ["headerParams"],
            {"X-Key": 1.5, "Bad Name": "x"},
            A + "/headerParams/Bad Name",
            "header name",
        ),
        (["headerParams"], {"X": "a\r\nB: c"}, A + "/headerParams/X", "CR, LF"),
        (["bodyParams"], {"q": "x"}, A + "/bodyParams", "needs method POST"),
        (["contentPath"], KeyError, A + "/contentPath", "required"),
        (["contentPath", "path"], KeyError, A + "/contentPath/path", "required"),
        (["contentPath", "path"], "$.members[", A + "/contentPath/path", "not a valid JSONPath"),
        (["contentPath", "path"], " ", A + "/contentPath/path", "non-empty"),
        (["contentPath", "skipAttributes"], "_links", A + "/contentPath/skipAttributes", "array"),
        (
            ["contentPath", "skipAttributes"],
            ["a", 1],
            A + "/contentPath/skipAttributes/1",
            "strings",
        ),
        (
            ["contentPath", "overrideWrapperAttribute"],
            1,
            A + "/contentPath/overrideWrapperAttribute",
            "string",
        ),
        (["explodeEntityPath"], {"path": "$.a..["}, A + "/explodeEntityPath/path", "JSONPath"),
        (["explodeEntityPath"], {}, A + "/explodeEntityPath/path", "required"),
        (["paginationParams"], KeyError, P[:-17] + "/paginationParams", "required"),
        (["paginationParams", "type"], KeyError, P + "/type", "required"),
        (["paginationParams", "type"], "CURSOR", P + "/type", "unknown pagination type 'CURSOR'"),
        (["paginationParams", "limitName"], KeyError, P + "/limitName", "OFFSET needs limitName"),
        (["paginationParams", "limitValue"], KeyError, P + "/limitValue", "needs limitValue"),
        (["paginationParams", "offSetName"], KeyError, P + "/offsetName", "needs offsetName"),
        (["paginationParams", "limitValue"], "ten", P + "/limitValue", "integer or a numeric"),
        (["paginationParams", "limitValue"], True, P + "/limitValue", "integer"),
        (["paginationParams", "limitValue"], 1.5, P + "/limitValue", "integer"),
        (["paginationParams", "limitValue"], "0", P + "/limitValue", "at least 1"),
        (["paginationParams", "endConditionName"], "$.x", P + "/endConditionValue", "needs"),
        (
            ["paginationParams", "endConditionValue"],
            "Const:false",
            P + "/endConditionName",
            "needs",
        ),
        (["paginationParams", "delayRequestMillis"], "-5", P + "/delayRequestMillis", "at least 0"),
        (["paginationParams", "maximumRequest"], [], P + "/maximumRequest", "integer"),
        (
            ["scheduleParams", "scheduleStartParamFormat"],
            "yyyy-QQ",
            A + "/scheduleParams/scheduleStartParamFormat",
            "'Q'",
        ),
        (
            ["scheduleParams", "scheduleEndParamName"],
            5,
            A + "/scheduleParams/scheduleEndParamName",
            "string",
        ),
        (["scheduleParams", "type"], "CRON", A + "/scheduleParams/type", "ADVANCE"),
        (["uiAttributes"], "x", A + "/uiAttributes", "JSON object"),
    ],
)
def test_refusals_name_the_member(path: list[str], value: Any, pointer: str, says: str) -> None:
    refused(with_attr(path, value), pointer, says)


@pytest.mark.parametrize(
    ("pagination", "pointer", "says"),
    [
        ({"type": "POINTER"}, P + "/pointerPath", "POINTER needs pointerPath"),
        ({"type": "POINTER", "pointerPath": "$.["}, P + "/pointerPath", "JSONPath"),
        (
            {"type": "POINTER", "pointerPath": "$.n", "limitName": "l"},
            P + "/limitValue",
            "together",
        ),
        (
            {"type": "CONTINUATION_TOKEN", "parameterName": "c"},
            P + "/continuationTokenPath",
            "needs",
        ),
        (
            {"type": "CONTINUATION_TOKEN", "continuationTokenPath": "$.c"},
            P + "/parameterName",
            "needs",
        ),
        (
            {
                "type": "CONTINUATION_TOKEN",
                "continuationTokenPath": "$.c",
                "parameterName": "c",
                "parameterType": "BODY",
            },
            P + "/parameterType",
            "QUERYPARAM or HEADERPARAM",
        ),
        (
            {"type": "CONTINUATION_TOKEN", "continuationTokenPath": "$.c[", "parameterName": "c"},
            P + "/continuationTokenPath",
            "JSONPath",
        ),
        ({"type": "PAGE"}, P + "/pageParamName", "PAGE needs pageParamName"),
        (
            {"type": "PAGE", "pageParamName": "p", "endPageIndex": "footer.x"},
            P + "/endPageIndex",
            "headers.<",
        ),
        (
            {"type": "PAGE", "pageParamName": "p", "initialPageIndex": "-1"},
            P + "/initialPageIndex",
            "at least 0",
        ),
        (
            {"type": "NONE", "endConditionName": "$.[", "endConditionValue": 1},
            P + "/endConditionName",
            "JSONPath",
        ),
        (
            {"type": "OFFSET", "limitName": "l", "limitValue": 5, "offsetName": ""},
            P + "/offsetName",
            "needs",
        ),
    ],
)
def test_pagination_refusals(pagination: dict[str, Any], pointer: str, says: str) -> None:
    refused(minimal(pagination), pointer, says)


def test_advance_schedule_needs_both_expressions_and_schedule_query_needs_advance() -> None:
    z = zendesk_users()
    del z["attributes"]["scheduleParams"]["backfill"]
    refused(z, A + "/scheduleParams/backfill", "ADVANCE needs backfill")
    z = zendesk_users()
    del z["attributes"]["scheduleParams"]
    refused(z, A + "/urlParams/queryParams/query", "{SCHEDULE_QUERY}")
    z = zendesk_users()
    z["attributes"]["scheduleParams"]["incremental"] = "type:user updated > ${nope}"
    refused(z, A + "/scheduleParams/incremental", "nope")
    z = zendesk_users()
    z["attributes"]["scheduleParams"]["paramFormat"] = "yyyy-MM-ddTHH:mm:ssX"
    refused(z, A + "/scheduleParams/paramFormat", "unknown token 'X'")


def test_body_placeholders_are_checked_everywhere() -> None:
    spec = minimal(bodyParams={"filter": {"ids": ["${id}", "${other}"]}})
    spec["attributes"]["urlParams"]["method"] = "POST"
    refused(spec, A + "/bodyParams/filter/ids/1", "${other}")
    spec["attributes"]["bodyParams"] = {
        "filter": {"ids": ["${id}"], "n": 3, "at": "@{pipeline()?.parameters?.ingestionEnd}"}
    }
    parsed = parse_spec(spec)
    assert parsed.placeholders == {"id"}
    spec["attributes"]["bodyParams"]["x"] = {"y": "@{bad()}"}
    refused(spec, A + "/bodyParams/x/y", "'bad'")


@pytest.mark.parametrize(
    ("schema", "pointer", "says"),
    [
        ("x", "/sourceSpec/spec", "JSON Schema object"),
        (
            {"$schema": "http://json-schema.org/draft-04/schema#"},
            "/sourceSpec/spec/$schema",
            "draft-07 or 2020-12",
        ),
        ({"type": "array"}, "/sourceSpec/spec/type", "object"),
        ({"properties": []}, "/sourceSpec/spec/properties", "JSON object"),
        ({"properties": {"id": {"type": 5}}}, "/sourceSpec/spec/properties/id/type", "2020-12"),
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "properties": {"id": {"minLength": "x"}},
            },
            "/sourceSpec/spec/properties/id/minLength",
            "draft-07",
        ),
        (
            {"properties": {"id": {"$ref": "https://example.com/s.json"}}},
            "/sourceSpec/spec",
            "2020-12",
        ),
    ],
)
def test_params_schema_refusals(schema: Any, pointer: str, says: str) -> None:
    obj = minimal()
    obj["spec"] = schema
    refused(obj, pointer, says)


def test_params_schema_drafts_and_defaults() -> None:
    obj = minimal()
    obj["spec"] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "properties": {"id": {"type": "string"}},
    }
    assert parse_spec(obj).placeholders == frozenset()
    del obj["spec"]
    parse_spec(obj)  # no spec: no params
    obj["attributes"]["urlParams"]["path"] = "/x/${id}"
    refused(obj, A + "/urlParams/path", "${id}")


def test_secrets_and_unknown_keys() -> None:
    obj = minimal()
    obj["spec"]["properties"] = {
        "a": {"type": "string", "format": "password"},
        "b": {"type": "string", "writeOnly": True},
        "c": {"type": "string", "secret": True},
        "d": {"type": "string", "secret": False},
    }
    obj["attributes"]["somethingNew"] = {"kept": True}
    obj["attributes"]["urlParams"]["method"] = "post"
    spec = parse_spec(obj)
    assert spec.secrets == {"a", "b", "c"}
    assert spec.raw["attributes"]["somethingNew"] == {"kept": True}
    assert spec.method == "POST"


def test_not_an_object() -> None:
    refused([], "/sourceSpec")
    refused({"spec": {}}, A, "required")


def params_refused(spec_obj: dict[str, Any], params: Any, pointer: str, says: str = "") -> ApiError:
    with pytest.raises(ApiError) as info:
        check_params(parse_spec(spec_obj), params)
    e = info.value
    assert (e.code, e.status, e.pointer) == (Code.INVALID_SOURCE_PARAMS, 400, pointer), e.body()
    assert says in e.message
    return e


def test_check_params() -> None:
    z = zendesk_users()
    check_params(parse_spec(z), {"subdomain": "acme", "token": "t0p-secret"})
    params_refused(z, [], "/params", "JSON object")
    params_refused(z, {"subdomain": "acme"}, "/params", "token")
    params_refused(z, {"subdomain": 5, "token": "x"}, "/params/subdomain", "string")
    params_refused(z, {"subdomain": "a/b", "token": "x"}, "/params/subdomain", "host")
    params_refused(z, {"subdomain": "evil.example:1", "token": "x"}, "/params/subdomain", "host")
    params_refused(z, {"subdomain": "a", "token": "x\r\nEvil: 1"}, "/params/token", "header")
    mc = mailchimp_members()
    params_refused(mc, {"listId": "x"}, "/params/domain", "'domain'")
    params_refused(mc, {"listId": None, "domain": "us6"}, "/params/listId", "null")
    params_refused(mc, {"listId": "x", "domain": "us6.example.com/evil?"}, "/params/domain", "host")


def test_check_params_messages_never_carry_a_secret() -> None:
    z = zendesk_users()
    z["spec"]["properties"]["token"]["minLength"] = 40
    z["spec"]["properties"]["token"]["pattern"] = "^[a-z]+$"
    e = params_refused(z, {"subdomain": "acme", "token": "hunter2-very-secret"}, "/params/token")
    assert "hunter2" not in e.message and "******" in e.message


def test_params_placeholder_values_may_be_numbers_or_booleans() -> None:
    obj = minimal(
        urlParams={"host": "https://api.example.com", "path": "/x/${n}/${b}", "method": "GET"}
    )
    obj["spec"]["properties"] = {"n": {"type": "integer"}, "b": {"type": "boolean"}}
    spec = parse_spec(obj)
    check_params(spec, {"n": 5, "b": True})
    with pytest.raises(ApiError) as info:
        check_params(spec, {"n": 5, "b": [True]})
    assert info.value.pointer == "/params/b"


def test_check_params_masks_a_secret_in_its_json_form() -> None:
    z = zendesk_users()
    z["spec"]["properties"]["token"]["enum"] = ["only-this"]
    e = params_refused(z, {"subdomain": "acme", "token": 'my"secret'}, "/params/token")
    assert "secret" not in e.message, e.message
