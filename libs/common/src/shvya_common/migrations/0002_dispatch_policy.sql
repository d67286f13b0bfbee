-- Dispatch's send-time policy state: pacing slots shared by every dispatch process, and channel
-- pauses after the provider rejects the sender itself (expired token, policy or spam blocks).

-- One row per pacing key: a recipient (WhatsApp Cloud) or a sending account (WhatsApp Web).
-- A send takes the slot with one INSERT ... ON CONFLICT DO UPDATE ... WHERE, so two processes can
-- never both take it: the loser sees the winner's lease and defers.
CREATE TABLE send_pacing (
    company_id        uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    channel           text NOT NULL,
    pacing_key        text NOT NULL,
    -- No send on this key before this moment (the previous send's end plus the gap).
    next_allowed_at   timestamptz NOT NULL DEFAULT now(),
    -- Held while a send is in flight; it expires by itself if that process dies mid-send.
    lease_until       timestamptz,
    lease_message_id  uuid,
    -- Sends counted on `day` (the company's local date), for daily caps.
    day               date,
    day_count         integer NOT NULL DEFAULT 0,
    last_sent_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, channel, pacing_key)
);

-- At most one pause per company and channel; a lifted pause keeps its row with resumed_at set.
CREATE TABLE channel_pauses (
    company_id              uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    channel                 text NOT NULL,
    error_code              integer,
    reason                  text NOT NULL,
    paused_at               timestamptz NOT NULL DEFAULT now(),
    -- NULL: until lifted by an operator (or, with a fingerprint, until the credentials change).
    paused_until            timestamptz,
    -- A one-way fingerprint of the credential that was refused (never the credential itself).
    credential_fingerprint  text,
    resumed_at              timestamptz,
    PRIMARY KEY (company_id, channel)
);

-- Suppression look-ups at send time compare addresses case-insensitively (email).
CREATE INDEX suppressions_company_address ON suppressions (company_id, lower(address));
