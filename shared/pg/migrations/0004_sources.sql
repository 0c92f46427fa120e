-- Pull sources (issue 13): specs (every revision kept), sources, their runs and the raw
-- events each run appended. At most one open (queued or running) run per source: the
-- partial unique index guarantees it, whatever the number of gateways and sources stages.
CREATE TABLE source_specs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE,
    revision    integer NOT NULL DEFAULT 1,
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE source_spec_revisions (
    spec_id     uuid NOT NULL REFERENCES source_specs(id) ON DELETE CASCADE,
    revision    integer NOT NULL,
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (spec_id, revision)
);

CREATE TABLE sources (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL UNIQUE,
    spec_id         uuid NOT NULL REFERENCES source_specs(id) ON DELETE RESTRICT,
    params          jsonb NOT NULL DEFAULT '{}'::jsonb,
    secret_params   bytea,
    integration_id  uuid NOT NULL REFERENCES integrations(id),
    table_name      text NOT NULL,
    group_key       text NOT NULL DEFAULT '',
    mode            text NOT NULL CHECK (mode IN ('full', 'incremental')),
    schedule        jsonb,
    start_time      timestamptz,
    paused          boolean NOT NULL DEFAULT false,
    next_run_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sources_spec ON sources (spec_id);
CREATE INDEX sources_due ON sources (next_run_at) WHERE schedule IS NOT NULL AND NOT paused;

CREATE TABLE source_runs (
    id              text PRIMARY KEY,
    source_id       uuid NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('incremental', 'backfill')),
    status          text NOT NULL
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    spec_revision   integer NOT NULL,
    window_start    timestamptz,
    window_end      timestamptz,
    requests        integer NOT NULL DEFAULT 0,
    pages           integer NOT NULL DEFAULT 0,
    records         integer NOT NULL DEFAULT 0,
    truncated       boolean NOT NULL DEFAULT false,
    error           jsonb,
    owner           text,
    heartbeat_at    timestamptz,
    session         text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE UNIQUE INDEX source_runs_one_open ON source_runs (source_id)
    WHERE status IN ('queued', 'running');
CREATE INDEX source_runs_newest ON source_runs (source_id, created_at DESC, id DESC);
CREATE INDEX source_runs_queued ON source_runs (created_at) WHERE status = 'queued';
CREATE INDEX source_runs_running ON source_runs (heartbeat_at) WHERE status = 'running';

CREATE TABLE source_run_events (
    run_id      text NOT NULL REFERENCES source_runs(id) ON DELETE CASCADE,
    event_id    text NOT NULL,
    seq         integer NOT NULL,
    PRIMARY KEY (run_id, event_id)
);
