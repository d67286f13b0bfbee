-- The operator console: users' signed-in sessions and the "seen" mark of a conversation (its
-- unread count). WhatsApp Web login codes are in whatsapp_web_logins (0015).

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
