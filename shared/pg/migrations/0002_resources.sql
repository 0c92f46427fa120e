-- State and history, written only by the projector.
CREATE TABLE resources (
    resource_type    text NOT NULL,
    group_key        text NOT NULL DEFAULT '',
    resource_id      text NOT NULL,
    name             text,
    important_fields jsonb NOT NULL DEFAULT '{}'::jsonb,
    data             jsonb NOT NULL,
    content_hash     text NOT NULL,
    version          integer NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    last_event_id    text NOT NULL,
    PRIMARY KEY (resource_type, group_key, resource_id)
);

CREATE TABLE resource_changes (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_type text NOT NULL,
    group_key     text NOT NULL DEFAULT '',
    resource_id   text NOT NULL,
    version       integer NOT NULL,
    op            text NOT NULL CHECK (op IN ('created', 'updated', 'deleted')),
    event         text,
    actor         jsonb,
    patch         jsonb NOT NULL,
    after         jsonb,
    event_id      text NOT NULL,
    received_at   timestamptz NOT NULL,
    applied_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (resource_type, group_key, resource_id, version)
);
CREATE INDEX resource_changes_applied_at ON resource_changes (applied_at);
CREATE INDEX resource_changes_type_applied ON resource_changes (resource_type, applied_at);
CREATE INDEX resource_changes_event ON resource_changes (event_id);

CREATE TABLE ingest_events (
    event_id        text PRIMARY KEY,
    integration_id  uuid NOT NULL,
    table_name      text NOT NULL,
    resource_type   text NOT NULL,
    group_key       text NOT NULL DEFAULT '',
    kind            text NOT NULL CHECK (kind IN ('single', 'delete', 'bulk')),
    status          text NOT NULL CHECK (status IN ('applied', 'rejected')),
    event           text,
    actor           jsonb,
    created         integer NOT NULL DEFAULT 0,
    updated         integer NOT NULL DEFAULT 0,
    deleted         integer NOT NULL DEFAULT 0,
    unchanged       integer NOT NULL DEFAULT 0,
    rejected        integer NOT NULL DEFAULT 0,
    ignored_ids     jsonb NOT NULL DEFAULT '[]'::jsonb,
    issues          jsonb NOT NULL DEFAULT '[]'::jsonb,
    issues_total    integer NOT NULL DEFAULT 0,
    received_at     timestamptz NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_events_integration ON ingest_events (integration_id, received_at);

CREATE TABLE sync_issues (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text NOT NULL,
    integration_id  uuid NOT NULL,
    table_name      text NOT NULL,
    resource_type   text NOT NULL,
    group_key       text NOT NULL DEFAULT '',
    resource_id     text,
    item_index      integer,
    code            text NOT NULL,
    message         text NOT NULL,
    pointer         text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_issues_created ON sync_issues (created_at);
CREATE INDEX sync_issues_table ON sync_issues (table_name, created_at);
CREATE INDEX sync_issues_integration ON sync_issues (integration_id, created_at);

-- The projector's position per partition, committed with its writes.
CREATE TABLE projector_positions (
    partition   integer PRIMARY KEY,
    stream_ms   bigint NOT NULL,
    stream_seq  bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
