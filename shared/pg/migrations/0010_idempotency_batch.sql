-- Issue 16 (producers). An accepted request sent with an Idempotency-Key keeps that key
-- and its request's fingerprint (SHA-256 of route, query, content type and body) on its
-- receipt row: the key is remembered exactly as long as the row, and one integration
-- can never have two rows with one key (the gateway looks keys up here when Redis does
-- not know them). A batch event (POST …/batch-event/{table}) has kind 'batch' and keeps
-- its per-item outcomes (the first 1,000) and how many items it had.
ALTER TABLE ingest_events ADD COLUMN idempotency_key text;
ALTER TABLE ingest_events ADD COLUMN request_fingerprint text;
ALTER TABLE ingest_events ADD COLUMN items jsonb;
ALTER TABLE ingest_events ADD COLUMN items_total integer;
CREATE UNIQUE INDEX ingest_events_idempotency ON ingest_events (integration_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE ingest_events DROP CONSTRAINT ingest_events_kind_check;
ALTER TABLE ingest_events ADD CONSTRAINT ingest_events_kind_check
    CHECK (kind IN ('single', 'delete', 'bulk', 'patch', 'batch'));
