"""Custom schema rules (seed 000) and the compiled form the worker validates with.

Pure: values in, values out. :func:`prepare_schema` checks a submitted schema
and returns the body to store; :class:`CompiledSchema` validates resources and
extracts id / name / important fields from them.

JSONPath choice: ``resmo.id`` and ``resmo.name`` must be *singular* queries
(RFC 9535 §2.3.5: only name and index selectors), because one resource has one
id and one name; a path with wildcards, slices, filters or descendant segments
is refused. ``importantFields`` may select many nodes; a path that selects
several is stored as a list.

Regular expressions are bounded in cost: see :mod:`shared.patterns`.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from typing import Any, Literal

import jsonpath
import jsonschema_rs
import orjson

from shared import pointer, shaping
from shared.codes import Code
from shared.errors import SchemaRuleError
from shared.ownership import NONE, Ownership
from shared.paths import MISSING as MISSING
from shared.paths import Step as Step
from shared.paths import normalise_path as normalise_path
from shared.paths import path_steps as path_steps
from shared.paths import walk as walk
from shared.patterns import BACKTRACK_LIMIT, BACKTRACKING, LINEAR, check_patterns

DRAFT_2020_12 = {
    "https://json-schema.org/draft/2020-12/schema",
    "https://json-schema.org/draft/2020-12/schema#",
    "http://json-schema.org/draft/2020-12/schema",
    "http://json-schema.org/draft/2020-12/schema#",
}
IDENTIFIER = re.compile(r"^_?[a-z][a-z0-9_]{0,30}$")
MAX_ISSUES_PER_RESOURCE = 20
#: characters of a resource id. The key (resource type, groupKey, id) is one btree index
#: row of at most 2704 bytes: 65 ASCII + 100 characters (<= 400 bytes) + 512 characters
#: (<= 2048 bytes, 4 per character at worst) + headers stays under 2,550
MAX_ID_LENGTH = 512


_IDENTIFIER_CODES: dict[str, Code] = {"prefix": Code.INVALID_PREFIX, "table": Code.INVALID_TABLE}


def check_identifier(value: Any, field: Literal["prefix", "table"]) -> str:
    # fullmatch: with re.match, "$" would also accept a trailing newline ("employee\n")
    if isinstance(value, str) and IDENTIFIER.fullmatch(value):
        return value
    rule = (
        f"{IDENTIFIER.pattern} (a string of lower-case letters, digits and underscores, "
        "at most 32 characters)"
    )
    if value is None:
        message = f"{field} is missing: give one that matches {rule}"
    else:
        message = f"{field} must match {rule}; {_json(value)} does not"
    raise SchemaRuleError(_IDENTIFIER_CODES[field], message, pointer=f"/{field}")


def _json(value: Any) -> str:
    """A value as JSON text, to show it in a message."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits
        return repr(value)


def compile_path(path: Any, pointer: str, *, singular: bool) -> jsonpath.JSONPath:
    if not isinstance(path, str) or not path.strip():
        raise SchemaRuleError(
            Code.INVALID_RESMO_PATH, "must be a non-empty JSONPath string", pointer=pointer
        )
    try:
        compiled = jsonpath.compile(normalise_path(path))
    except jsonpath.JSONPathError as e:
        first = str(e).splitlines()[0]
        raise SchemaRuleError(
            Code.INVALID_RESMO_PATH, f"{path!r} is not a valid JSONPath: {first}", pointer=pointer
        ) from e
    if not isinstance(compiled, jsonpath.JSONPath):
        raise SchemaRuleError(
            Code.INVALID_RESMO_PATH,
            f"{path!r}: compound JSONPath is not supported",
            pointer=pointer,
        )
    if singular and not compiled.singular_query():
        raise SchemaRuleError(
            Code.RESMO_PATH_NOT_SINGULAR,
            f"{path!r} may select more than one node; id and name must be singular paths "
            "(names and indexes only, no wildcards, slices, filters or '..')",
            pointer=pointer,
        )
    return compiled


@dataclass(frozen=True, slots=True)
class ResmoSpec:
    id: str
    name: str | None
    important_fields: tuple[str, ...]


