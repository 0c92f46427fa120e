"""The small readers :mod:`.spec` checks a ``sourceSpec`` with: typed members, placeholders.

Pure. Every refusal is ``ApiError(invalid_source_spec)`` (400) with the member's pointer.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import orjson

from shared import pointer as jp
from shared.codes import Code
from shared.errors import ApiError
from shared.patterns import LINEAR
from shared.pull.expr import compile_template
from shared.schema_rules import DRAFT_2020_12

#: ``${name}``: a user param, anywhere
PLACEHOLDER = re.compile(r"\$\{([^{}]*)\}")
#: the seed's ``{domain}`` form, in the host only (not ``${…}`` nor ``@{…}``)
HOST_PLACEHOLDER = re.compile(r"(?<![$@])\{([A-Za-z_][A-Za-z0-9_-]*)\}")
SCHEDULE_QUERY = "{SCHEDULE_QUERY}"
START_TIME = "{START_TIME}"
END_TIME = "{END_TIME}"
RESERVED = frozenset({"SCHEDULE_QUERY", "START_TIME", "END_TIME"})
DRAFT_07 = {
    "http://json-schema.org/draft-07/schema#",
    "http://json-schema.org/draft-07/schema",
    "https://json-schema.org/draft-07/schema#",
    "https://json-schema.org/draft-07/schema",
}


def err(message: str, pointer: str) -> ApiError:
    return ApiError(Code.INVALID_SOURCE_SPEC, message, pointer=pointer, status=400)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def get_obj(
    d: dict[str, Any], key: str, ptr: str, *, required: bool = False
) -> dict[str, Any] | None:
    value = d.get(key)
    if value is None:
        if required:
            raise err(f"{key} is required", f"{ptr}/{key}")
        return None
    if not isinstance(value, dict):
        raise err(f"{key} must be a JSON object, got {_kind(value)}", f"{ptr}/{key}")
    return value


def get_str(d: dict[str, Any], key: str, ptr: str, *, required: bool = False) -> str | None:
    value = d.get(key)
    if value is None:
        if required:
            raise err(f"{key} is required", f"{ptr}/{key}")
        return None
    if not isinstance(value, str):
        raise err(f"{key} must be a string, got {_kind(value)}", f"{ptr}/{key}")
    return value


def get_int(d: dict[str, Any], key: str, ptr: str, *, minimum: int) -> int | None:
    """An integer given as a number or a numeric string (the seed has both)."""
    value = d.get(key)
    if value is None:
        return None
    n: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,18}\s*", value):
        n = int(value)
    if n is None:
        raise err(
            f"{key} must be an integer or a numeric string, got {_kind(value)}", f"{ptr}/{key}"
        )
    if n < minimum:
        raise err(f"{key} must be at least {minimum}, got {n}", f"{ptr}/{key}")
    return n


def get_str_list(d: dict[str, Any], key: str, ptr: str) -> tuple[str, ...]:
    value = d.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise err(f"{key} must be an array of strings, got {_kind(value)}", f"{ptr}/{key}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise err(f"{key} must hold strings, got {_kind(item)}", f"{ptr}/{key}/{i}")
    return tuple(value)


def scalar_map(d: dict[str, Any], key: str, ptr: str) -> dict[str, str]:
    """queryParams / headerParams: names to strings (a number or boolean is its JSON text)."""
    value = get_obj(d, key, ptr)
    out: dict[str, str] = {}
    for name, v in (value or {}).items():
        if isinstance(v, str):
            out[name] = v
        elif isinstance(v, bool):
            out[name] = "true" if v else "false"
        elif isinstance(v, int | float):
            out[name] = str(v)
        else:
            raise err(
                f"{key} values must be strings (or numbers), got {_kind(v)}",
                f"{ptr}/{key}/{jp.escape(name)}",
            )
    return out


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: ``false`` is not ``0``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) or (_is_number(a) and _is_number(b))) and a == b


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def candidates(value: Any) -> tuple[Any, ...]:
    """``Const:false`` is JSON ``false``; ``Const:x`` (or ``x``) is JSON x when it parses,
    and also the string x."""
    if not isinstance(value, str):
        return (value,)
    text = value.removeprefix("Const:")
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return (text,)
    return (text, parsed)


class Scan:
    """Collects the placeholders a spec uses, refusing undeclared ones and bad templates."""

    def __init__(self, declared: frozenset[str]) -> None:
        self.declared = declared
        self.used: set[str] = set()
        self.host_used: set[str] = set()
        self.header_used: set[str] = set()
        self.schedule_query_at: list[str] = []
        #: host {name} placeholders spec.properties does not declare (still required params)
        self.implicit: set[str] = set()

    def text(
        self,
        value: str,
        ptr: str,
        *,
        host: bool = False,
        header: bool = False,
        template: bool = True,
    ) -> None:
        if template:
            try:
                compile_template(value)
            except ValueError as e:
                raise err(str(e), ptr) from e
        names = [(m.group(1), True) for m in PLACEHOLDER.finditer(value)]
        if host:
            names += [(m.group(1), False) for m in HOST_PLACEHOLDER.finditer(value)]
        for name, dollar in names:
            if name in RESERVED:
                continue
            if not name:
                raise err("an empty placeholder ${} names no param", ptr)
            if name not in self.declared:
                if dollar:
                    raise err(
                        f"placeholder ${{{name}}} is not declared in sourceSpec.spec.properties",
                        ptr,
                    )
                # the seed's own Mailchimp spec has "https://{domain}.api.mailchimp.com"
                # with no "domain" in spec.properties (Adobe fills it from the base
                # connection): the host's {name} form is a param the source must give
                self.implicit.add(name)
            self.used.add(name)
            if host:
                self.host_used.add(name)
            if header:
                self.header_used.add(name)
        if SCHEDULE_QUERY in value:
            self.schedule_query_at.append(ptr)

    def walk(self, value: Any, ptr: str) -> None:
        """Every string inside a JSON value (bodyParams)."""
        if isinstance(value, str):
            self.text(value, ptr)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.walk(v, f"{ptr}/{jp.escape(k)}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.walk(v, f"{ptr}/{i}")


def params_schema(
    schema: Any, ptr: str
) -> tuple[dict[str, Any], Any, frozenset[str], frozenset[str]]:
    """(the schema, its compiled validator, the declared param names, the secret ones).

    A secret: a property with ``"format": "password"``, ``"writeOnly": true`` or
    ``"secret": true``. Patterns compile with the linear engine (shared.patterns)."""
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise err("spec must be a JSON Schema object", ptr)
    dialect = schema.get("$schema")
    cls: Any
    if dialect is None or dialect in DRAFT_2020_12:
        cls, draft = jsonschema_rs.Draft202012Validator, "2020-12"
    elif dialect in DRAFT_07:
        cls, draft = jsonschema_rs.Draft7Validator, "draft-07"
    else:
        raise err(
            f"spec must be JSON Schema draft-07 or 2020-12, got $schema {dialect!r}",
            ptr + "/$schema",
        )
    if schema.get("type", "object") != "object":
        raise err('spec must describe an object ("type": "object")', ptr + "/type")
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise err("spec.properties must be a JSON object", ptr + "/properties")
    try:
        validator = cls(schema, validate_formats=True, offline=True, pattern_options=LINEAR)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as e:
        at = jp.join(getattr(e, "instance_path", []), ptr)
        raise err(f"not a valid JSON Schema {draft}: {str(e).splitlines()[0]}", at) from e
    secrets = frozenset(
        name
        for name, prop in props.items()
        if isinstance(prop, dict)
        and (
            prop.get("format") == "password"
            or prop.get("writeOnly") is True
            or prop.get("secret") is True
        )
    )
    return schema, validator, frozenset(props), secrets
