"""The PostgreSQL layer: the one home of every SQL statement ingestd runs.

- :mod:`shared.pg.pool`: the asyncpg pool (orjson ``jsonb`` / ``json`` codecs) and a ping.
- :mod:`shared.pg.migrate`: the numbered forward-only migrations in ``migrations/`` (the
  only DDL), their runner and the start-up check that a database is current.
- :mod:`shared.pg.registry`: :class:`~shared.pg.registry.RegistryStore` (schema groups,
  schemas and their versions, integrations, ingest keys, the registry snapshot and its
  generation) and :class:`~shared.pg.registry.RegistryCache`, the polling cache.
- :mod:`shared.pg.resources`: :class:`~shared.pg.resources.ResourceStore`, every
  statement on ``resources``, ``resource_changes``, ``ingest_events``, ``sync_issues``
  and ``projector_positions`` but the projector's batch: the read API's queries,
  receipts and the worker's write-model rebuild.
- :mod:`shared.pg.projection`: the projector's batch transaction
  (:class:`~shared.pg.projection.Projection`) and every statement it runs.

Stores take a pool (or one connection) and return frozen dataclasses or values, never
driver records; driver errors a caller can act on are translated into
:mod:`shared.errors` here. No HTTP: views and pointers into request bodies belong to
the gateway.
"""
