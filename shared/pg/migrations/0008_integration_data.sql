-- Per-vendor integration data on resources (issue 15, seed 001).
-- Every integration gets a vendor id: the vendor whose data its ingest keys may read and
-- write. Existing integrations get their name lower-cased and slugged (a clash gets a
-- suffix from the integration's id).
ALTER TABLE integrations ADD COLUMN vendor_id text;
WITH s AS (
    SELECT id, created_at,
           COALESCE(NULLIF(left(trim(BOTH '-._' FROM
               regexp_replace(lower(name), '[^a-z0-9_.-]+', '-', 'g')), 55), ''),
               'integration') AS slug
    FROM integrations
), n AS (
    SELECT id, slug, row_number() OVER (PARTITION BY slug ORDER BY created_at, id) AS rn
    FROM s
)
UPDATE integrations i
SET vendor_id = CASE WHEN n.rn = 1 THEN n.slug
                     ELSE n.slug || '-' || left(replace(i.id::text, '-', ''), 8) END
FROM n WHERE n.id = i.id;
ALTER TABLE integrations ALTER COLUMN vendor_id SET NOT NULL;
ALTER TABLE integrations ADD CONSTRAINT integrations_vendor_id UNIQUE (vendor_id);
ALTER TABLE integrations ADD CONSTRAINT integrations_vendor_id_format
    CHECK (vendor_id ~ '^[a-z0-9][a-z0-9_.-]{0,63}$');

-- One name-value map per (resource, vendor). Not resource state: written synchronously by
-- the gateway (never by the projector) and kept when the resource is deleted, so it is
-- visible again when the same id is re-created.
CREATE TABLE integration_data (
    resource_type  text NOT NULL,
    group_key      text NOT NULL DEFAULT '',
    resource_id    text NOT NULL,
    vendor_id      text NOT NULL CHECK (vendor_id ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    data           jsonb NOT NULL,
    -- the map's names in the order they were given (jsonb keeps its own order)
    names          text[] NOT NULL,
    etag           text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- 'admin', or the id of the integration whose ingest key wrote it
    updated_by     text NOT NULL,
    PRIMARY KEY (resource_type, group_key, resource_id, vendor_id)
);
CREATE INDEX integration_data_vendor ON integration_data (vendor_id, resource_type);

-- Append-only: every PUT that changed a map, with the map before (NULL: created) and after.
CREATE TABLE integration_data_changes (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_type  text NOT NULL,
    group_key      text NOT NULL DEFAULT '',
    resource_id    text NOT NULL,
    vendor_id      text NOT NULL,
    old_data       jsonb,
    new_data       jsonb NOT NULL,
    actor          text NOT NULL CHECK (actor IN ('admin', 'integration')),
    integration_id uuid,
    changed_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((actor = 'integration') = (integration_id IS NOT NULL))
);
CREATE INDEX integration_data_changes_key
    ON integration_data_changes (resource_type, group_key, resource_id, vendor_id, id);
CREATE INDEX integration_data_changes_at ON integration_data_changes (changed_at);
