"""Projector: domain changes in, PostgreSQL state and history out.

Consumes ``changes:{p}`` (consumer group ``projector``), one partition per
lease holder. Produces rows in ``resources``, ``resource_changes``,
``ingest_events`` and ``sync_issues``. Guarantees: each batch is applied in ONE
transaction that also records the partition's last applied stream id in
``projector_positions``; entries at or below that position are skipped, so
redelivery and replays after a crash are no-ops. Entries are acknowledged and
deleted from the stream only after the commit. It is the only writer of
resource state and history. Each batch's transaction first takes the partition's
advisory lock (before it has a transaction id, so one partition's batches get
increasing ids: the change feed's per-resource order, see ``shared/pg/feed.py``) and,
when it wrote history, sends the feed's ``NOTIFY``, delivered at its commit.
"""