def check_resmo(schema: dict[str, Any], base: str = "") -> ResmoSpec:
    resmo = schema.get("resmo")
    if not isinstance(resmo, dict):
        raise SchemaRuleError(
            Code.MISSING_RESMO,
            "the schema root must have a 'resmo' object with at least an 'id' JSONPath",
            pointer=f"{base}/resmo",
        )
    allowed = ("id", "name", "importantFields", *shaping.RESMO_SHAPING_KEYS)
    unknown = set(resmo) - set(allowed)
    if unknown:
        raise SchemaRuleError(
            Code.INVALID_RESMO,
            f"unknown keys in resmo: {sorted(unknown)}; allowed: {', '.join(allowed)}",
            pointer=f"{base}/resmo",
        )
    shaping.check_options(resmo, base)
    if "id" not in resmo:
        raise SchemaRuleError(
            Code.MISSING_RESMO_ID, "resmo.id is required", pointer=f"{base}/resmo/id"
        )
    compile_path(resmo["id"], f"{base}/resmo/id", singular=True)
    name = resmo.get("name")
    if name is not None:
        compile_path(name, f"{base}/resmo/name", singular=True)
    fields = resmo.get("importantFields", [])
    if not isinstance(fields, list):
        raise SchemaRuleError(
            Code.INVALID_RESMO_PATH,
            "resmo.importantFields must be a list of JSONPath strings",
            pointer=f"{base}/resmo/importantFields",
        )
    for i, f in enumerate(fields):
        compile_path(f, f"{base}/resmo/importantFields/{i}", singular=False)
    return ResmoSpec(id=resmo["id"], name=name, important_fields=tuple(fields))


def prepare_schema(schema: Any) -> dict[str, Any]:
    """Check every rule of seed 000; return the body to store (with unevaluatedProperties)."""
    if not isinstance(schema, dict) or not schema:
        raise SchemaRuleError(
            Code.SCHEMA_NOT_OBJECT, "the schema must be a non-empty JSON object", pointer="/schema"
        )
    if schema.get("type") != "object":
        raise SchemaRuleError(
            Code.SCHEMA_ROOT_NOT_OBJECT,
            'the schema root must have "type": "object" (resources are JSON objects)',
            pointer="/schema/type",
        )
    dialect = schema.get("$schema")
    if dialect is not None and (not isinstance(dialect, str) or dialect not in DRAFT_2020_12):
        raise SchemaRuleError(
            Code.UNSUPPORTED_DRAFT,
            f"only JSON Schema draft 2020-12 is supported, got $schema {dialect!r}",
            pointer="/schema/$schema",
        )
    spec = check_resmo(schema, "/schema")
    own = Ownership.of(schema, "/schema")
    own.check_resmo_path(path_steps(spec.id), "/schema/resmo/id")
    own.check_resmo_path(path_steps(spec.name) if spec.name else None, "/schema/resmo/name")
    check_patterns(schema, "/schema")
    stored = dict(schema)
    stored["unevaluatedProperties"] = False
    try:
        _validator(stored)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as e:
        raise SchemaRuleError(
            Code.INVALID_SCHEMA,
            "not a valid JSON Schema 2020-12: " + str(e).splitlines()[0],
            pointer="/schema" + _pointer(getattr(e, "instance_path", [])),
        ) from e
    return stored


def _validator(schema: dict[str, Any], *, backtracking: bool = False) -> Any:
    # offline: a remote $ref would make the gateway (and every worker compiling the
    # schema) fetch an arbitrary URL; only local refs and the bundled meta-schemas resolve
    return jsonschema_rs.Draft202012Validator(
        schema,
        validate_formats=True,
        offline=True,
        pattern_options=BACKTRACKING if backtracking else LINEAR,
    )


def _pointer(parts: Any) -> str:
    return pointer.join(parts)


def _printable(text: str) -> str:
    return text.replace("\x00", "\\u0000") if "\x00" in text else text


@dataclass(frozen=True, slots=True)
class Issue:
    code: Code
    message: str
    pointer: str | None = None
    resource_id: str | None = None
    index: int | None = None

    def as_dict(self) -> dict[str, Any]:
        # messages echo input; U+0000 in them would fail the sync_issues insert
        d: dict[str, Any] = {
            "code": self.code,
            "message": _printable(self.message),
            "pointer": None if self.pointer is None else _printable(self.pointer),
        }
        if self.resource_id is not None:
            d["resourceId"] = _printable(self.resource_id)
        if self.index is not None:
            d["index"] = self.index
        return d


@dataclass(frozen=True, slots=True)
class Extracted:
    id: str
    name: str | None
    important: dict[str, Any]
    content_hash: str


def content_hash(data: Any) -> str:
    """Canonical content hash: SHA-256 of JSON with sorted keys (orjson)."""
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL, not an escaped backslash


def storable_json(data: Any) -> bytes | Issue:
    """The canonical JSON the content hash is taken of, or why the resource could never
    be stored. Such a resource must be rejected by the worker: it would fail every
    later step and wedge its partition."""
    try:
        raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return Issue(Code.TOO_DEEP, "the resource nests too deeply to be stored", "")
    if b"\\u0000" in raw and _NUL.search(raw):
        return Issue(
            Code.INVALID_CHARACTER,
            "U+0000 (NUL) cannot be stored (PostgreSQL text refuses it)",
            nul_pointer(data),
        )
    return raw


