-- The change feed and pull transfer (issue 17).
-- Every history row records the id of the transaction that wrote it. The feed exposes
-- only rows whose transaction id is below the oldest transaction still in progress
-- (pg_snapshot_xmin), ordered by (txid, id): that set is final, so a consumer's cursor
-- never passes a row that commits later (see shared/pg/feed.py for the argument).
-- Rows written before this migration read txid 0: all committed, in id order, before
-- every later row. The constant default first is a catalogue-only change (no rewrite of
-- the table); the per-row default applies from here on, COPY included.
ALTER TABLE resource_changes ADD COLUMN txid xid8 NOT NULL DEFAULT '0';
ALTER TABLE resource_changes ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX resource_changes_feed ON resource_changes (txid, id);

-- A pull transfer session's server-side position, per (integration, session id). A
-- session starts with the live resources of one (resource type, groupKey) as of
-- `bound` (the history rows with txid < bound), paged by resource id, then continues
-- with the changes after that snapshot, by feed position. `from_*` is where the last
-- batch started and `at_*` where it ended: a call repeating `last_request_id` answers
-- the rows between them again; a new request id reads on from `at_*`.
CREATE TABLE pull_transfers (
    integration_id  uuid NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    session_id      text NOT NULL,
    resource_type   text NOT NULL,
    group_key       text NOT NULL DEFAULT '',
    bound           xid8 NOT NULL,
    from_phase      text NOT NULL CHECK (from_phase IN ('snapshot', 'changes')),
    from_key        text,
    from_txid       xid8 NOT NULL DEFAULT '0',
    from_id         bigint NOT NULL DEFAULT 0,
    at_phase        text NOT NULL CHECK (at_phase IN ('snapshot', 'changes')),
    at_key          text,
    at_txid         xid8 NOT NULL DEFAULT '0',
    at_id           bigint NOT NULL DEFAULT 0,
    last_request_id text,
    last_has_more   boolean NOT NULL DEFAULT false,
    batches         bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, session_id)
);
