-- Repair (issue 16): rejected bodies kept for replay, replays recorded on their receipt,
-- history rows that hold everything `resources` holds (so it can be rebuilt from them),
-- and the scratch table `ingestd rebuild` folds history into.

-- The raw body of every rejected event (item_index NULL) or rejected item of a bulk or
-- batch (item_index = its index), written by the projector with the event's receipt and
-- purged after INGESTD_REJECTED_RETENTION_DAYS.
CREATE TABLE rejected_bodies (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text NOT NULL,
    item_index      integer,
    integration_id  uuid,
    table_name      text NOT NULL,
    resource_type   text NOT NULL,
    group_key       text NOT NULL DEFAULT '',
    resource_id     text,
    body            bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejected_bodies_event ON rejected_bodies (event_id, item_index);
CREATE INDEX rejected_bodies_created ON rejected_bodies (created_at);

-- A replay is a new event naming the one it replays (and, for an item of a bulk, its index).
ALTER TABLE ingest_events ADD COLUMN replay_of text;
ALTER TABLE ingest_events ADD COLUMN replay_item integer;
CREATE INDEX ingest_events_replay_of ON ingest_events (replay_of) WHERE replay_of IS NOT NULL;

-- What `resources` holds beyond the data: from now on every history row carries it
-- (NULL on a delete). The latest version of every live resource is filled from
-- `resources` here, so a history written before this migration folds to the same rows.
ALTER TABLE resource_changes ADD COLUMN name text;
ALTER TABLE resource_changes ADD COLUMN important_fields jsonb;
ALTER TABLE resource_changes ADD COLUMN content_hash text;
UPDATE resource_changes c
SET name = r.name, important_fields = r.important_fields, content_hash = r.content_hash
FROM resources r
WHERE c.resource_type = r.resource_type AND c.group_key = r.group_key
  AND c.resource_id = r.resource_id AND c.version = r.version;

-- `ingestd rebuild`'s scratch table: the fold of `resource_changes`, the columns of
-- `resources`. Unlogged (it is rebuilt on every run) and emptied inside each run's
-- transaction, so it is never seen filled.
CREATE UNLOGGED TABLE resources_rebuild (LIKE resources INCLUDING DEFAULTS);
ALTER TABLE resources_rebuild ADD PRIMARY KEY (resource_type, group_key, resource_id);
