"""The records of one page: contentPath, keep / skip / wrap, explodeEntityPath.

Pure, and the input is never mutated: a changed object is a shallow copy, so a record
may share its unchanged sub-objects with the page (callers serialise, not mutate).

1. ``contentPath`` selects the records: a path whose single match is an array (the
   array's elements; ``null`` counts as an empty array), or a path matching several
   nodes (``$.items[*]``: each match is a record). No match: ``content_path_not_found``.
2. Per record (an object): ``keepAttributes`` keeps only those top-level names, then
   ``skipAttributes`` drops names; ``overrideWrapperAttribute: W`` makes it ``{W: record}``.
3. ``explodeEntityPath`` (a path into the wrapped record) names an array; each element
   (after the explode's own keep / skip) becomes one record: the record without the
   array, plus the element under the explode's wrapper (default: the array's own name).
   A record whose array is missing, null or empty yields none.
"""

from __future__ import annotations

from typing import Any

import orjson

from shared.codes import Code
from shared.pull.model import PullError
from shared.pull.spec import Extract

EXCERPT_CHARS = 300


def excerpt(data: Any, limit: int = EXCERPT_CHARS) -> str:
    """The first ``limit`` characters of ``data`` as JSON."""
    try:
        text = orjson.dumps(data).decode()
    except TypeError:
        text = repr(data)
    return text[:limit]


def extract(data: Any, content: Extract, explode: Extract | None) -> tuple[int, list[Any]]:
    """(records found at contentPath, before explode; the records to ingest)."""
    matches = [m.obj for m in content.compiled.finditer(data)]
    if not matches:
        raise PullError(
            Code.CONTENT_PATH_NOT_FOUND,
            f"contentPath {content.path} matches nothing in the page: {excerpt(data)}",
        )
    if len(matches) == 1 and (isinstance(matches[0], list) or matches[0] is None):
        found: list[Any] = matches[0] or []
    else:
        found = matches
    if content.keep or content.skip or content.wrapper:
        shaped = [shape(r, content) for r in found]
    else:  # nothing to shape: shape() would return every record as it is
        shaped = list(found)
    if explode is None:
        return len(found), shaped
    return len(found), [out for r in shaped for out in explode_record(r, explode)]


def shape(record: Any, part: Extract) -> Any:
    """keep, then skip (top-level names of an object), then the wrapper."""
    record = _filter(record, part)
    return {part.wrapper: record} if part.wrapper else record


def _filter(record: Any, part: Extract) -> Any:
    if isinstance(record, dict):
        if part.keep:
            record = {k: v for k, v in record.items() if k in part.keep}
        if part.skip:
            record = {k: v for k, v in record.items() if k not in part.skip}
    return record


def explode_record(record: Any, explode: Extract) -> list[Any]:
    """One record per element of the array at ``explode.path`` in ``record``."""
    if not isinstance(record, dict):
        return []
    matches = list(explode.compiled.finditer(record))
    if not matches:
        return []
    parents = {tuple(m.parts[:-1]) for m in matches}
    if all(isinstance(m.parts[-1], int) for m in matches if m.parts) and len(parents) == 1:
        # "$.email.activity[*]": the matches are the elements of one array
        location = parents.pop()
        elements = [m.obj for m in matches]
    elif len(matches) == 1:
        location = tuple(matches[0].parts)
        value = matches[0].obj
        elements = value if isinstance(value, list) else [] if value is None else [value]
    else:
        raise PullError(
            Code.INVALID_RESPONSE,
            f"explodeEntityPath {explode.path} must name one array in each record, "
            f"it matches {len(matches)} nodes",
        )
    if not location or not elements:
        return []
    rest = _without(record, location)
    name = explode.wrapper or str(location[-1])
    return [{**rest, name: _filter(e, explode)} for e in elements]


def _without(obj: Any, parts: tuple[Any, ...]) -> Any:
    """``obj`` without the node at ``parts`` (copies along the path only)."""
    if not parts:
        return obj
    head, rest = parts[0], parts[1:]
    if isinstance(obj, dict) and head in obj:
        copy = dict(obj)
        if rest:
            copy[head] = _without(obj[head], rest)
        else:
            del copy[head]
        return copy
    if isinstance(obj, list) and isinstance(head, int) and -len(obj) <= head < len(obj):
        items = list(obj)
        if rest:
            items[head] = _without(obj[head], rest)
        else:
            del items[head]
        return items
    return obj
