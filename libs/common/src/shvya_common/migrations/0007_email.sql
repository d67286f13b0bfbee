-- Email as providers see it: DKIM keys per company and sending domain, IMAP mailboxes that
-- ingest reads, and every bounce (delivery status notification) received, once.

-- A company's DKIM private key for one sending domain, encrypted with SECRETS_KEYS
-- (shvya_common.crypto, context 'email_dkim_keys:<company_id>:<domain>').
CREATE TABLE email_dkim_keys (
    company_id   uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    domain       text NOT NULL CHECK (domain = lower(domain)),
    selector     text NOT NULL CHECK (selector ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    algorithm    text NOT NULL DEFAULT 'rsa-sha256' CHECK (algorithm = 'rsa-sha256'),
    private_key  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, domain)
);

-- A plain mailbox (IMAP) whose new mail is filed as inbound email for its company. The password
-- is encrypted (context 'email_mailboxes:<id>:password'). `since` bounds what the first read
-- files: mail older than the connection is history, not new leads.
CREATE TABLE email_mailboxes (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id      uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    host            text NOT NULL,
    port            integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    security        text NOT NULL DEFAULT 'tls' CHECK (security IN ('tls', 'none')),
    username        text NOT NULL,
    password        text NOT NULL,
    folder          text NOT NULL DEFAULT 'INBOX',
    -- 'flag': mark filed mail (a keyword where the server keeps them, else \Seen);
    -- 'move': move it to filed_folder.
    after_filing    text NOT NULL DEFAULT 'flag' CHECK (after_filing IN ('flag', 'move')),
    filed_folder    text,
    enabled         boolean NOT NULL DEFAULT true,
    since           timestamptz NOT NULL DEFAULT now(),
    last_checked_at timestamptz,
    last_filed_at   timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, host, username, folder),
    CHECK (after_filing = 'flag' OR filed_folder IS NOT NULL)
);

-- One row per bounced recipient of one DSN; a redelivered DSN changes nothing.
CREATE TABLE email_bounces (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id           uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    lead_id              uuid REFERENCES leads(id) ON DELETE SET NULL,
    message_id           uuid REFERENCES messages(id) ON DELETE SET NULL,
    address              text NOT NULL,
    kind                 text NOT NULL CHECK (kind IN ('hard', 'soft')),
    status               text,
    diagnostic           text,
    dsn_message_id       text NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, dsn_message_id, address)
);
CREATE INDEX email_bounces_address ON email_bounces (company_id, lower(address), received_at);

-- A bounce names only the recipient when it quotes no Message-ID: find our last mail to them.
CREATE INDEX messages_email_recipient ON messages (lower(recipient), created_at)
    WHERE direction = 'outbound' AND channel = 'email';
