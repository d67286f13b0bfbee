-- The operator console: users' signed-in sessions, the "seen" mark of a conversation (its
-- unread count), and WhatsApp Web login QR codes kept where every process can read them.

-- A session is a random token in an HTTP-only cookie; only its SHA-256 is stored. The CSRF
-- token is derived from the session token (HMAC), so it needs no column.
CREATE TABLE console_sessions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash    text NOT NULL UNIQUE,
    user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    company_id    uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    user_agent    text
);
CREATE INDEX console_sessions_user ON console_sessions (user_id) WHERE revoked_at IS NULL;
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- When an agent last looked at the conversation (shared by the company's agents, as a
-- conversation's "agent last seen" is in Chatwoot): inbound messages after it are unread.
ALTER TABLE leads ADD COLUMN agent_seen_at timestamptz;
CREATE INDEX leads_company_activity ON leads
    (company_id, (greatest(last_inbound_at, last_outbound_at)) DESC NULLS LAST, id);

-- The QR code of a WhatsApp Web account being linked: written by the login flow (in whatever
-- process runs it), read by the API for the company whose channel account names the profile.
CREATE TABLE whatsapp_web_logins (
    account     text PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('waiting', 'linked', 'timed_out', 'failed')),
    qr_png      bytea,
    detail      text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
