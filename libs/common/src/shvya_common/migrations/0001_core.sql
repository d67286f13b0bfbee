-- The CRM, the job record and the platform tables. Keys are UUIDs, timestamps carry time zones.
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE companies (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    is_default  boolean NOT NULL DEFAULT false,
    timezone    text NOT NULL DEFAULT 'UTC',
    settings    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Requests without company_id all land in the one default company.
CREATE UNIQUE INDEX companies_one_default ON companies (is_default) WHERE is_default;

CREATE TABLE users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id  uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    email       text NOT NULL,
    full_name   text,
    role        text NOT NULL DEFAULT 'agent' CHECK (role IN ('owner', 'admin', 'agent', 'viewer')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, email)
);

CREATE TABLE pipelines (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id  uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    name        text NOT NULL,
    is_default  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX pipelines_one_default ON pipelines (company_id) WHERE is_default;

CREATE TABLE stages (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    pipeline_id  uuid NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    name         text NOT NULL,
    position     integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (pipeline_id, position),
    UNIQUE (pipeline_id, name)
);

CREATE TABLE leads (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id       uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    pipeline_id      uuid REFERENCES pipelines(id) ON DELETE SET NULL,
    stage_id         uuid REFERENCES stages(id) ON DELETE SET NULL,
    phone_e164       text,
    email            text,
    contact_name     text,
    timezone         text,
    attributes       jsonb NOT NULL DEFAULT '{}'::jsonb,
    last_inbound_at  timestamptz,
    last_outbound_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (phone_e164 IS NOT NULL OR email IS NOT NULL)
);
CREATE UNIQUE INDEX leads_company_phone ON leads (company_id, phone_e164) WHERE phone_e164 IS NOT NULL;
CREATE UNIQUE INDEX leads_company_email ON leads (company_id, email) WHERE email IS NOT NULL;
CREATE INDEX leads_company_stage ON leads (company_id, stage_id);

CREATE TABLE lead_contacts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    lead_id     uuid NOT NULL REFERENCES leads(id) ON DELETE CASCADE,
    channel     text NOT NULL,
    address     text NOT NULL,
    is_primary  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (lead_id, channel, address)
);

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    task_name        text NOT NULL,
    task_params      jsonb NOT NULL DEFAULT '{}'::jsonb,
    priority         integer NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'scheduled', 'processing', 'completed', 'failed', 'dlq')),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 6,
    idempotency_key  text UNIQUE,
    company_id       uuid REFERENCES companies(id) ON DELETE CASCADE,
    lead_id          uuid REFERENCES leads(id) ON DELETE CASCADE,
    last_error       text,
    result           jsonb,
    replays          integer NOT NULL DEFAULT 0,
    run_after        timestamptz,
    started_at       timestamptz,
    completed_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_status ON jobs (status, updated_at);
CREATE INDEX jobs_lead ON jobs (lead_id, created_at);

