-- Outbound webhooks and reminders (webhook.reminder, P2 50).
--
-- A company's endpoints subscribe to event types (contracts/events.py PUBLIC_EVENTS). The
-- scheduler's fan-out reactor writes one delivery per (endpoint, event) and enqueues its job;
-- dispatch POSTs it, signed per Standard Webhooks, and logs every attempt. Statuses are named
-- in contracts/webhooks.py; shvya_common.webhooks.repository is their one writer.

CREATE TABLE webhook_endpoints (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id           uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    url                  text NOT NULL,
    description          text,
    event_types          text[] NOT NULL,
    -- active: deliveries go out; failing: the last delivery failed after all its attempts
    -- (they still go out); disabled: after a run of failed deliveries, or by hand.
    status               text NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'failing', 'disabled')),
    disabled_reason      text,
    -- Deliveries in a row that failed after all their attempts; a success resets it.
    consecutive_failures integer NOT NULL DEFAULT 0,
    -- The whsec_ signing secret, encrypted (SecretBox, context webhook_endpoints:<id>:secret).
    secret               text NOT NULL,
    -- After a rotation, the previous secret (context webhook_endpoints:<id>:previous_secret)
    -- also signs every delivery until previous_expires_at.
    previous_secret      text,
    previous_expires_at  timestamptz,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
-- The fan-out's lookup: a company's endpoints that may receive.
CREATE INDEX webhook_endpoints_company ON webhook_endpoints (company_id) WHERE status <> 'disabled';

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    company_id       uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    event_id         uuid NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    event_type       text NOT NULL,
    -- pending → succeeded | failed | skipped; a manual redelivery puts it back to pending.
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed', 'skipped')),
    -- The job that may deliver it now; a redelivery names a new one, and an older job that
    -- finds another id here stops without sending.
    job_id           uuid NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    redeliveries     integer NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text,
    last_attempt_at  timestamptz,
    succeeded_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, created_at DESC, id);

-- Every HTTP attempt of a delivery: the delivery log.
CREATE TABLE webhook_attempts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    delivery_id  uuid NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    endpoint_id  uuid NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    -- 1, 2, ... over the delivery's whole life, redeliveries included.
    attempt      integer NOT NULL,
    job_id       uuid NOT NULL,
    job_attempt  integer NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    status_code  integer,
    latency_ms   double precision,
    -- Why it failed: the HTTP status, a timeout, a refused address, a redirect not followed.
    error        text,
    -- The address connected to, and the start of the response body (capped).
    address      text,
    response     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, job_attempt)
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempt);

-- Reminders: at remind_at the job webhook.reminder records a reminder.due event.
CREATE TABLE reminders (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id  uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    lead_id     uuid REFERENCES leads(id) ON DELETE CASCADE,
    remind_at   timestamptz NOT NULL,
    title       text NOT NULL,
    note        text,
    data        jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- scheduled → fired | cancelled
    status      text NOT NULL DEFAULT 'scheduled'
                CHECK (status IN ('scheduled', 'fired', 'cancelled')),
    -- Raised by each reschedule; the job carries the version it fires.
    version     integer NOT NULL DEFAULT 1,
    fired_at    timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reminders_company ON reminders (company_id, remind_at);