def nul_pointer(data: Any) -> str:
    """Where the first U+0000 is: the string value that holds it, or for a key, the object
    holding that key (a pointer holding U+0000 could not be stored either). Iterative:
    documents nest deeper than Python's stack."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return at
        elif isinstance(v, dict):
            if any("\x00" in k for k in v):
                return at
            stack.extend((item, pointer.join([k], at)) for k, item in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend((item, f"{at}/{n}") for n, item in reversed(list(enumerate(v))))
    return ""


def storable_hash(data: Any) -> str | Issue:
    """The content hash (as :func:`content_hash`), or why the resource cannot be stored."""
    raw = storable_json(data)
    return raw if isinstance(raw, Issue) else hashlib.sha256(raw).hexdigest()


def scalar_id(value: Any) -> str | None:
    """The id rule: a non-empty string of at most :data:`MAX_ID_LENGTH` characters, or an
    integer (as its decimal string)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value if 0 < len(value) <= MAX_ID_LENGTH else None
    if isinstance(value, int):
        return str(value)
    return None


def _invalid_id(value: Any, at: str) -> Issue:
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        return Issue(
            Code.INVALID_ID,
            f"the id is {len(value)} characters long; at most {MAX_ID_LENGTH} are allowed "
            "(the key of a resource must fit one index row)",
            at,
        )
    return Issue(Code.INVALID_ID, "the id must be a non-empty string or an integer", at)


_COMPILED = itertools.count()  # numbers each compiled version of this process


class CompiledSchema:
    """A stored schema version, ready to validate and extract resources."""

    def __init__(self, body: dict[str, Any]) -> None:
        spec = check_resmo(body)
        self.body = body
        try:
            self.ownership = Ownership.of(body)
        except SchemaRuleError:  # a version stored before ownership rules: all external
            self.ownership = NONE
        local = self.ownership.local
        shaped = self.ownership.without_local_defaults(body) if local else body
        self.plan = plan = shaping.compile_plan(shaped)
        #: None when the schema has nothing to shape (no defaults, no normalised format)
        self.shaper = None if plan.root is None else plan.shape
        #: unique to this compiled version: keys what was shaped under it (shared/bulk.py)
        self.salt = next(_COMPILED).to_bytes(8, "big")
        self.skip_missing = plan.on_missing_required == "skip"
        checked = plan.validation_body  # the body, minus format where a normaliser runs
        # a sync's payload is checked with every local property refused (field_not_owned)
        ingest = self.ownership.ingest_schema(checked) if self.ownership.local else checked
        try:
            self._validator = _validator(ingest)
            self.backtracking = False
        except (jsonschema_rs.ValidationError, ValueError):
            # a version stored before patterns had to run in linear time: keep it working
            # on the backtracking engine, bounded per match (prepare_schema refuses it now)
            self._validator = _validator(ingest, backtracking=True)
            self.backtracking = True
        # a resource with its local fields (a PATCH's result) is checked with the schema as is
        self._full = (
            _validator(checked, backtracking=self.backtracking) if local else self._validator
        )
        self.is_valid = self._validator.is_valid  # True/False only: the fast path of validate
        self._id_path = normalise_path(spec.id)
        self._id = compile_path(spec.id, "/resmo/id", singular=True)
        self._name = compile_path(spec.name, "/resmo/name", singular=True) if spec.name else None
        self._important = [(p, compile_path(p, "", singular=False)) for p in spec.important_fields]
        # singular paths of names and indexes are walked as dicts (the engine costs ~15 µs
        # a query); the engine answers the rest, and explains a missing or invalid id
        self._id_steps = path_steps(spec.id)
        self._name_steps = path_steps(spec.name) if spec.name else None
        self._important_steps = [
            path_steps(p) if c.singular_query() else None for p, c in self._important
        ]

    def shape(self, data: Any) -> list[Issue]:
        """Fill defaults and normalise formats of ``data`` in place (:mod:`shared.shaping`),
        before it is validated and hashed; the values that could not be normalised.
        Idempotent: shaping a shaped record changes nothing."""
        if self.shaper is None or type(data) is not dict:
            return []
        return [Issue(Code.INVALID_FORMAT, b.message, b.pointer) for b in self.shaper(data)]

    def missing_required(self, data: Any) -> list[Issue] | None:
        """With ``resmo.onMissingRequired: "skip"``: the ``skipped_missing_required`` issues
        of a record that lacks a required property (pointer: that property), else None."""
        if not self.skip_missing or type(data) is not dict or self._validator.is_valid(data):
            return None
        found = []
        for e in self._validator.iter_errors(data):
            if type(e.kind).__name__ == "Required":
                at = _pointer([*e.instance_path, e.kind.property])
                found.append(
                    Issue(
                        Code.SKIPPED_MISSING_REQUIRED,
                        f"the record has no {at} (required), so it is skipped",
                        at,
                    )
                )
                if len(found) >= MAX_ISSUES_PER_RESOURCE:
                    break
        return found or None

    def validate(self, data: Any) -> list[Issue]:
        if not isinstance(data, dict):
            return [Issue(Code.NOT_AN_OBJECT, "a resource must be a JSON object", "")]
        return self._issues(self._validator, data)

    def validate_merged(self, data: Any) -> list[Issue]:
        """The issues of a resource holding local fields too (a PATCH's merged result)."""
        return self._issues(self._full, data)

    def _issues(self, validator: Any, data: Any) -> list[Issue]:
        if validator.is_valid(data):
            return []
        issues = []
        for e in validator.iter_errors(data):
            owned = self.ownership.refused(e) if self.ownership.local else None
            issues.append(Issue(*owned) if owned else _issue_from_error(e))
            if len(issues) >= MAX_ISSUES_PER_RESOURCE:
                break
        return issues

    def extract(self, data: dict[str, Any]) -> Extracted | Issue:
        rid = None
        if self._id_steps is not None:
            v = walk(data, self._id_steps)
            rid = None if v is MISSING else scalar_id(v)
        if rid is None:
            match = self._id.match(data)
            if match is None:
                return Issue(
                    Code.MISSING_ID,
                    f"the resource has no id at {self._id_path} (the schema's resmo.id)",
                    _missing_from(data, self._id_steps),
                )
            rid = scalar_id(match.obj)
            if rid is None:
                return _invalid_id(match.obj, _pointer(match.parts))
        return self._finish(data, rid)

    def _first(self, data: Any, steps: tuple[Step, ...] | None, path: jsonpath.JSONPath) -> Any:
        if steps is not None:
            return walk(data, steps)
        m = path.match(data)
        return MISSING if m is None else m.obj

    def _finish(self, data: dict[str, Any], rid: str) -> Extracted | Issue:
        name = None
        if self._name is not None:
            v = self._first(data, self._name_steps, self._name)
            if v is not MISSING and v is not None and not isinstance(v, dict | list):
                name = v if isinstance(v, str) else orjson.dumps(v).decode()
        important: dict[str, Any] = {}
        for (raw, path), steps in zip(self._important, self._important_steps, strict=True):
            if steps is not None:
                v = walk(data, steps)
                if v is not MISSING:
                    important[raw] = v
                continue
            values = [m.obj for m in path.finditer(data)]
            if values:
                important[raw] = values[0] if path.singular_query() else values
        digest = storable_hash(data)
        if isinstance(digest, Issue):
            return digest
        return Extracted(rid, name, important, digest)