CREATE TABLE messages (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id           uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    lead_id              uuid NOT NULL REFERENCES leads(id) ON DELETE CASCADE,
    direction            text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    channel              text NOT NULL,
    body                 text NOT NULL,
    status               text NOT NULL DEFAULT 'received',
    provider_message_id  text,
    -- One outbound message per logical send: a redelivered send request finds its row here.
    send_key             text UNIQUE,
    -- The job that produced this message (an inbound message's ai.engage, a reply's parent).
    job_id               uuid REFERENCES jobs(id) ON DELETE SET NULL,
    reply_to_id          uuid REFERENCES messages(id) ON DELETE SET NULL,
    -- Outbound only: the send's delivery record (the dispatch ledger).
    recipient            text,
    priority             integer,
    attempts             integer NOT NULL DEFAULT 0,
    last_error           text,
    sent_at              timestamptz,
    meta                 jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_lead_created ON messages (lead_id, created_at);
CREATE INDEX messages_outbound_status ON messages (status, updated_at) WHERE direction = 'outbound';
CREATE UNIQUE INDEX messages_provider_id ON messages (company_id, channel, provider_message_id)
    WHERE provider_message_id IS NOT NULL;

CREATE TABLE events (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id  uuid REFERENCES companies(id) ON DELETE CASCADE,
    lead_id     uuid REFERENCES leads(id) ON DELETE CASCADE,
    type        text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_lead_created ON events (lead_id, created_at);
CREATE INDEX events_company_type ON events (company_id, type, created_at);

CREATE TABLE templates (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id         uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    name               text NOT NULL,
    channel            text NOT NULL,
    language           text NOT NULL DEFAULT 'en_US',
    subject            text,
    body               text NOT NULL,
    variables          jsonb NOT NULL DEFAULT '[]'::jsonb,
    status             text NOT NULL DEFAULT 'approved',
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, channel, name, language)
);

CREATE TABLE sequences (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id  uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    name        text NOT NULL,
    channel     text NOT NULL,
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sequence_steps (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sequence_id    uuid NOT NULL REFERENCES sequences(id) ON DELETE CASCADE,
    position       integer NOT NULL,
    delay_seconds  integer NOT NULL DEFAULT 0 CHECK (delay_seconds >= 0),
    action         text NOT NULL DEFAULT 'send' CHECK (action IN ('send', 'wait', 'end')),
    template_id    uuid REFERENCES templates(id) ON DELETE SET NULL,
    body           text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sequence_id, position)
);

CREATE TABLE ai_models (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id     uuid NOT NULL UNIQUE REFERENCES companies(id) ON DELETE CASCADE,
    provider       text NOT NULL DEFAULT 'openai',
    model          text NOT NULL DEFAULT 'gpt-4o-mini',
    temperature    real NOT NULL DEFAULT 0.7 CHECK (temperature >= 0 AND temperature <= 2),
    max_tokens     integer NOT NULL DEFAULT 500 CHECK (max_tokens > 0),
    system_prompt  text NOT NULL DEFAULT 'You are a helpful sales assistant. Answer briefly and accurately.',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ai_kb_docs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id   uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    title        text NOT NULL,
    source       text,
    content      text NOT NULL,
    embedding    vector,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ai_kb_docs_company ON ai_kb_docs (company_id);

CREATE TABLE ai_sessions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id  uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    lead_id     uuid NOT NULL UNIQUE REFERENCES leads(id) ON DELETE CASCADE,
    context     jsonb NOT NULL DEFAULT '{}'::jsonb,
    turns       integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE report_caches (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id   uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    report_key   text NOT NULL,
    data         jsonb NOT NULL,
    computed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    UNIQUE (company_id, report_key)
);

-- Beyond the original design: durable timers for the scheduler, and the suppression list.
CREATE TABLE timers (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    due_at           timestamptz NOT NULL,
    -- 'resume' re-publishes a parked job or send (its envelope is kept here);
    -- 'enqueue' enqueues a new job when due (sequences, follow-ups, reminders).
    kind             text NOT NULL CHECK (kind IN ('resume', 'enqueue')),
    envelope         jsonb,
    task_name        text,
    task_params      jsonb,
    priority         integer,
    idempotency_key  text,
    company_id       uuid REFERENCES companies(id) ON DELETE CASCADE,
    lead_id          uuid REFERENCES leads(id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'fired', 'cancelled')),
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    fired_at         timestamptz,
    CHECK ((kind = 'resume' AND envelope IS NOT NULL) OR (kind = 'enqueue' AND task_name IS NOT NULL))
);
CREATE INDEX timers_due ON timers (due_at) WHERE status = 'pending';
CREATE INDEX timers_lead ON timers (lead_id) WHERE status = 'pending';

CREATE TABLE suppressions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id  uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    channel     text NOT NULL,
    address     text NOT NULL,
    scope       text NOT NULL DEFAULT 'all' CHECK (scope IN ('all', 'marketing')),
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, channel, address, scope)
);
