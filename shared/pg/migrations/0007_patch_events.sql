-- An admin's PATCH of local fields (x-ownership local) is an accepted request like any
-- other: a raw event of kind 'patch'. It comes from no integration (the admin token),
-- so its receipt and sync issues have no integration_id.
ALTER TABLE ingest_events DROP CONSTRAINT ingest_events_kind_check;
ALTER TABLE ingest_events ADD CONSTRAINT ingest_events_kind_check
    CHECK (kind IN ('single', 'delete', 'bulk', 'patch'));
ALTER TABLE ingest_events ALTER COLUMN integration_id DROP NOT NULL;
ALTER TABLE sync_issues ALTER COLUMN integration_id DROP NOT NULL;
