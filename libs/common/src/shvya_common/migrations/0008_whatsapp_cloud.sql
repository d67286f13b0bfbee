-- WhatsApp Cloud as businesses receive it: leads known by a business-scoped user id (BSUID),
-- edits, deletions and reactions on messages, downloaded media, full template definitions kept
-- in step with Graph, and the lead flags that delivery failures set.

-- A WhatsApp user who adopted a username may reach us with a BSUID and no phone number. A lead
-- known by both keeps one record (see merge_leads below).
ALTER TABLE leads
    ADD COLUMN wa_user_id                      text,
    ADD COLUMN wa_parent_user_id               text,
    ADD COLUMN wa_username                     text,
    -- The lead's language for templates, as WhatsApp codes it (en_US, pt_BR, hi).
    ADD COLUMN language                        text,
    -- The first click-to-WhatsApp ad (or post) that brought the lead: Meta's referral object.
    ADD COLUMN attribution                     jsonb,
    -- Set when WhatsApp reports a message to the lead undeliverable (131026 and friends);
    -- cleared when the lead writes again.
    ADD COLUMN whatsapp_undeliverable_at       timestamptz,
    ADD COLUMN whatsapp_undeliverable_reason   text;
ALTER TABLE leads DROP CONSTRAINT leads_check;
ALTER TABLE leads ADD CONSTRAINT leads_reachable
    CHECK (phone_e164 IS NOT NULL OR email IS NOT NULL OR wa_user_id IS NOT NULL);
CREATE UNIQUE INDEX leads_company_wa_user ON leads (company_id, wa_user_id)
    WHERE wa_user_id IS NOT NULL;

-- Edits and deletions change an inbound message in place; its earlier text is kept here.
ALTER TABLE messages
    ADD COLUMN edited_at   timestamptz,
    ADD COLUMN deleted_at  timestamptz;

CREATE TABLE message_revisions (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    message_id         uuid NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    kind               text NOT NULL CHECK (kind IN ('edit', 'revoke')),
    -- The edit's or revoke's own provider id: a retried webhook adds nothing.
    provider_event_id  text NOT NULL,
    previous_body      text NOT NULL,
    previous_meta      jsonb NOT NULL DEFAULT '{}'::jsonb,
    new_body           text,
    occurred_at        timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, provider_event_id)
);

-- One reaction per person per message; a later one replaces it, an empty emoji removes it.
CREATE TABLE message_reactions (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id           uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    message_id           uuid NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    lead_id              uuid REFERENCES leads(id) ON DELETE CASCADE,
    reactor              text NOT NULL,
    emoji                text,
    provider_message_id  text NOT NULL,
    reacted_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, reactor)
);

-- Media received on a message: downloaded with the account's token by dispatch's media.fetch
-- job and stored behind shvya_common.storage (content-addressed).
CREATE TABLE inbound_media (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id          uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    message_id          uuid NOT NULL UNIQUE REFERENCES messages(id) ON DELETE CASCADE,
    channel             text NOT NULL,
    media_id            text NOT NULL,
    kind                text NOT NULL,
    -- What the webhook said; the stored columns below are what was actually downloaded.
    declared_mime_type  text,
    declared_sha256     text,
    filename            text,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'stored', 'rejected', 'failed')),
    mime_type           text,
    size_bytes          bigint,
    sha256              text,
    storage_key         text,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    stored_at           timestamptz
);
CREATE INDEX inbound_media_pending ON inbound_media (created_at) WHERE status = 'pending';

-- Templates as Graph defines them (header, body, footer, buttons), with Meta's status and
-- quality kept in step by the template sync and the message_template_status_update webhook.
ALTER TABLE templates
    ADD COLUMN components            jsonb,
    ADD COLUMN parameter_format      text CHECK (parameter_format IN ('positional', 'named')),
    ADD COLUMN category              text,
    ADD COLUMN quality               text,
    ADD COLUMN provider_template_id  text,
    ADD COLUMN status_reason         text,
    ADD COLUMN synced_at             timestamptz,
    ADD COLUMN updated_at            timestamptz NOT NULL DEFAULT now();
CREATE INDEX templates_provider_id ON templates (provider_template_id)
    WHERE provider_template_id IS NOT NULL;

-- Fold one lead into another: every row that references the lost lead is moved to the kept
-- one, whatever table it is in (found from the catalogue, so tables added later are covered).
-- A row that would break a unique key on the kept lead (its AI session, a contact it already
-- has) stays behind and goes with the lost lead. Identities and facts the kept lead lacks are
-- copied over first.
CREATE FUNCTION merge_leads(keep uuid, lose uuid) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    lost leads%ROWTYPE;
    ref record;
    moving record;
BEGIN
    IF keep = lose THEN
        RETURN;
    END IF;
    SELECT * INTO lost FROM leads WHERE id = lose FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM 1 FROM leads WHERE id = keep FOR UPDATE;
    -- Unique identities move first, so the kept lead can take them.
    -- (a placeholder id satisfies the row's CHECK until it is deleted below)
    UPDATE leads SET phone_e164 = NULL, email = NULL, wa_user_id = 'merged:' || id::text
     WHERE id = lose;
    UPDATE leads k SET
        phone_e164 = COALESCE(k.phone_e164, lost.phone_e164),
        email = COALESCE(k.email, lost.email),
        wa_user_id = COALESCE(k.wa_user_id, lost.wa_user_id),
        wa_parent_user_id = COALESCE(k.wa_parent_user_id, lost.wa_parent_user_id),
        wa_username = COALESCE(k.wa_username, lost.wa_username),
        contact_name = COALESCE(k.contact_name, lost.contact_name),
        timezone = COALESCE(k.timezone, lost.timezone),
        language = COALESCE(k.language, lost.language),
        attribution = COALESCE(k.attribution, lost.attribution),
        attributes = lost.attributes || k.attributes,
        last_inbound_at = GREATEST(k.last_inbound_at, lost.last_inbound_at),
        last_outbound_at = GREATEST(k.last_outbound_at, lost.last_outbound_at),
        created_at = LEAST(k.created_at, lost.created_at),
        updated_at = now()
     WHERE k.id = keep;
    FOR ref IN
        SELECT c.conrelid::regclass AS tbl, a.attname AS col
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.contype = 'f' AND c.confrelid = 'leads'::regclass
          AND array_length(c.conkey, 1) = 1
    LOOP
        BEGIN
            EXECUTE format('UPDATE %s SET %I = $1 WHERE %I = $2', ref.tbl, ref.col, ref.col)
                USING keep, lose;
        EXCEPTION WHEN unique_violation THEN
            -- Row by row, leaving behind the ones the kept lead already has.
            FOR moving IN EXECUTE format('SELECT ctid FROM %s WHERE %I = $1', ref.tbl, ref.col)
                USING lose
            LOOP
                BEGIN
                    EXECUTE format('UPDATE %s SET %I = $1 WHERE ctid = $2', ref.tbl, ref.col)
                        USING keep, moving.ctid;
                EXCEPTION WHEN unique_violation THEN
                    NULL;
                END;
            END LOOP;
        END;
    END LOOP;
    DELETE FROM leads WHERE id = lose;
END $$;
