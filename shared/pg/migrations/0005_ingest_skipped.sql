-- Issue 14: records skipped for a missing required property (resmo.onMissingRequired: skip)
-- are counted in the receipt, beside created/updated/deleted/unchanged/rejected.
ALTER TABLE ingest_events ADD COLUMN skipped integer NOT NULL DEFAULT 0;
