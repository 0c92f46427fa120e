"""The ADF expression subset of the seed (shared.pull.expr)."""

from __future__ import annotations

import pytest

from shared.pull.expr import compile_template

ZENDESK_PATH = (
    "/api/v2/search/export@{if(empty(coalesce(pipeline()?.parameters?.ingestionStart,'')),"
    "'?query=type:user&filter[type]=user&','')}"
)
START = "2024-05-01T10:20:30Z"
END = "2024-05-02T00:00:00Z"


def test_the_seed_zendesk_path_in_both_run_kinds() -> None:
    t = compile_template(ZENDESK_PATH)
    assert not t.is_static
    assert t.render("", END) == "/api/v2/search/export?query=type:user&filter[type]=user&"
    assert t.render(START, END) == "/api/v2/search/export"


@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        ("plain text", START, "plain text"),
        ("a@@b user@example.com", START, "a@b user@example.com"),
        ("@{pipeline().parameters.ingestionEnd}", START, END),
        ("@{pipeline()?.parameters?.ingestionStart}|", "", "|"),
        (
            "x@{concat('a', 'it''s', pipeline()?.parameters?.ingestionStart)}y",
            START,
            f"xait's{START}y",
        ),
        (
            "@{formatDateTime(pipeline()?.parameters?.ingestionStart, 'yyyy-MM-dd')}",
            START,
            "2024-05-01",
        ),
        ("@{formatDateTime(pipeline()?.parameters?.ingestionStart, 'yyyy')}", "", ""),
        ("@{formatDateTime('2024-05-01T10:20:30.5+02:00')}", "", "2024-05-01T08:20:30.5000000Z"),
        ("@{coalesce(pipeline()?.parameters?.ingestionStart, 'none')}", "", "none"),
        (
            "@{if(equals(pipeline()?.parameters?.ingestionStart, null_not_needed()), 'a', 'b')}",
            "",
            None,
        ),
        ("@{if(equals(1, 1), 'same', 'other')}", "", "same"),
        ("@{if(equals(true, 1), 'same', 'other')}", "", "other"),
        ("@{IF(EMPTY(''), 'yes', 'no')}", "", "yes"),
        ("@concat('/v1/', 'items')", "", "/v1/items"),
        ("@{ empty( 'x' ) }", "", "False"),
    ],
)
def test_renders(text: str, start: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            compile_template(text)
        return
    assert compile_template(text).render(start, END) == expected


def test_static() -> None:
    assert compile_template("/3.0/lists/${listId}/members").is_static
    assert compile_template("a@@b").render("", END) == "a@b"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("@{utcNow()}", "'utcNow' (supported"),
        ("@{addDays(pipeline()?.parameters?.ingestionStart, 1)}", "'addDays'"),
        ("@{pipeline()?.parameters?.windowStart}", "'windowStart'"),
        ("@{pipeline()?.globalParameters?.x}", "only pipeline()?.parameters"),
        ("@{pipeline(1)?.parameters?.ingestionStart}", "no arguments"),
        ("@{'open", "unterminated string"),
        ("@{if(empty(''), 'a')}", "if() takes 3 arguments, got 2"),
        ("@{concat('a')", "expected '}'"),
        ("@{concat('a') + 'b'}", "expected '}', got '+'"),
        ("@{variables('x')}", "'variables'"),
        ("@{x}", "unknown name 'x'"),
        ("@{concat('a').length}", "property access"),
        ("@{formatDateTime('2024-05-01T00:00:00Z', 'yyyy-QQ')}", "unknown token 'Q'"),
        ("@{formatDateTime('yesterday')}", "not an RFC 3339 timestamp"),
        ("@{formatDateTime('2024-05-01T00:00:00Z', 'd')}", "standard format 'd'"),
        ("@{#}", "unexpected character '#'"),
        ("@me", "unknown name 'me'"),
    ],
)
def test_refused_with_what_and_where(text: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        compile_template(text)
    assert says in str(info.value)
    assert "offset" in str(info.value)


def test_offset_points_at_the_function() -> None:
    with pytest.raises(ValueError, match="at offset 7"):
        compile_template("/path@{utcNow()}")


def test_nesting_is_bounded_and_the_at_form_says_how_to_escape() -> None:
    deep = "@{" + "concat(" * 40 + "'x'" + ")" * 40 + "}"
    with pytest.raises(ValueError, match="nested deeper than 32"):
        compile_template(deep)
    ok = "@{" + "concat(" * 30 + "'x'" + ")" * 30 + "}"
    assert compile_template(ok).render("", END) == "x"
    with pytest.raises(ValueError, match="@@ is a literal @"):
        compile_template("@timestamp")
    assert compile_template("@@timestamp").render("", END) == "@timestamp"
