"""The registry as every process holds it in memory: tables and ingest keys.

Pure: no I/O. :class:`~shared.pg.registry.RegistryStore` loads a
:class:`RegistrySnapshot` from PostgreSQL and :class:`~shared.pg.registry.RegistryCache`
replaces it whenever the registry's generation moves, so a revoked key is refused by
every gateway within one poll interval without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared import keys
from shared.schema_rules import CompiledSchema

#: what the secret of an unknown key id is compared with (it is refused either way)
_NO_SUCH_KEY = keys.digest("ingestd: no such key id")


@dataclass(frozen=True, slots=True)
class TableInfo:
    schema_id: str
    group_id: str
    table: str
    resource_type: str
    version: int
    title: str | None
    body: dict[str, Any]

    @property
    def prefix(self) -> str:
        """The schema group's prefix (the resource type is ``<prefix>_<table>``)."""
        return self.resource_type[: -len(self.table) - 1]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    integration_id: str
    group_id: str
    secret_sha256: bytes
    vendor_id: str = ""  # the vendor whose integration data the key reads and writes


@dataclass(slots=True)
class RegistrySnapshot:
    tables: dict[tuple[str, str], TableInfo] = field(default_factory=dict)
    by_type: dict[str, TableInfo] = field(default_factory=dict)
    #: (group id, title) and "<prefix>_<title>": a title in place of a table's name or
    #: resource type (never another table's name or type: migration 0006 refuses that)
    titles: dict[tuple[str, str], TableInfo] = field(default_factory=dict)
    titled_types: dict[str, TableInfo] = field(default_factory=dict)
    keys: dict[str, KeyInfo] = field(default_factory=dict)
    _compiled: dict[tuple[str, int], CompiledSchema] = field(default_factory=dict)
    _verified: dict[str, KeyInfo] = field(default_factory=dict)

    def add_table(self, t: TableInfo) -> None:
        self.tables[(t.group_id, t.table)] = t
        self.by_type[t.resource_type] = t
        if t.title is not None:
            self.titles[(t.group_id, t.title)] = t
            self.titled_types[t.prefix + "_" + t.title] = t

    def table(self, group_id: str, name: str) -> TableInfo | None:
        """The group's table named ``name``, or else the one titled ``name``."""
        return self.tables.get((group_id, name)) or self.titles.get((group_id, name))

    def resource_type(self, name: str) -> TableInfo | None:
        """The table of resource type ``name``, or else the one whose ``<prefix>_<title>``
        it is."""
        return self.by_type.get(name) or self.titled_types.get(name)

    def add_key(self, k: KeyInfo) -> None:
        self.keys[k.key_id] = k

    def authenticate(self, plaintext: str) -> KeyInfo | None:
        """The key's integration, or None. Verified keys are remembered for the life of
        this snapshot (any registry change, a revocation included, replaces it), so the
        hot path skips the SHA-256; unknown keys are never remembered."""
        hit = self._verified.get(plaintext)
        if hit is not None:
            return hit
        parts = keys.split_key(plaintext)
        if parts is None:
            return None
        info = self.keys.get(parts[0])
        if info is None:  # the same hash and compare as a known id: no timing tells ids apart
            keys.matches(parts[1], _NO_SUCH_KEY)
            return None
        if not keys.matches(parts[1], info.secret_sha256):
            return None
        self._verified[plaintext] = info
        return info

    def compiled(self, t: TableInfo) -> CompiledSchema:
        k = (t.resource_type, t.version)
        c = self._compiled.get(k)
        if c is None:
            c = self._compiled[k] = CompiledSchema(t.body)
        return c

    def keep_compiled(self, old: RegistrySnapshot) -> None:
        """Take over ``old``'s compiled validators of versions this snapshot still holds."""
        for k, c in old._compiled.items():
            t = self.by_type.get(k[0])
            if t is not None and t.version == k[1]:
                self._compiled[k] = c
