"""The compatibility check of a candidate schema against a table's stored resources: pure.

:class:`CompatReport` takes the live resources in batches (``(groupKey, id, data as JSON
text)``, as :class:`~shared.pg.live.LiveResourceStore` reads them) and checks each with
the candidate's :class:`~shared.schema_rules.CompiledSchema`, the very code the worker
validates with (``validate``, then ``extract``): a resource is refused when it has
issues, or when the candidate's ``resmo.id`` finds another id in it (``id_changed``: the
next sync would see it as a new resource). Only the count and the first
:data:`MAX_LISTED` refused resources are kept, so memory stays bounded whatever the
table holds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.codes import Code
from shared.schema_diff import Difference
from shared.schema_rules import CompiledSchema, Issue

MAX_LISTED = 100
#: (groupKey, resource id, data as JSON text)
LiveRow = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Refused:
    group_key: str
    resource_id: str
    issues: list[Issue]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.resource_id,
            "groupKey": self.group_key,
            "issues": [i.as_dict() for i in self.issues],
        }


def refusal(compiled: CompiledSchema, resource_id: str, data: Any) -> list[Issue]:
    """Why the candidate would refuse this stored resource; empty when it would not. The
    resource is shaped first (defaults, normalised formats), as the worker would shape it."""
    if isinstance(data, dict):
        data = copy.deepcopy(data)
        shaped = compiled.shape(data)
        if shaped:
            return shaped
    # a stored resource holds its local fields too: judged as a PATCH's merged result is
    issues = compiled.validate_merged(data) if isinstance(data, dict) else compiled.validate(data)
    if issues or not isinstance(data, dict):
        return issues
    got = compiled.extract(data)
    if isinstance(got, Issue):
        return [got]
    if got.id != resource_id:
        return [
            Issue(
                Code.ID_CHANGED,
                f"the schema's resmo.id finds id {got.id!r} in this resource, stored as "
                f"{resource_id!r}: the next sync would take it for another resource",
                "",
            )
        ]
    return []


@dataclass(slots=True)
class CompatReport:
    compiled: CompiledSchema
    checked: int = 0
    refused: int = 0
    listed: list[Refused] = field(default_factory=list)

    def check(self, rows: Iterable[LiveRow]) -> None:
        """Check one batch (CPU only: callers may run it in a thread)."""
        for group_key, rid, text in rows:
            self.checked += 1
            issues = refusal(self.compiled, rid, orjson.loads(text))
            if issues:
                self.refused += 1
                if len(self.listed) < MAX_LISTED:
                    self.listed.append(Refused(group_key, rid, issues))

    def as_dict(self, differences: list[Difference]) -> dict[str, Any]:
        return {
            "compatible": self.refused == 0,
            "checked": self.checked,
            "refused": self.refused,
            "refusedResources": [r.as_dict() for r in self.listed],
            "differences": [d.as_dict() for d in differences],
        }
