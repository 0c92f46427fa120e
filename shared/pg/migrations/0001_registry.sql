-- Registry: schema groups, custom schemas (every version kept), integrations, ingest keys.
CREATE TABLE schema_groups (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE,
    prefix      text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE schemas (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    group_id        uuid NOT NULL REFERENCES schema_groups(id),
    table_name      text NOT NULL,
    resource_type   text NOT NULL UNIQUE,
    title           text,
    current_version integer NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (group_id, table_name)
);

CREATE TABLE schema_versions (
    schema_id   uuid NOT NULL REFERENCES schemas(id),
    version     integer NOT NULL,
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_id, version)
);

CREATE TABLE integrations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    group_id    uuid NOT NULL REFERENCES schema_groups(id),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ingest_keys (
    id              text PRIMARY KEY,
    integration_id  uuid NOT NULL REFERENCES integrations(id),
    secret_sha256   bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
CREATE INDEX ingest_keys_integration ON ingest_keys (integration_id);
