-- Signed webhooks (issue 17): endpoints, their deliveries, and each endpoint's position
-- in the change feed. The notifier delivers the feed to every enabled endpoint in feed
-- order; cursor_* is the position every change at or before which is done for it
-- (delivered with a 2xx, or skipped by its filters), and it moves only after the 2xx.
-- lease_* is the notifier process delivering to the endpoint now: every write of the
-- notifier is conditional on holding an unexpired lease, so two notifiers never deliver
-- to one endpoint at once.
CREATE TABLE webhooks (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    url             text NOT NULL,
    resource_types  text[],          -- NULL: every resource type
    events          text[],          -- NULL: created, updated and deleted
    description     text,
    secrets         bytea NOT NULL,  -- SecretBox-sealed signing secrets (current first)
    cursor_txid     xid8 NOT NULL,
    cursor_id       bigint NOT NULL,
    failing_since   timestamptz,     -- first failed attempt of the change it is stuck on
    disabled_at     timestamptz,
    disabled_reason text,
    lease_owner     text,
    lease_until     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per (endpoint, change) the notifier has attempted; message_id is the
-- webhook-id header (stable per endpoint and change, so receivers can deduplicate).
CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id      uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    message_id      text NOT NULL,
    change_cursor   text NOT NULL,
    resource_type   text NOT NULL,
    resource_id     text NOT NULL,
    version         bigint NOT NULL,
    op              text NOT NULL,
    status          text NOT NULL CHECK (status IN ('retrying', 'delivered', 'failed')),
    attempts        integer NOT NULL,
    response_status integer,
    error           text,
    latency_ms      integer,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, message_id)
);
CREATE INDEX webhook_deliveries_page ON webhook_deliveries (webhook_id, id DESC);
