-- Tenants: per-company API keys with roles, users who can sign in, per-company channel
-- accounts with encrypted secrets, agent hand-off, archivable pipelines and stages, and the
-- shared counters of the request rate limiter.

-- An API key is shown once; only its SHA-256 is kept (the key holds 32 random bytes, so a slow
-- password hash would add nothing), with a visible prefix to tell keys apart.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id    uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    name          text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'agent', 'ingest')),
    prefix        text NOT NULL UNIQUE,
    key_hash      text NOT NULL,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_company ON api_keys (company_id, created_at);

-- Users sign in to the console with a password (scrypt); their role follows the API's.
ALTER TABLE users DROP CONSTRAINT users_role_check;
UPDATE users SET role = 'admin' WHERE role = 'owner';
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('admin', 'agent', 'viewer'));
ALTER TABLE users
    ADD COLUMN password_hash text,
    ADD COLUMN disabled_at   timestamptz,
    ADD COLUMN last_login_at timestamptz;

-- A company's own accounts on each channel. `config` holds what is not secret (phone number
-- id, WABA id, SMTP host, From address); `secrets` holds values encrypted with SECRETS_KEYS
-- (shvya_common.crypto), each bound to "channel_accounts:<id>:<name>". `address` is what an
-- inbound webhook names (a phone_number_id, a mailbox), unique per channel, so a webhook
-- routes to exactly one company.
CREATE TABLE channel_accounts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id  uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    channel     text NOT NULL CHECK (channel IN ('whatsapp_cloud', 'email', 'whatsapp_web')),
    name        text NOT NULL,
    address     text,
    config      jsonb NOT NULL DEFAULT '{}'::jsonb,
    secrets     jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_default  boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, channel, name)
);
CREATE UNIQUE INDEX channel_accounts_address ON channel_accounts (channel, address)
    WHERE address IS NOT NULL;
CREATE UNIQUE INDEX channel_accounts_one_default ON channel_accounts (company_id, channel)
    WHERE is_default;

-- Hand-off: while set, the AI does not answer the lead; an agent does.
ALTER TABLE leads
    ADD COLUMN handoff_at timestamptz,
    ADD COLUMN handoff_by text;

ALTER TABLE pipelines ADD COLUMN archived_at timestamptz;
ALTER TABLE stages ADD COLUMN archived_at timestamptz;

-- Fixed-window counters of the request rate limiter, shared by every ingest replica.
CREATE TABLE rate_counters (
    key         text PRIMARY KEY,
    value       integer NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- Lead listing: text search over name, phone and email; last activity.
CREATE INDEX leads_company_search ON leads USING gin
    ((coalesce(contact_name, '') || ' ' || coalesce(phone_e164, '') || ' ' || coalesce(email, ''))
     gin_trgm_ops);
CREATE INDEX leads_company_created ON leads (company_id, created_at, id);
CREATE INDEX events_company_created ON events (company_id, created_at, id);
