-- Email campaigns, recurring schedules and the indexes the reports read.

-- A campaign: its template (subject, text and optional HTML parts, Jinja2), its audience (a
-- filter over the company's leads with an email address), its send window (days and hours in
-- each lead's time zone; NULL means any time) and its own rate cap (NULL: the company's rate).
-- run_seq fences the chain of email.sequence runs: a run whose number is not the campaign's
-- current one belongs to a chain that a pause/resume replaced, and does nothing.
CREATE TABLE campaigns (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id       uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    name             text NOT NULL,
    status           text NOT NULL DEFAULT 'draft'
                     CHECK (status IN ('draft', 'sending', 'paused', 'completed', 'cancelled')),
    subject          text NOT NULL,
    text_body        text NOT NULL,
    html_body        text,
    audience         jsonb NOT NULL DEFAULT '{}'::jsonb,
    send_window      jsonb,
    rate_per_minute  integer CHECK (rate_per_minute > 0),
    run_seq          integer NOT NULL DEFAULT 0,
    -- When the audience was last turned into recipients (at the first run, and at each
    -- scheduled refresh).
    materialized_at  timestamptz,
    started_at       timestamptz,
    paused_at        timestamptz,
    completed_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaigns_company ON campaigns (company_id, created_at);

-- One row per lead a campaign reaches, at most one per lead and per address: the audience
-- frozen when the campaign starts. A recipient is 'pending' until a run requests its send
-- (message_id, requested_at), or is 'skipped' (suppressed) or 'failed' (the template could not
-- be rendered for this lead) with the reason.
CREATE TABLE campaign_recipients (
    campaign_id   uuid NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    lead_id       uuid NOT NULL REFERENCES leads(id) ON DELETE CASCADE,
    company_id    uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    email         text NOT NULL,
    -- The lead's zone, else the company's, else UTC, as the send window reads it.
    timezone      text NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'requested', 'skipped', 'failed')),
    reason        text,
    message_id    uuid REFERENCES messages(id) ON DELETE SET NULL,
    requested_at  timestamptz,
    added_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, lead_id)
);
CREATE UNIQUE INDEX campaign_recipients_address ON campaign_recipients (campaign_id, lower(email));
CREATE INDEX campaign_recipients_pending ON campaign_recipients (campaign_id, timezone, seq)
    WHERE status = 'pending';
-- The per-company rate: sends requested by all of a company's campaigns in the last minute.
CREATE INDEX campaign_recipients_rate ON campaign_recipients (company_id, requested_at)
    WHERE requested_at IS NOT NULL;

-- Recurring schedules: a cron expression on the company's wall clock, and what it starts.
-- next_run_at is the slot the loop fires next; firing claims the row FOR UPDATE SKIP LOCKED and
-- enqueues under a key naming the slot, so several scheduler replicas fire each slot once.
CREATE TABLE schedules (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id   uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    name         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('campaign', 'summaries', 'reports')),
    cron         text NOT NULL,
    campaign_id  uuid REFERENCES campaigns(id) ON DELETE CASCADE,
    params       jsonb NOT NULL DEFAULT '{}'::jsonb,
    enabled      boolean NOT NULL DEFAULT true,
    next_run_at  timestamptz,
    last_run_at  timestamptz,
    last_slot    timestamptz,
    last_result  jsonb,
    last_error   text,
    runs         integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'campaign') = (campaign_id IS NOT NULL))
);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE enabled;
CREATE INDEX schedules_company ON schedules (company_id, created_at);

-- Campaign counts look up the opens and clicks of each recipient's message.
CREATE INDEX events_engagement_message ON events ((payload->>'message_id'))
    WHERE type IN ('email.opened', 'email.clicked');
-- Reports read a company's messages over a period.
CREATE INDEX messages_company_created ON messages (company_id, created_at);
