-- The record of applied migrations. IF NOT EXISTS: on a database migrated before this
-- file existed, the runner created the table itself, and 0000 is then simply recorded.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
