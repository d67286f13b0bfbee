-- WhatsApp Web accounts (issue 12): which dispatch replica drives each linked account's browser
-- (a lease), the account's health as the last probe saw it, its pause (restriction, timelock,
-- ban, logout) and what warm-up and the inactivity reminder need to know.
CREATE TABLE whatsapp_web_accounts (
    account            text PRIMARY KEY,           -- the browser profile's name
    -- The lease: one replica (or one login command) drives the profile at a time. `epoch` grows
    -- at every change of owner, so a replica that lost its lease can tell.
    owner              text,
    lease_until        timestamptz,
    epoch              bigint NOT NULL DEFAULT 0,
    state              text NOT NULL DEFAULT 'unknown' CHECK (state IN (
                           'unknown', 'starting', 'connected', 'syncing', 'logged_out',
                           'offline', 'conflict', 'restricted', 'banned', 'failed')),
    state_reason       text,
    state_since        timestamptz NOT NULL DEFAULT now(),
    checked_at         timestamptz,
    wid                text,                       -- the linked number, e.g. 919812345678@c.us
    -- First seen connected: day 0 of the warm-up.
    linked_at          timestamptz,
    -- Last sign that the phone itself was in use (linking, a message typed on the phone);
    -- WhatsApp logs linked devices out after 14 days without it.
    phone_active_at    timestamptz,
    reminder_sent_at   timestamptz,
    -- A pause stops the account's sends (deferred) until `paused_until` (NULL: until lifted or
    -- re-linked). `pause_scope` 'new_contacts' still lets replies to existing chats through.
    paused_at          timestamptz,
    paused_until       timestamptz,
    pause_code         text,
    pause_reason       text,
    pause_scope        text CHECK (pause_scope IN ('all', 'new_contacts')),
    -- Refusals in a row without a code; enough of them pause the account.
    refusals           int NOT NULL DEFAULT 0,
    -- A login asked for by the CLI or the API, served by whichever process drives the browser.
    login_requested_until timestamptz,
    login_method       text CHECK (login_method IN ('qr', 'code')),
    login_phone        text,
    -- Where incoming messages were filed up to (WhatsApp's timestamp, seconds), for catch-up.
    inbound_watermark  bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- The QR code or pairing code of an account being linked, where every process can read it (the
-- console branch's 0014 creates the same table; this is a no-op after it, then adds columns).
CREATE TABLE IF NOT EXISTS whatsapp_web_logins (
    account     text PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('waiting', 'linked', 'timed_out', 'failed')),
    qr_png      bytea,
    detail      text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE whatsapp_web_logins ADD COLUMN IF NOT EXISTS qr_text text;
ALTER TABLE whatsapp_web_logins ADD COLUMN IF NOT EXISTS pairing_code text;
ALTER TABLE whatsapp_web_logins ADD COLUMN IF NOT EXISTS method text;

-- Pacing counts per account (first contacts today, identical texts this hour) read outbound
-- WhatsApp Web messages that left or may have left, by account and by when.
CREATE INDEX messages_web_account_sent ON messages ((meta->>'account'), (coalesce(sent_at, updated_at)))
    WHERE channel = 'whatsapp_web' AND direction = 'outbound' AND status IN ('sent', 'unknown');