def _missing_from(data: Any, steps: tuple[Step, ...] | None) -> str:
    """Where a missing value is missing from (as ``required`` points at the object that
    lacks a property): the deepest value that exists along a names-and-indexes path,
    else ``""``, the resource itself."""
    at: list[Any] = []
    cur = data
    for is_index, key in steps or ():
        nxt = walk(cur, ((is_index, key),))
        if nxt is MISSING:
            break
        at.append(key)
        cur = nxt
    return _pointer(at)


def _issue_from_error(e: Any) -> Issue:
    pointer = _pointer(e.instance_path)
    kind = type(e.kind).__name__
    if kind in ("BacktrackLimitExceeded", "RegexEngineFailure"):
        return Issue(
            Code.PATTERN_TOO_COSTLY,
            f"the value is too costly to check against the pattern at "
            f"{_pointer(e.schema_path)} of the schema (matching took more than "
            f"{BACKTRACK_LIMIT} backtracking steps: {e.message}), so the resource is "
            "rejected. This schema version predates the linear-time rule for patterns; a "
            "new version without lookaround or backreferences is checked in linear time",
            pointer,
        )
    if kind == "UnevaluatedProperties":
        unexpected = list(getattr(e.kind, "unexpected", []) or [])
        if unexpected:
            pointer = pointer + _pointer([unexpected[0]])
        return Issue(Code.UNKNOWN_FIELD, e.message, pointer)
    if kind == "Required":
        return Issue(Code.MISSING_FIELD, e.message, pointer)
    if kind == "Format":  # the engine says '"x" is not a "email"'
        return Issue(
            Code.SCHEMA_VIOLATION, f"{_json(e.instance)} is not a valid {e.kind.format}", pointer
        )
    return Issue(Code.SCHEMA_VIOLATION, e.message, pointer)
